"""A message created due is announced on PostgreSQL's NOTIFY, only once its transaction commits."""

from __future__ import annotations

import io
from datetime import datetime, timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from dispatcher.engine.listening import open_listener
from messages_app.csv_import import messages_import_csv
from messages_app.due_signal import MESSAGES_DUE_CHANNEL, messages_due_earliest
from messages_app.services import message_create, messages_bulk_create
from tests.factories import phone_number

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def listener():
    listening = open_listener(MESSAGES_DUE_CHANNEL)
    assert listening is not None
    yield listening
    listening.close()


def test_a_message_created_due_wakes_the_listener(listener):
    message_create(recipient_phone_number=phone_number(), content="code 1")
    assert listener.wait(2)
    assert not listener.wait(0.1)  # one creation, one wake


def test_a_rolled_back_creation_wakes_nobody(listener):
    with pytest.raises(RuntimeError), transaction.atomic():
        message_create(recipient_phone_number=phone_number(), content="code 2")
        raise RuntimeError("rolled back")
    assert not listener.wait(0.3)


def test_a_message_for_later_wakes_nobody_and_a_bulk_create_wakes_once(listener):
    message_create(
        recipient_phone_number=phone_number(), content="later", send_after=timezone.now() + timedelta(hours=1)
    )
    assert not listener.wait(0.3)
    messages_bulk_create(items=[{"recipient_phone_number": phone_number(), "content": f"b{i}"} for i in range(5)])
    assert listener.wait(2)
    assert not listener.wait(0.1)


def test_the_announcement_names_the_earliest_due_time_of_each_priority(listener):
    now = timezone.now()
    messages_bulk_create(
        items=[
            {"recipient_phone_number": phone_number(), "content": "a", "send_after": now - timedelta(minutes=5)},
            {"recipient_phone_number": phone_number(), "content": "b", "send_after": now - timedelta(minutes=9)},
            {"recipient_phone_number": phone_number(), "content": "c", "priority": "high"},
        ]
    )

    earliest = messages_due_earliest(listener.wait(2))

    assert earliest["normal"] == now - timedelta(minutes=9)
    assert set(earliest) == {"normal", "high"} and earliest["high"] >= now


def test_an_unreadable_announcement_names_nothing():
    assert messages_due_earliest(["", "{", "[1]", '{"normal": "yesterday"}', '{"normal": "2026-01-01T00:00:00"}']) == {}


def test_an_import_announces_at_its_commit_the_earliest_due_time_it_queued(listener):
    earlier = (timezone.now() - timedelta(minutes=3)).isoformat()
    csv = f"recipient_phone_number,content,send_after\n{phone_number()},a,\n{phone_number()},b,{earlier}\n"

    messages_import_csv(stream=io.BytesIO(csv.encode()), batch_size=1)

    earliest = messages_due_earliest(listener.wait(2))
    assert earliest == {"normal": datetime.fromisoformat(earlier)}
    assert not listener.wait(0.1)  # one import, one wake


def test_a_dry_run_import_announces_nothing(listener):
    csv = f"recipient_phone_number,content\n{phone_number()},a\n"
    messages_import_csv(stream=io.BytesIO(csv.encode()), dry_run=True)
    assert not listener.wait(0.3)
