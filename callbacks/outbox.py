"""The outbox: an event row per endpoint that wants it, written by the transaction that
changed the message (or the consent, or stored the reply), so an event exists exactly
when its change was committed.

messages_app and consent announce their changes (messages_app.events, consent.events);
`OutboxListener`, registered by CallbacksConfig.ready, writes the rows: per batch, one
INSERT ... SELECT on PostgreSQL (two reads and a bulk INSERT elsewhere: SQLite), and
nothing at all for a kind of event no enabled endpoint wants. Which endpoints want what is kept in each
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
from django.db import connection
from django.db.models import F, Max, Value
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


def events_for_messages(*, event_type: str, message_ids: Sequence[int], occurred_at: datetime | None = None) -> int:
    """Write the events of `event_type` for these messages, one per endpoint that wants it
    (an endpoint with an owner: only for its owner's messages), with each message's next
    sequence number; return how many. Inside the caller's transaction, after its change:
    the messages' rows are locked by it, so two changes of one message number their events
    one after the other (the sequence is read by a statement that starts once the lock is
    held, so it sees the other change's events committed)."""
    routes = [r for r in endpoint_cache.routes() if r.wants(event_type)]
    if not routes:
        return 0
    now = timezone.now()
    event = _MessageEvent(event_type=event_type, occurred_at=occurred_at or now, now=now)
    if connection.vendor == "postgresql":
        return _message_events_in_one_statement(event, routes, message_ids)
    return _message_events_portable(event, routes, message_ids)


@dataclass(frozen=True)
class _MessageEvent:
    event_type: str
    occurred_at: datetime
    now: datetime

    @property
    def status(self) -> str:
        return self.event_type.removeprefix("message.")

    @property
    def about_delivery(self) -> bool:
        return self.status in ("delivered", "undelivered")

    @property
    def detail_column(self) -> str:
        """What the event's `detail` says: nothing for a receipt, the error for a failure,
        the status reason (a cancel's, a suppression's, an expiry's) otherwise."""
        if self.about_delivery:
            return ""
        return "last_error" if self.status == "failed" else "status_reason"


def _message_events_in_one_statement(
    event: _MessageEvent, routes: list[EndpointRoute], message_ids: Sequence[int]
) -> int:
    """events_for_messages on PostgreSQL: one INSERT ... SELECT over the messages, the
    routes (arrays: the statement's text is the same whatever their number) and each
    message's last sequence (the callback_event_message index), instead of two reads, a
    model object per event and a bulk INSERT. Ordered by message, then endpoint, as the
    ids of the portable path's rows are.

    A message's callback_url is written as the event's target and checked against its
    endpoint's origin here afterwards by the same rule as the portable path (`url_origin`,
    not a re-implementation of URL parsing in SQL): only the rows with a URL come back, and
    those not on their endpoint's origin are emptied. Messages without a callback_url cost
    nothing more."""
    detail = f"left(m.{event.detail_column}, 500)" if event.detail_column else "''"
    error_code = "m.delivery_error_code" if event.about_delivery else "''"
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH r AS (
                SELECT * FROM unnest(%s::bigint[], %s::bigint[]) AS r(endpoint_id, owner_id)
            ),
            written AS (
                INSERT INTO {CallbackEvent._meta.db_table}
                       (event_id, endpoint_id, target_url, event_type, message_id, message_uuid, client_reference,
                        status, error_code, detail, sequence, occurred_at, data, state, attempts,
                        next_attempt_at, claim_token, created_at, delivered_at, last_http_status, last_error)
                SELECT 'evt_' || replace(gen_random_uuid()::text, '-', ''), r.endpoint_id, m.callback_url, %s,
                       m.id, m.uuid, m.client_reference, %s, {error_code}, {detail},
                       coalesce(last.sequence, 0) + 1, %s, NULL, %s, 0, %s, NULL, %s, NULL, NULL, ''
                  FROM {Message._meta.db_table} AS m
                  JOIN r ON r.owner_id IS NULL OR r.owner_id = m.created_by_id
                  LEFT JOIN LATERAL (
                      SELECT max(e.sequence) AS sequence FROM {CallbackEvent._meta.db_table} AS e
                       WHERE e.message_id = m.id
                  ) AS last ON TRUE
                 WHERE m.id = ANY(%s::bigint[])
                 ORDER BY m.id, r.endpoint_id
                RETURNING id, endpoint_id, target_url
            )
            SELECT count(*), coalesce(array_agg(ARRAY[id::text, endpoint_id::text, target_url])
                                      FILTER (WHERE target_url <> ''), '{{}}')
              FROM written
            """,  # noqa: S608 - the table and column names are ours; every value is a parameter
            [
                [r.id for r in routes],
                [r.owner_id for r in routes],
                event.event_type,
                event.status,
                event.occurred_at,
                CallbackEvent.State.PENDING,
                event.now,
                event.now,
                list(message_ids),
            ],
        )
        written, with_url = cursor.fetchone()
        origins = {r.id: r.origin for r in routes}
        elsewhere = [int(pk) for pk, endpoint_id, url in with_url if not _on_origin(url, origins[int(endpoint_id)])]
        if elsewhere:
            cursor.execute(
                f"UPDATE {CallbackEvent._meta.db_table} SET target_url = '' WHERE id = ANY(%s::bigint[])",  # noqa: S608
                [elsewhere],
            )
    return written


def _message_events_portable(event: _MessageEvent, routes: list[EndpointRoute], message_ids: Sequence[int]) -> int:
    """events_for_messages elsewhere (SQLite, `make run`): two reads (the messages, their
    last sequence numbers) and one bulk INSERT; the same rows as the one statement."""
    rows = list(
        Message.objects.filter(pk__any=list(message_ids))
        .annotate(event_detail=F(event.detail_column) if event.detail_column else Value(""))
        .order_by("id")
        .values_list(
            "id", "uuid", "client_reference", "callback_url", "created_by_id", "delivery_error_code", "event_detail"
        )
    )
    if not rows:
        return 0
    last = dict(
        CallbackEvent.objects.filter(message_id__in=[row[0] for row in rows])
        .order_by()
        .values("message_id")
        .annotate(last=Max("sequence"))
        .values_list("message_id", "last")
    )
    events = []
    for pk, message_uuid, reference, callback_url, owner_id, error_code, detail in rows:
        for route in routes:
            if route.owner_id is not None and route.owner_id != owner_id:
                continue
            own_url = callback_url if callback_url and _on_origin(callback_url, route.origin) else ""
            events.append(
                CallbackEvent(
                    event_id=_event_id(),
                    endpoint_id=route.id,
                    target_url=own_url,
                    event_type=event.event_type,
                    message_id=pk,
                    message_uuid=message_uuid,
                    client_reference=reference,
                    status=event.status,
                    error_code=error_code if event.about_delivery else "",
                    detail=(detail or "")[:500],
                    sequence=(last.get(pk) or 0) + 1,
                    occurred_at=event.occurred_at,
                    next_attempt_at=event.now,
                    created_at=event.now,
                )
            )
    return len(CallbackEvent.objects.bulk_create(events))


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
