"""The outbox: an event row per endpoint that wants it, written by the transaction that
changed the message (or the consent, or stored the reply), so an event exists exactly
when its change was committed.

messages_app and consent announce their changes (messages_app.events, consent.events);
`OutboxListener`, registered by CallbacksConfig.ready, writes the rows: per batch, two
reads (the messages, their last sequence numbers) and one bulk INSERT, and nothing at all
for a kind of event no enabled endpoint wants. Which endpoints want what is kept in each
process for CALLBACK_ENDPOINT_CACHE_SECONDS (a change made in this process is seen at
once): sending must not pay a query per batch to learn that nobody listens.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from callbacks.models import CallbackEndpoint, CallbackEvent, EventType
from messages_app.models import Message

# What messages_app and consent announce, and the event type each becomes.
KIND_EVENT_TYPES = {
    "sent": EventType.SENT,
    "failed": EventType.FAILED,
    "delivered": EventType.DELIVERED,
    "undelivered": EventType.UNDELIVERED,
    "expired": EventType.EXPIRED,
    "cancelled": EventType.CANCELLED,
    "suppressed": EventType.SUPPRESSED,
    "inbound": EventType.INBOUND,
    "opted_out": EventType.OPTED_OUT,
    "opted_in": EventType.OPTED_IN,
}


@dataclass(frozen=True)
class EndpointRoute:
    id: int
    event_types: frozenset[str]  # empty: all
    owner_id: int | None
    origin: str

    def wants(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types


class _EndpointCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: list[EndpointRoute] = []
        self._wanted: frozenset[str] = frozenset()
        self._until = 0.0

    def clear(self) -> None:
        self._until = 0.0

    def routes(self) -> list[EndpointRoute]:
        if time.monotonic() >= self._until:
            self._load()
        return self._routes

    def wanted(self, event_type: str) -> bool:
        if time.monotonic() >= self._until:
            self._load()
        return event_type in self._wanted

    def _load(self) -> None:
        with self._lock:
            routes = [
                EndpointRoute(id=pk, event_types=frozenset(types or ()), owner_id=owner_id, origin=origin)
                for pk, types, owner_id, origin in CallbackEndpoint.objects.filter(enabled=True)
                .order_by("id")
                .values_list("id", "event_types", "owner_id", "origin")
            ]
            self._routes = routes
            self._wanted = frozenset(t for t in EventType.values if any(r.wants(t) for r in routes))
            self._until = time.monotonic() + settings.CALLBACKS["endpoint_cache_seconds"]


endpoint_cache = _EndpointCache()


def endpoint_cache_clear(**_: Any) -> None:
    endpoint_cache.clear()


class OutboxListener:
    """Registered with messages_app.events.message_events and consent.events.consent_events."""

    def wants(self, kind: str) -> bool:
        event_type = KIND_EVENT_TYPES.get(kind)
        return event_type is not None and endpoint_cache.wanted(event_type)

    def happened(
        self,
        *,
        kind: str,
        message_ids: Sequence[int] = (),
        subject: dict[str, Any] | None = None,
        occurred_at: datetime | None = None,
    ) -> None:
        event_type = KIND_EVENT_TYPES[kind]
        if message_ids:
            events_for_messages(event_type=event_type, message_ids=message_ids, occurred_at=occurred_at)
        else:
            events_for_subject(event_type=event_type, subject=subject or {}, occurred_at=occurred_at)


def _event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def events_for_messages(
    *, event_type: str, message_ids: Sequence[int], occurred_at: datetime | None = None
) -> list[CallbackEvent]:
    """Write the events of `event_type` for these messages, one per endpoint that wants it
    (an endpoint with an owner: only for its owner's messages), with each message's next
    sequence number. Inside the caller's transaction; the messages' rows are locked by it,
    so two changes of one message number their events one after the other."""
    routes = [r for r in endpoint_cache.routes() if r.wants(event_type)]
    if not routes:
        return []
    rows = list(
        Message.objects.filter(pk__any=list(message_ids))
        .order_by()
        .values_list(
            "id",
            "uuid",
            "client_reference",
            "callback_url",
            "created_by_id",
            "status",
            "delivery_error_code",
            "last_error",
            "status_reason",
        )
    )
    if not rows:
        return []
    last = dict(
        CallbackEvent.objects.filter(message_id__in=[row[0] for row in rows])
        .order_by()
        .values("message_id")
        .annotate(last=Max("sequence"))
        .values_list("message_id", "last")
    )
    now = timezone.now()
    at = occurred_at or now
    status = event_type.removeprefix("message.")
    events = []
    for pk, message_uuid, reference, callback_url, owner_id, _, error_code, last_error, reason in rows:
        if status in ("delivered", "undelivered"):
            detail = ""
        elif status == "failed":
            detail = last_error
        else:
            detail = reason
        for route in routes:
            if route.owner_id is not None and route.owner_id != owner_id:
                continue
            own_url = callback_url if callback_url and _on_origin(callback_url, route.origin) else ""
            events.append(
                CallbackEvent(
                    event_id=_event_id(),
                    endpoint_id=route.id,
                    target_url=own_url,
                    event_type=event_type,
                    message_id=pk,
                    message_uuid=message_uuid,
                    client_reference=reference,
                    status=status,
                    error_code=error_code if status in ("delivered", "undelivered") else "",
                    detail=(detail or "")[:500],
                    sequence=(last.get(pk) or 0) + 1,
                    occurred_at=at,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
    return CallbackEvent.objects.bulk_create(events)


def events_for_subject(
    *, event_type: str, subject: dict[str, Any], occurred_at: datetime | None = None
) -> list[CallbackEvent]:
    """Events about no message (replies received, numbers' consent changed), for the
    endpoints that want them and have no owner (they see the whole service): one per
    item of `subject["items"]`, or one saying `subject`."""
    now = timezone.now()
    items = subject.get("items", [subject])
    return CallbackEvent.objects.bulk_create(
        CallbackEvent(
            event_id=_event_id(),
            endpoint_id=route.id,
            event_type=event_type,
            status=event_type.split(".", 1)[1],
            data=item,
            occurred_at=occurred_at or now,
            next_attempt_at=now,
            created_at=now,
        )
        for item in items
        for route in endpoint_cache.routes()
        if route.wants(event_type) and route.owner_id is None
    )


def _on_origin(url: str, origin: str) -> bool:
    from callbacks.addresses import url_origin

    return url_origin(url) == origin
