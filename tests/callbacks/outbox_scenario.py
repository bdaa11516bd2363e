"""One history of changes with endpoints listening, run on PostgreSQL by the tests and on
SQLite in a `manage.py shell` of theirs (tests/callbacks/test_outbox.py): the outbox must
write the same events on both, its one statement on the first, its portable path on the
second. Returns each event as values that do not depend on the database's ids."""

from __future__ import annotations

import uuid

from django.contrib.auth import get_user_model
from django.utils import timezone

from callbacks.models import CallbackEvent
from callbacks.services import endpoint_create
from messages_app.models import Message
from messages_app.transitions import (
    AttemptRecord,
    message_cancel,
    message_fail,
    message_record_delivery,
    messages_claim,
    messages_mark_sent,
    messages_requeue,
)


def outbox_scenario() -> list[list]:
    User = get_user_model()
    alice = User.objects.create_user(username="scenario-alice")
    bob = User.objects.create_user(username="scenario-bob")
    endpoints = [
        endpoint_create(name="all", url="http://127.0.0.1:9/hooks").endpoint,
        endpoint_create(name="alice's", url="http://127.0.0.1:10/a", owner=alice).endpoint,
        endpoint_create(
            name="failures", url="http://127.0.0.1:80/f", event_types=["message.failed", "message.undelivered"]
        ).endpoint,
        endpoint_create(name="off", url="http://127.0.0.1:11/off", enabled=False).endpoint,
    ]

    def message(n: int, **fields) -> Message:
        return Message.objects.create(recipient_phone_number=f"+90555000{n:04d}", content=f"scenario {n}", **fields)

    messages = [
        message(0, created_by=alice, callback_url="http://127.0.0.1:9/orders/0", client_reference="o-0"),
        message(1, created_by=bob, callback_url="http://127.0.0.1:10/x", status_reason="cancelled by bob"),
        # On alice's endpoint's origin as url_origin has it (scheme and host in any case).
        message(2, created_by=alice, callback_url="HTTP://127.0.0.1:10/y"),
        # On the failures endpoint's origin, its default port left out.
        message(3, callback_url="http://127.0.0.1/z", client_reference="o-3"),
        message(4, created_by=bob),
    ]
    for m in messages[:2]:
        message_cancel(message_id=m.pk)
    token, now = uuid.uuid4(), timezone.now()
    messages_claim(message_ids=[m.pk for m in messages[2:]], claim_token=token, lease_seconds=60)
    messages_mark_sent(
        claim_token=token,
        attempts=[
            AttemptRecord(message_id=m.pk, number=1, started_at=now, provider_message_id=f"scenario-{n}")
            for n, m in enumerate(messages[2:4], start=2)
        ],
        sent_at=now,
        delivery_cache_pending=False,
    )
    message_fail(
        claim_token=token, attempt=AttemptRecord(message_id=messages[4].pk, number=1, started_at=now, error="e" * 600)
    )
    message_record_delivery(provider_message_id="scenario-2", status="delivered", error_code="", occurred_at=now)
    message_record_delivery(provider_message_id="scenario-3", status="undelivered", error_code="30003", occurred_at=now)
    # A message's second and third changes: its events number on.
    messages_requeue(queryset=Message.objects.filter(pk=messages[4].pk))
    message_cancel(message_id=messages[4].pk)

    names = {e.pk: e.name for e in endpoints}
    index = {m.pk: n for n, m in enumerate(messages)}
    uuids = {m.pk: m.uuid for m in messages}
    return [
        [
            names[e.endpoint_id],
            index[e.message_id],
            e.message_uuid == uuids[e.message_id],
            e.event_id.startswith("evt_") and len(e.event_id) == 36,
            e.target_url,
            e.event_type,
            e.client_reference,
            e.status,
            e.error_code,
            e.detail,
            e.sequence,
            e.state,
            e.attempts,
            e.data,
        ]
        for e in CallbackEvent.objects.order_by("id")
    ]
