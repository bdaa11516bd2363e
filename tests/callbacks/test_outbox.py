"""The outbox: events written in the transaction of the change, only for endpoints that
want them, numbered per message; rolled back with it (callbacks.outbox, messages_app.events)."""

from __future__ import annotations

import uuid

import pytest
from django.db import transaction

from callbacks.models import CallbackEvent
from callbacks.services import endpoint_create
from consent.services import consent_set
from messages_app.models import Message
from messages_app.transitions import AttemptRecord, message_cancel, message_fail, messages_claim, messages_mark_sent
from tests.factories import make_message, make_user

pytestmark = pytest.mark.django_db

Status = Message.Status


def _send(message: Message) -> None:
    token = uuid.uuid4()
    messages_claim(message_ids=[message.pk], claim_token=token, lease_seconds=60)
    from django.utils import timezone

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
    from django.utils import timezone

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
