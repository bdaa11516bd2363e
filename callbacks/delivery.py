"""Delivering the outbox: claim an endpoint's due events, POST them signed, record what
each answer means.

One endpoint is delivered to by one task at a time (`busy_until`, a lease: a task whose
worker died is replaced once it runs out), so a slow endpoint holds one worker, never
all of them. An endpoint that failed is not tried again before `retry_at`, and then with
one event (a probe) until it answers again: a dead endpoint costs one timeout per retry,
not one per event. When it answers again, every event of its that waits is due at once.

Each event is retried on the schedule of callbacks.conf.RETRY_SCHEDULE_SECONDS (Svix's)
on a connection error, a timeout, a 5xx or a 429 (after its Retry-After if it gives one),
and given up (`failed`) after the last; any other answer that is not 2xx (4xx, a
redirect, which is not followed) fails it at once. An endpoint failing without a success
for CALLBACK_DISABLE_AFTER is disabled, and the audit log says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.db.models.functions import Now
from django.utils import timezone

from audit.services import Action, Via, control_action_record
from callbacks import metrics
from callbacks.addresses import CallbackHostUnresolved, UnsafeCallbackURL, target_resolved
from callbacks.conf import callback_settings
from callbacks.models import CallbackAttempt, CallbackEndpoint, CallbackEvent
from callbacks.signing import signature_headers
from callbacks.transport import PostResult, pool_for, post

logger = logging.getLogger(__name__)

Outcome = CallbackAttempt.Outcome
State = CallbackEvent.State


@dataclass(frozen=True)
class Claim:
    endpoint_id: int
    claim_token: uuid.UUID
    count: int


def _due_events(endpoint_id: int):
    return CallbackEvent.objects.filter(endpoint_id=endpoint_id, state=State.PENDING, next_attempt_at__lte=Now())


def claims_take(*, limit_endpoints: int = 100) -> list[Claim]:
    """Claim the due events of each enabled endpoint that is neither being delivered to
    nor waiting to be retried; one Claim per endpoint, for a task to deliver."""
    conf = callback_settings()
    claims = []
    with transaction.atomic():
        endpoints = list(
            CallbackEndpoint.objects.select_for_update(skip_locked=True)
            .filter(enabled=True)
            .filter(Q(busy_until__isnull=True) | Q(busy_until__lt=Now()))
            .filter(Q(retry_at__isnull=True) | Q(retry_at__lte=Now()))
            .filter(
                Exists(
                    CallbackEvent.objects.filter(
                        endpoint_id=OuterRef("pk"), state=State.PENDING, next_attempt_at__lte=Now()
                    )
                )
            )
            .order_by("id")
            .values_list("id", "failures_in_row")[:limit_endpoints]
        )
        for endpoint_id, failures_in_row in endpoints:
            size = 1 if failures_in_row else conf.batch_size
            ids = list(
                _due_events(endpoint_id)
                .select_for_update(skip_locked=True)
                .order_by("next_attempt_at", "id")
                .values_list("id", flat=True)[:size]
            )
            if not ids:
                continue
            token = uuid.uuid4()
            CallbackEvent.objects.filter(pk__in=ids).update(claim_token=token)
            CallbackEndpoint.objects.filter(pk=endpoint_id).update(
                busy_until=Now() + timedelta(seconds=conf.lease_seconds)
            )
            claims.append(Claim(endpoint_id=endpoint_id, claim_token=token, count=len(ids)))
    return claims


def event_body(event: CallbackEvent) -> str:
    """The JSON an endpoint receives (Standard Webhooks' shape: type, timestamp, data)."""
    if event.message_id is not None:
        data = {
            "event_id": event.event_id,
            "message_id": event.message_id,
            "message_uuid": str(event.message_uuid) if event.message_uuid else None,
            "client_reference": event.client_reference,
            "status": event.status,
            "error_code": event.error_code,
            "detail": event.detail,
            "sequence": event.sequence,
            "occurred_at": event.occurred_at.isoformat(),
        }
    else:
        data = {"event_id": event.event_id, **(event.data or {}), "occurred_at": event.occurred_at.isoformat()}
    return json.dumps(
        {"type": event.event_type, "timestamp": event.occurred_at.isoformat(), "data": data}, separators=(",", ":")
    )


def _signing_salts(endpoint: CallbackEndpoint) -> list[str]:
    salts = [endpoint.secret_salt]
    if (
        endpoint.previous_secret_salt
        and endpoint.previous_secret_expires_at
        and endpoint.previous_secret_expires_at > timezone.now()
    ):
        salts.append(endpoint.previous_secret_salt)
    return salts


@dataclass
class _Sent:
    event: CallbackEvent
    started_at: object
    result: PostResult | None  # None: not tried (the batch stopped early)


def claim_deliver(*, endpoint_id: int, claim_token: uuid.UUID) -> dict[str, int]:
    """Deliver the events claimed under `claim_token`; return counts by outcome."""
    conf = callback_settings()
    endpoint = CallbackEndpoint.objects.filter(pk=endpoint_id).first()
    if endpoint is None:
        return {}
    events = list(
        CallbackEvent.objects.filter(endpoint_id=endpoint_id, claim_token=claim_token, state=State.PENDING).order_by(
            "id"
        )
    )
    if not events or not endpoint.enabled:
        _release(endpoint_id, claim_token)
        return {}
    salts = _signing_salts(endpoint)
    outcomes: list[_Sent] = []
    targets: dict[str, object] = {}
    pools: dict[tuple, object] = {}
    pools_lock = threading.Lock()
    # The endpoint is down (a retryable failure): events not yet started wait for its retry, untried.
    stop = threading.Event()

    def send(event: CallbackEvent) -> _Sent:
        started = timezone.now()
        if stop.is_set():
            return _Sent(event, started, None)
        url = event.target_url or endpoint.url
        try:
            target = targets.get(url)
            if target is None:
                # Checked at send time, on what the name resolves to now (callbacks.addresses).
                target = targets[url] = target_resolved(url)
        except UnsafeCallbackURL as exc:
            return _Sent(event, started, PostResult(http_status=None, duration_ms=0, error=f"refused: {exc}"[:500]))
        except CallbackHostUnresolved as exc:
            return _Sent(event, started, PostResult(http_status=None, duration_ms=0, error=str(exc)[:500]))
        key = (target.scheme, target.address, target.port, target.host)
        with pools_lock:  # one pool per address, however many threads ask for it first
            pool = pools.get(key)
            if pool is None:
                pool = pools[key] = pool_for(target, timeout=conf.timeout_seconds, maxsize=conf.concurrency)
        body = event_body(event)
        headers = signature_headers(
            event_id=event.event_id, body=body, at=timezone.now(), salts=salts, key=conf.secret_key
        )
        result = post(pool, target, body=body.encode(), headers=headers, max_response_bytes=conf.max_response_bytes)
        if _is_retryable(result):
            stop.set()
        return _Sent(event, started, result)

    # Targets resolved before the threads start, so each URL is checked once.
    for url in {e.target_url or endpoint.url for e in events}:
        with contextlib.suppress(UnsafeCallbackURL, CallbackHostUnresolved):
            targets[url] = target_resolved(url)
    with ThreadPoolExecutor(max_workers=min(conf.concurrency, len(events))) as pool_of_threads:
        outcomes.extend(pool_of_threads.map(send, events))
    for pool in pools.values():
        pool.close()
    counts = _record(endpoint, claim_token, outcomes)
    logger.info(
        "callbacks: endpoint id=%s: %s (events %s..%s)",
        endpoint_id,
        ", ".join(f"{n} {k}" for k, n in sorted(counts.items())),
        events[0].event_id,
        events[-1].event_id,
    )
    return counts


def _is_retryable(result: PostResult) -> bool:
    if result.error.startswith("refused:"):
        return False
    if result.http_status is None:
        return True
    return result.http_status >= 500 or result.http_status in (408, 429)


def _retry_delay(attempt_number: int, result: PostResult, schedule: tuple[float, ...]) -> float | None:
    """Seconds until the next try after failed attempt `attempt_number` (1-based), None to give up."""
    if attempt_number >= len(schedule):
        return None
    if result.retry_after_seconds is not None:
        return result.retry_after_seconds
    return float(schedule[attempt_number])


def _release(endpoint_id: int, claim_token: uuid.UUID) -> None:
    CallbackEvent.objects.filter(endpoint_id=endpoint_id, claim_token=claim_token).update(claim_token=None)
    CallbackEndpoint.objects.filter(pk=endpoint_id).update(busy_until=None)


def _record(endpoint: CallbackEndpoint, claim_token: uuid.UUID, outcomes: list[_Sent]) -> dict[str, int]:
    """Write each tried event's outcome and attempt row, and the endpoint's health, in one
    transaction; only events still held under `claim_token` (a late worker whose lease ran
    out and was taken over writes nothing for them)."""
    conf = callback_settings()
    counts: dict[str, int] = {}
    now = timezone.now()
    with transaction.atomic():
        held = set(
            CallbackEvent.objects.filter(
                pk__in=[s.event.pk for s in outcomes], claim_token=claim_token, state=State.PENDING
            )
            .select_for_update()
            .values_list("pk", flat=True)
        )
        attempts, delivered, latencies = [], [], []
        failures, retry_delays, retryable = 0, [], False
        last_error = ""
        for sent in outcomes:
            event, result = sent.event, sent.result
            if event.pk not in held or result is None:
                continue
            number = event.attempts + 1
            base = {"attempts": number, "claim_token": None, "last_http_status": result.http_status}
            if result.http_status is not None and 200 <= result.http_status < 300:
                delivered.append(event.pk)
                latencies.append(result.duration_ms)
                outcome = Outcome.DELIVERED
            else:
                failures += 1
                last_error = result.error
                delay = _retry_delay(number, result, conf.retry_schedule) if _is_retryable(result) else None
                if delay is None:
                    outcome = Outcome.FAILED
                    CallbackEvent.objects.filter(pk=event.pk).update(
                        state=State.FAILED, last_error=result.error[:500], **base
                    )
                else:
                    outcome = Outcome.RETRY
                    if result.retry_after_seconds is not None:
                        retry_delays.append(result.retry_after_seconds)
                    retryable = True
                    CallbackEvent.objects.filter(pk=event.pk).update(
                        next_attempt_at=now + timedelta(seconds=delay), last_error=result.error[:500], **base
                    )
            counts[outcome] = counts.get(outcome, 0) + 1
            attempts.append(
                CallbackAttempt(
                    event_id=event.pk,
                    number=number,
                    started_at=sent.started_at,
                    duration_ms=result.duration_ms,
                    http_status=result.http_status,
                    outcome=outcome,
                    error=result.error[:500],
                )
            )
        if delivered:
            # One UPDATE for the batch: attempts counted from the row.
            CallbackEvent.objects.filter(pk__in=delivered).update(
                state=State.DELIVERED,
                delivered_at=now,
                attempts=F("attempts") + 1,
                claim_token=None,
                last_http_status=200,
                last_error="",
            )
        CallbackAttempt.objects.bulk_create(attempts)
        # Untried events of the claim go back as they were.
        CallbackEvent.objects.filter(endpoint_id=endpoint.pk, claim_token=claim_token).update(claim_token=None)
        _health_update(
            endpoint,
            delivered=bool(delivered),
            failures=failures,
            latencies=latencies,
            retry_after=max(retry_delays) if retry_delays else None,
            retryable=retryable,
            last_error=last_error,
            now=now,
            conf=conf,
        )
    metrics.deliveries_count(counts)
    return counts


def _health_update(
    endpoint: CallbackEndpoint,
    *,
    delivered: bool,
    failures: int,
    latencies: list[int],
    retry_after: float | None,
    retryable: bool,
    last_error: str,
    now,
    conf,
) -> None:
    """The endpoint's health after a task: a success clears its failures; a failed try (a
    task that delivered nothing) counts one more in a row, and if it may succeed later, the
    endpoint waits the schedule's delay for that many failures (or its Retry-After)."""
    fields: dict = {"busy_until": None}
    if delivered:
        fields.update(last_success_at=now, last_latency_ms=int(sum(latencies) / len(latencies)))
        if endpoint.failures_in_row or endpoint.retry_at:
            # Back up: whatever of its events waits for a retry is due now.
            CallbackEvent.objects.filter(endpoint_id=endpoint.pk, state=State.PENDING, next_attempt_at__gt=now).update(
                next_attempt_at=now
            )
        fields.update(failures_in_row=0, failing_since=None, retry_at=None)
        if failures:
            fields.update(last_failure_at=now, last_error=last_error[:500])
    elif failures:
        failing_since = endpoint.failing_since or now
        in_row = endpoint.failures_in_row + 1
        schedule = conf.retry_schedule
        wait = retry_after if retry_after is not None else schedule[min(in_row, len(schedule) - 1)]
        fields.update(
            last_failure_at=now,
            last_error=last_error[:500],
            failures_in_row=in_row,
            failing_since=failing_since,
            retry_at=now + timedelta(seconds=wait) if retryable else None,
        )
        if (now - failing_since).total_seconds() >= conf.disable_after_seconds and endpoint.enabled:
            reason = (
                f"disabled automatically: failing since {failing_since:%Y-%m-%d %H:%M:%S} UTC without a success "
                f"(CALLBACK_DISABLE_AFTER {conf.disable_after_seconds} s); last error: {last_error[:150]}"
            )
            fields.update(enabled=False, disabled_reason=reason[:300])
            control_action_record(
                action=Action.CALLBACK,
                actor=None,
                via=Via.WORKER,
                actor_label="callbacks worker",
                detail={"endpoint": endpoint.pk, "name": endpoint.name, "disabled": True, "reason": reason[:300]},
            )
            logger.warning("callbacks: endpoint id=%s disabled: %s", endpoint.pk, reason[:300])
    CallbackEndpoint.objects.filter(pk=endpoint.pk).update(**fields)
    if "enabled" in fields:
        from callbacks.outbox import endpoint_cache

        endpoint_cache.clear()
