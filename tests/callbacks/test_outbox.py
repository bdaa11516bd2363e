"""The outbox: events written in the transaction of the change, only for endpoints that
want them, numbered per message; rolled back with it (callbacks.outbox, messages_app.events)."""

from __future__ import annotations

import re
import threading
import time
import uuid

import pytest
from django.db import connection, transaction
from django.utils import timezone

from callbacks import outbox
from callbacks.models import CallbackEvent
from callbacks.outbox import events_for_messages
from callbacks.services import endpoint_create
from consent.services import consent_set
from messages_app.models import Message
from messages_app.transitions import AttemptRecord, message_cancel, message_fail, messages_claim, messages_mark_sent
from tests.factories import make_message, make_user

pytestmark = pytest.mark.django_db

Status = Message.Status


# The two ways of writing a batch's events, as the module has them (the fixture below swaps them).
ONE_STATEMENT, PORTABLE = outbox._message_events_in_one_statement, outbox._message_events_portable


@pytest.fixture(autouse=True, params=["one statement", "portable"])
def outbox_path(request, monkeypatch):
    """Every test here runs on PostgreSQL's one statement and on the portable path
    (SQLite's, `make run`), which must write the same rows."""
    if request.param == "portable":
        monkeypatch.setattr(outbox, "_message_events_in_one_statement", PORTABLE)
    return request.param


def _send(message: Message) -> None:
    token = uuid.uuid4()
    messages_claim(message_ids=[message.pk], claim_token=token, lease_seconds=60)
    messages_mark_sent(
        claim_token=token,
        attempts=[AttemptRecord(message_id=message.pk, number=1, started_at=timezone.now(), provider_message_id="p1")],
        sent_at=timezone.now(),
        delivery_cache_pending=False,
    )


def test_no_endpoint_no_event():
    message = make_message()
    _send(message)
    assert not CallbackEvent.objects.exists()


def test_a_sent_message_writes_one_event_per_endpoint_that_wants_it():
    everything = endpoint_create(name="all", url="http://127.0.0.1:9/hooks").endpoint
    only_failures = endpoint_create(name="f", url="http://127.0.0.1:9/f", event_types=["message.failed"]).endpoint
    message = make_message(client_reference="order-17")
    _send(message)
    [event] = CallbackEvent.objects.all()
    assert event.endpoint_id == everything.pk and event.endpoint_id != only_failures.pk
    assert (event.event_type, event.status, event.message_id, event.message_uuid) == (
        "message.sent",
        "sent",
        message.pk,
        message.uuid,
    )
    assert event.client_reference == "order-17" and event.sequence == 1
    assert event.event_id.startswith("evt_") and event.state == "pending"


def test_sequence_numbers_follow_each_message_changes():
    endpoint_create(name="all", url="http://127.0.0.1:9/hooks")
    message = make_message()
    assert message_cancel(message_id=message.pk)
    other = make_message()
    token = uuid.uuid4()
    messages_claim(message_ids=[other.pk], claim_token=token, lease_seconds=60)
    message_fail(claim_token=token, attempt=AttemptRecord(message_id=other.pk, number=1, started_at=timezone.now()))
    events = {e.message_id: e for e in CallbackEvent.objects.all()}
    assert events[message.pk].status == "cancelled" and events[message.pk].sequence == 1
    assert events[other.pk].status == "failed"
    Message.objects.filter(pk=message.pk).update(status=Status.UNSENT)
    assert message_cancel(message_id=message.pk)
    assert sorted(CallbackEvent.objects.filter(message_id=message.pk).values_list("sequence", flat=True)) == [1, 2]


def test_a_change_rolled_back_leaves_no_event():
    endpoint_create(name="all", url="http://127.0.0.1:9/hooks")
    message = make_message()
    with pytest.raises(RuntimeError), transaction.atomic():
        message_cancel(message_id=message.pk)
        assert CallbackEvent.objects.count() == 1
        raise RuntimeError("the caller's transaction fails")
    assert not CallbackEvent.objects.exists()
    assert Message.objects.get(pk=message.pk).status == Status.UNSENT


def test_an_endpoint_with_an_owner_gets_only_its_owners_messages():
    alice, bob = make_user(username="alice"), make_user(username="bob")
    endpoint = endpoint_create(name="alice's", url="http://127.0.0.1:9/a", owner=alice).endpoint
    mine, theirs = make_message(created_by=alice), make_message(created_by=bob)
    message_cancel(message_id=mine.pk)
    message_cancel(message_id=theirs.pk)
    assert list(CallbackEvent.objects.values_list("endpoint_id", "message_id")) == [(endpoint.pk, mine.pk)]


def test_opt_out_and_opt_in_are_events_for_endpoints_without_owner():
    endpoint_create(name="all", url="http://127.0.0.1:9/hooks", event_types=["consent.opted_out", "consent.opted_in"])
    consent_set(phone_number="+905551112233", status="opted_out", method="api", via="api")
    consent_set(phone_number="+905551112233", status="opted_in", method="api", via="api")
    assert list(CallbackEvent.objects.order_by("id").values_list("event_type", "data__phone_number")) == [
        ("consent.opted_out", "+905551112233"),
        ("consent.opted_in", "+905551112233"),
    ]


def test_a_message_callback_url_must_be_on_a_registered_endpoints_origin(api_client):
    endpoint_create(name="all", url="http://127.0.0.1:9/hooks")
    base = {"recipient_phone_number": "+905551112233", "content": "hi"}
    refused = api_client.post("/api/messages/", {**base, "callback_url": "http://127.0.0.1:10/x"}, format="json")
    assert refused.status_code == 400 and "callback_url" in refused.json()
    ok = api_client.post(
        "/api/messages/",
        {**base, "callback_url": "http://127.0.0.1:9/orders/17", "client_reference": "o-17"},
        format="json",
    )
    assert ok.status_code == 201, ok.json()
    assert ok.json()["callback_url"] == "http://127.0.0.1:9/orders/17" and ok.json()["client_reference"] == "o-17"
    message_cancel(message_id=ok.json()["id"])
    [event] = CallbackEvent.objects.all()
    assert event.target_url == "http://127.0.0.1:9/orders/17"
    bulk = api_client.post(
        "/api/messages/bulk/", {"messages": [{**base, "callback_url": "https://elsewhere.example/x"}]}, format="json"
    )
    assert bulk.status_code == 400


def test_a_batch_cancel_and_an_opt_out_suppressing_queued_messages_write_one_event_each():
    from messages_app.transitions import messages_cancel

    endpoint_create(name="all", url="http://127.0.0.1:9/hooks")
    cancelled = [make_message() for _ in range(3)]
    assert messages_cancel(queryset=Message.objects.filter(pk__in=[m.pk for m in cancelled])) == 3
    queued = make_message(recipient_phone_number="+905551119999")
    consent_set(phone_number="+905551119999", status="opted_out", method="api", via="api")
    kinds = sorted(CallbackEvent.objects.values_list("event_type", "message_id"), key=str)
    assert kinds == sorted(
        [
            *(("message.cancelled", m.pk) for m in cancelled),
            ("message.suppressed", queued.pk),
            ("consent.opted_out", None),
        ],
        key=str,
    )


# What an event says, without what differs between two writes (ids, event ids, write times).
COMPARED = (
    "endpoint_id",
    "message_id",
    "target_url",
    "event_type",
    "message_uuid",
    "client_reference",
    "status",
    "error_code",
    "detail",
    "sequence",
    "occurred_at",
    "data",
    "state",
    "attempts",
    "claim_token",
    "delivered_at",
    "last_http_status",
    "last_error",
)


def _written_by(writer, *, event_type: str, message_ids: list[int], at) -> tuple[int, list[tuple], list[str]]:
    """What `writer` writes (in id order), rolled back afterwards."""
    with transaction.atomic():
        before = CallbackEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
        routes = [r for r in outbox.endpoint_cache.routes() if r.wants(event_type)]
        event = outbox._MessageEvent(event_type=event_type, occurred_at=at, now=timezone.now())
        count = writer(event, routes, message_ids)
        new = CallbackEvent.objects.filter(id__gt=before).order_by("id")
        rows = list(new.values_list(*COMPARED))
        event_ids = list(new.values_list("event_id", flat=True))
        transaction.set_rollback(True)
    return count, rows, event_ids


def test_postgresqls_one_statement_writes_the_portable_paths_rows():
    """Owners, event types, a message's callback_url on its endpoint's origin or not (the
    origin's case and default port as url_origin has them), earlier events' sequence, each
    kind of detail (a failure's error cut to 500 characters), in the same order."""
    alice, bob = make_user(username="alice"), make_user(username="bob")
    everything = endpoint_create(name="all", url="http://127.0.0.1:9/hooks").endpoint
    endpoint_create(name="alice's", url="http://127.0.0.1:10/a", owner=alice)
    endpoint_create(name="failures", url="http://127.0.0.1:80/f", event_types=["message.failed"])
    endpoint_create(name="off", url="http://127.0.0.1:11/off", enabled=False)
    messages = [
        make_message(created_by=alice, callback_url="http://127.0.0.1:9/orders/1", client_reference="o-1"),
        make_message(created_by=bob, callback_url="http://127.0.0.1:10/x"),
        make_message(created_by=alice, callback_url="HTTP://127.0.0.1:10/y", status_reason="cancelled by api"),
        make_message(callback_url="http://127.0.0.1/z", last_error="e" * 600, delivery_error_code="30003"),
        make_message(status_reason="opted out", last_error="timeout", delivery_error_code="30005"),
    ]
    earlier = messages[4]
    for sequence in (1, 2):
        CallbackEvent.objects.create(
            event_id=f"evt_earlier_{sequence}",
            endpoint_id=everything.pk,
            event_type="message.sent",
            message_id=earlier.pk,
            sequence=sequence,
            occurred_at=timezone.now(),
            next_attempt_at=timezone.now(),
            created_at=timezone.now(),
        )
    ids = [m.pk for m in reversed(messages)] + [messages[0].pk, 10**12]
    at = timezone.now()
    for event_type in ("message.failed", "message.cancelled", "message.undelivered"):
        one = _written_by(ONE_STATEMENT, event_type=event_type, message_ids=ids, at=at)
        portable = _written_by(PORTABLE, event_type=event_type, message_ids=ids, at=at)
        assert one[:2] == portable[:2], event_type
        assert one[0] == len(one[1]) and one[0] >= 7
        assert all(re.fullmatch(r"evt_[0-9a-f]{32}", e) for e in one[2] + portable[2])
        assert len(set(one[2])) == len(one[2])
    rows = one[1]
    assert [r[:3] for r in rows if r[1] == messages[0].pk] == [
        (everything.pk, messages[0].pk, "http://127.0.0.1:9/orders/1"),
        (everything.pk + 1, messages[0].pk, ""),
    ]
    assert {r[1]: r[9] for r in rows}[earlier.pk] == 3


@pytest.mark.django_db(transaction=True)
def test_two_changes_of_one_message_number_their_events_one_after_the_other():
    """The second change waits for the first's lock on the message; its events, numbered
    once it holds the lock, follow the first's committed ones."""
    endpoint_create(name="all", url="http://127.0.0.1:9/hooks")
    message = make_message()
    first_written, release_first = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def change(reason: str, written: threading.Event | None = None) -> None:
        try:
            with transaction.atomic():
                Message.objects.filter(pk=message.pk).update(status_reason=reason)
                events_for_messages(event_type="message.cancelled", message_ids=[message.pk])
                if written is not None:
                    written.set()
                    assert release_first.wait(20)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    first = threading.Thread(target=change, args=("first", first_written))
    first.start()
    assert first_written.wait(10)
    second = threading.Thread(target=change, args=("second",))
    second.start()
    with connection.cursor() as cursor:
        deadline = time.monotonic() + 10
        waiting = 0
        while not waiting and time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            waiting = cursor.fetchone()[0]
    release_first.set()
    first.join(20)
    second.join(20)
    assert waiting and not errors
    assert list(CallbackEvent.objects.order_by("id").values_list("detail", "sequence")) == [("first", 1), ("second", 2)]
