"""Writes to callback endpoints and events: register, change, rotate a secret, enable,
resend, replay. Each change of an endpoint is audited."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models.functions import Now
from django.utils import timezone

from audit.services import Action, Via, control_action_record
from callbacks.addresses import CallbackHostUnresolved, UnsafeCallbackURL, target_resolved, url_checked, url_origin
from callbacks.models import CallbackEndpoint, CallbackEvent, EventType
from callbacks.outbox import endpoint_cache
from callbacks.signing import endpoint_secret, secret_salt_new

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

DEFAULT_OVERLAP_SECONDS = 24 * 3600
MAX_OVERLAP_SECONDS = 30 * 86_400


@dataclass(frozen=True)
class EndpointWithSecret:
    endpoint: CallbackEndpoint
    secret: str  # shown once: at registration and at each rotation


def endpoint_url_checked(url: str) -> str:
    """A URL an endpoint may have: https (or http where allowed), and a host that resolves
    now only to allowed addresses (checked again at every send); ValidationError otherwise."""
    url = (url or "").strip()
    try:
        url_checked(url)
        target_resolved(url)
    except UnsafeCallbackURL as exc:
        raise ValidationError({"url": [f"Refused: {exc}."]}) from None
    except CallbackHostUnresolved as exc:
        raise ValidationError({"url": [f"Refused: {exc}."]}) from None
    return url


def event_types_checked(event_types: Sequence[str] | None) -> list[str]:
    types = sorted(set(event_types or []))
    unknown = [t for t in types if t not in EventType.values]
    if unknown:
        raise ValidationError(
            {"event_types": [f"Unknown event type(s): {', '.join(unknown)}; known: {', '.join(EventType.values)}."]}
        )
    return types


def _audit(endpoint: CallbackEndpoint, *, actor, via: str, what: str, **extra: Any) -> None:
    control_action_record(
        action=Action.CALLBACK,
        actor=actor,
        via=via,
        detail={"endpoint": endpoint.pk, "name": endpoint.name, "change": what, **extra},
    )


def endpoint_create(
    *,
    name: str,
    url: str,
    event_types: Sequence[str] | None = None,
    owner: AbstractBaseUser | None = None,
    enabled: bool = True,
    actor: AbstractBaseUser | None = None,
    via: str = Via.COMMAND,
) -> EndpointWithSecret:
    url = endpoint_url_checked(url)
    types = event_types_checked(event_types)
    with transaction.atomic():
        endpoint = CallbackEndpoint.objects.create(
            name=name[:100],
            url=url,
            origin=url_origin(url),
            event_types=types,
            owner=owner,
            enabled=enabled,
            secret_salt=secret_salt_new(),
        )
        _audit(endpoint, actor=actor, via=via, what="registered", url=url, event_types=types)
        transaction.on_commit(endpoint_cache.clear)
    endpoint_cache.clear()
    return EndpointWithSecret(endpoint=endpoint, secret=endpoint_secret(salt=endpoint.secret_salt))


def endpoint_update(
    *, endpoint_id: int, actor: AbstractBaseUser | None = None, via: str = Via.COMMAND, **changes: Any
) -> CallbackEndpoint:
    """Change name, url, event_types, owner or enabled. Enabling clears its failures."""
    with transaction.atomic():
        endpoint = CallbackEndpoint.objects.select_for_update().get(pk=endpoint_id)
        if "url" in changes:
            changes["url"] = endpoint_url_checked(changes["url"])
            endpoint.origin = url_origin(changes["url"])
        if "event_types" in changes:
            changes["event_types"] = event_types_checked(changes["event_types"])
        for field, value in changes.items():
            setattr(endpoint, field, value)
        if changes.get("enabled") is True:
            endpoint.disabled_reason = ""
            endpoint.failures_in_row, endpoint.failing_since, endpoint.retry_at = 0, None, None
        elif changes.get("enabled") is False and not endpoint.disabled_reason:
            endpoint.disabled_reason = "disabled by an operator"
        endpoint.save()
        _audit(endpoint, actor=actor, via=via, what="changed", fields=sorted(changes))
        transaction.on_commit(endpoint_cache.clear)
    endpoint_cache.clear()
    return endpoint


def endpoint_rotate_secret(
    *,
    endpoint_id: int,
    overlap_seconds: int = DEFAULT_OVERLAP_SECONDS,
    actor: AbstractBaseUser | None = None,
    via: str = Via.COMMAND,
) -> EndpointWithSecret:
    """A new secret signs from now on; the previous one signs too for `overlap_seconds`
    (both signatures sent), so a client can switch without missing an event."""
    if not 0 <= overlap_seconds <= MAX_OVERLAP_SECONDS:
        raise ValidationError({"overlap_seconds": [f"Between 0 and {MAX_OVERLAP_SECONDS} seconds."]})
    with transaction.atomic():
        endpoint = CallbackEndpoint.objects.select_for_update().get(pk=endpoint_id)
        endpoint.previous_secret_salt = endpoint.secret_salt if overlap_seconds else ""
        endpoint.previous_secret_expires_at = (
            timezone.now() + timedelta(seconds=overlap_seconds) if overlap_seconds else None
        )
        endpoint.secret_salt = secret_salt_new()
        endpoint.save(update_fields=["previous_secret_salt", "previous_secret_expires_at", "secret_salt"])
        _audit(endpoint, actor=actor, via=via, what="secret rotated", overlap_seconds=overlap_seconds)
    return EndpointWithSecret(endpoint=endpoint, secret=endpoint_secret(salt=endpoint.secret_salt))


def event_resend(*, event_id: int, actor: AbstractBaseUser | None = None, via: str = Via.COMMAND) -> CallbackEvent:
    """Deliver one event again, whatever became of it (same event id: a client that has it drops it)."""
    with transaction.atomic():
        event = CallbackEvent.objects.select_for_update().get(pk=event_id)
        CallbackEvent.objects.filter(pk=event.pk).update(
            state=CallbackEvent.State.PENDING, next_attempt_at=Now(), attempts=0, claim_token=None
        )
        _audit(event.endpoint, actor=actor, via=via, what="event resent", event_id=event.event_id)
    event.refresh_from_db()
    return event


def endpoint_replay(
    *, endpoint_id: int, since: datetime, actor: AbstractBaseUser | None = None, via: str = Via.COMMAND
) -> int:
    """Deliver again every event of the endpoint created since `since`; return how many."""
    with transaction.atomic():
        endpoint = CallbackEndpoint.objects.get(pk=endpoint_id)
        count = CallbackEvent.objects.filter(endpoint_id=endpoint_id, created_at__gte=since).update(
            state=CallbackEvent.State.PENDING, next_attempt_at=Now(), attempts=0, claim_token=None
        )
        _audit(endpoint, actor=actor, via=via, what="replayed", since=since.isoformat(), events=count)
    return count


def callback_events_prune_batch(*, created_before: datetime, batch_size: int) -> int:
    """Delete up to `batch_size` of the oldest callback events created before `created_before`
    that are done with (delivered, or given up), with their attempts, in one short transaction;
    return how many events went (0: none left). A pending event is never deleted, whatever
    its age: it is still owed to its endpoint. The retention schedule calls it
    (retention.services) with its longest cutoff, so no event goes before the message it tells
    of could. Rows are locked with SKIP LOCKED: a delivery task holding one is never waited for.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    with transaction.atomic():
        ids = list(
            # By id: events are written in id order as they are created, so the oldest come
            # first from the primary key, however many younger ones there are.
            CallbackEvent.objects.filter(created_at__lt=created_before)
            .exclude(state=CallbackEvent.State.PENDING)
            .select_for_update(skip_locked=True)
            .order_by("pk")
            .values_list("pk", flat=True)[:batch_size]
        )
        if not ids:
            return 0
        CallbackEvent.objects.filter(pk__in=ids).delete()
    return len(ids)
