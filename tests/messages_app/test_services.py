from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from messages_app.errors import MessageStateError
from messages_app.models import Message
from messages_app.services import message_create, message_requeue, messages_bulk_create, messages_requeue_failed
from messages_app.transitions import database_now
from tests.factories import make_message

pytestmark = pytest.mark.django_db

Status = Message.Status


def _snapshot(message: Message) -> dict:
    return {
        field.attname: getattr(Message.objects.get(pk=message.pk), field.attname)
        for field in Message._meta.concrete_fields
    }


# --- message_create ----------------------------------------------------------------


def test_message_create_stores_a_normalised_unsent_message():
    message = message_create(recipient_phone_number="+90 555 111 22 33", content="hello")

    stored = Message.objects.get(pk=message.pk)
    assert stored.recipient_phone_number == "+905551112233"
    assert stored.content == "hello"
    assert stored.status == Status.UNSENT
    assert stored.attempts == 0
    assert stored.sent_at is None
    assert stored.claimed_at is None
    assert stored.provider_message_id == ""
    assert stored.uuid is not None
    assert stored.created_at is not None
    # Due at once: the claim's queue holds every unsent message by its due time.
    assert stored.send_after is None
    assert abs(stored.next_attempt_at - stored.created_at) < timedelta(seconds=1)


def test_message_create_with_send_after_is_due_then():
    when = timezone.now() + timedelta(hours=2)
    message = message_create(recipient_phone_number="+905551112233", content="later", send_after=when)
    stored = Message.objects.get(pk=message.pk)
    assert stored.send_after == when
    assert stored.next_attempt_at == when


def test_message_create_gives_each_message_its_own_uuid():
    first = message_create(recipient_phone_number="+905551112233", content="a")
    second = message_create(recipient_phone_number="+905551112233", content="a")
    assert first.uuid != second.uuid
    assert Message.objects.count() == 2


@pytest.mark.parametrize(
    ("phone", "content"),
    [("not a phone", "hello"), ("+905551112233", "   "), ("+905551112233", "a\x00b")],
)
def test_message_create_with_invalid_input_writes_nothing(phone, content):
    with pytest.raises(ValidationError):
        message_create(recipient_phone_number=phone, content=content)
    assert not Message.objects.exists()


def test_message_create_rejects_over_long_content(settings):
    settings.MESSAGE_MAX_LENGTH = 4
    with pytest.raises(ValidationError):
        message_create(recipient_phone_number="+905551112233", content="12345")
    assert not Message.objects.exists()


# --- messages_bulk_create -------------------------------------------------------------


def test_bulk_create_creates_every_message_normalised_in_order():
    items = [
        {"recipient_phone_number": "+90 555 000 00 01", "content": "one"},
        {"recipient_phone_number": "+90 555 000 00 02", "content": "two"},
        {"recipient_phone_number": "+44 20 7946 0000", "content": "three"},
    ]
    created = messages_bulk_create(items=items)

    assert [m.content for m in created] == ["one", "two", "three"]
    assert all(m.pk is not None for m in created)
    stored = list(Message.objects.order_by("id").values_list("recipient_phone_number", "content", "status"))
    assert stored == [
        ("+905550000001", "one", Status.UNSENT),
        ("+905550000002", "two", Status.UNSENT),
        ("+442079460000", "three", Status.UNSENT),
    ]


def test_bulk_create_makes_each_message_due_at_once_or_at_its_send_after():
    when = timezone.now() + timedelta(hours=1)
    before = timezone.now()
    now_item = {"recipient_phone_number": "+905550000001", "content": "now"}
    later_item = {"recipient_phone_number": "+905550000002", "content": "later", "send_after": when}
    soon, later = messages_bulk_create(items=[now_item, later_item])

    soon, later = Message.objects.get(pk=soon.pk), Message.objects.get(pk=later.pk)
    assert before <= soon.next_attempt_at <= timezone.now()
    assert (later.send_after, later.next_attempt_at) == (when, when)


@pytest.mark.parametrize("bad_index", [0, 1, 2])
def test_bulk_create_is_all_or_nothing(bad_index):
    items = [{"recipient_phone_number": "+905550000001", "content": f"m{i}"} for i in range(3)]
    items[bad_index] = {"recipient_phone_number": "+90 123", "content": "bad"}

    with pytest.raises(ValidationError):
        messages_bulk_create(items=items)
    assert not Message.objects.exists()


def test_bulk_create_with_bad_content_writes_nothing():
    items = [
        {"recipient_phone_number": "+905550000001", "content": "fine"},
        {"recipient_phone_number": "+905550000002", "content": ""},
    ]
    with pytest.raises(ValidationError):
        messages_bulk_create(items=items)
    assert not Message.objects.exists()


def test_bulk_create_of_nothing_creates_nothing():
    assert messages_bulk_create(items=[]) == []
    assert not Message.objects.exists()


# --- message_requeue -------------------------------------------------------------------


def test_requeue_puts_a_failed_message_back_in_the_queue():
    failed = make_message(
        status=Status.FAILED,
        attempts=3,
        last_error="provider said 500",
        claimed_at=timezone.now(),
        next_attempt_at=None,
    )
    before = database_now()

    requeued = message_requeue(message_id=failed.pk)

    assert requeued.pk == failed.pk
    assert requeued.status == Status.UNSENT
    stored = Message.objects.get(pk=failed.pk)
    assert stored.status == Status.UNSENT
    assert stored.claimed_at is None
    # A fresh budget of attempts, due at once (by the database's clock); why it last
    # failed stays visible (every past attempt is in the delivery attempt log).
    assert stored.attempts == 0
    assert before <= stored.next_attempt_at <= database_now()
    assert stored.last_error == "provider said 500"


@pytest.mark.parametrize("status", [Status.UNSENT, Status.PROCESSING, Status.SENT])
def test_requeue_of_a_message_that_is_not_failed_raises_and_changes_nothing(status):
    message = make_message(status=status, claimed_at=timezone.now() if status == Status.PROCESSING else None)
    before = _snapshot(message)

    with pytest.raises(MessageStateError) as excinfo:
        message_requeue(message_id=message.pk)

    assert status.value in str(excinfo.value)
    assert _snapshot(message) == before


def test_requeue_touches_only_the_given_message():
    target = make_message(status=Status.FAILED)
    other = make_message(status=Status.FAILED)
    message_requeue(message_id=target.pk)
    assert Message.objects.get(pk=other.pk).status == Status.FAILED


def test_requeue_of_an_unknown_message_raises_does_not_exist():
    with pytest.raises(Message.DoesNotExist):
        message_requeue(message_id=987654321)


# --- messages_requeue_failed -------------------------------------------------------------


def test_requeue_failed_requeues_every_failed_message_and_nothing_else():
    failed = [make_message(status=Status.FAILED) for _ in range(3)]
    unsent = make_message(status=Status.UNSENT)
    processing = make_message(status=Status.PROCESSING)
    sent = make_message(status=Status.SENT)

    assert messages_requeue_failed() == 3

    assert set(Message.objects.filter(pk__in=[m.pk for m in failed]).values_list("status", flat=True)) == {
        Status.UNSENT
    }
    assert Message.objects.get(pk=unsent.pk).status == Status.UNSENT
    assert Message.objects.get(pk=processing.pk).status == Status.PROCESSING
    assert Message.objects.get(pk=sent.pk).status == Status.SENT


def test_requeue_failed_limited_to_ids_requeues_only_failed_among_them():
    chosen_failed = make_message(status=Status.FAILED)
    chosen_sent = make_message(status=Status.SENT)
    other_failed = make_message(status=Status.FAILED)

    assert messages_requeue_failed(message_ids=[chosen_failed.pk, chosen_sent.pk]) == 1

    assert Message.objects.get(pk=chosen_failed.pk).status == Status.UNSENT
    assert Message.objects.get(pk=chosen_sent.pk).status == Status.SENT
    assert Message.objects.get(pk=other_failed.pk).status == Status.FAILED


def test_requeue_failed_with_none_failed_returns_zero():
    make_message(status=Status.SENT)
    assert messages_requeue_failed() == 0
    assert messages_requeue_failed(message_ids=[]) == 0
