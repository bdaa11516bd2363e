"""Claim floors: the dispatch window's claims read each priority's due queue from where the
last one stopped, so a transaction held open elsewhere (which keeps VACUUM from removing the
index entries the claims leave dead) does not make every claim walk everything claimed
before (issue 26). A row that commits below a floor is found by the window's sweep.

The paced claim here is a wake (claim_wake), as the window makes when a due message is
created: the budget is reset before each so that only the floors decide what it reads.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import psycopg
import pytest
from django.db import connection, transaction
from django.utils import timezone

from dispatcher.engine.claiming import (
    FLOOR_LAG_SECONDS,
    Claim,
    LeaseRecoveryFloor,
    claim_floors_sweep,
    claim_tick,
    claim_wake,
    due_queue,
    messages_in_flight,
)
from dispatcher.engine.listening import open_listener
from dispatcher.models import DispatcherState
from dispatcher.state import dispatcher_claim_floors_read
from messages_app.due_signal import MESSAGES_DUE_CHANNEL, messages_due_earliest
from messages_app.models import Message
from messages_app.services import message_create
from messages_app.transitions import database_now, messages_claim
from tests.factories import make_message, phone_number

Status = Message.Status


def paced_claim(batch_size: int) -> Claim:
    DispatcherState.objects.filter(pk=DispatcherState.SINGLETON_PK).update(
        running=True, batch_size=batch_size, recent_claims=[]
    )
    claim = claim_wake()
    assert claim is not None
    return claim


def make_due(*due_seconds_ago: float) -> list[Message]:
    now = database_now()
    return [make_message(next_attempt_at=now - timedelta(seconds=ago)) for ago in due_seconds_ago]


@pytest.mark.django_db
def test_paced_claims_go_on_from_where_the_last_one_stopped_and_take_each_message_once():
    messages = make_due(100, 90, 80, 70, 60, 50, 40, 30, 20, 10)

    first = paced_claim(4)
    assert first.message_ids == [m.pk for m in messages[:4]]
    assert dispatcher_claim_floors_read()["normal"] == messages[3].next_attempt_at  # the last key it took

    second = paced_claim(4)
    third = paced_claim(4)

    assert second.message_ids == [m.pk for m in messages[4:8]]
    assert third.message_ids == [m.pk for m in messages[8:]]
    # Nothing left up to now: the floor moves to now - the lag, no further.
    floor = dispatcher_claim_floors_read()["normal"]
    assert (
        database_now() - timedelta(seconds=FLOOR_LAG_SECONDS + 5)
        < floor
        <= database_now() - timedelta(seconds=FLOOR_LAG_SECONDS)
    )


@pytest.mark.django_db
def test_a_message_due_a_moment_ago_is_claimed_without_a_sweep():
    make_due(30)
    paced_claim(5)

    [late] = make_due(FLOOR_LAG_SECONDS / 2)  # committed after the claim, due before it

    assert paced_claim(5).message_ids == [late.pk]


@pytest.mark.django_db
def test_a_message_committed_below_the_floor_waits_for_the_sweep_then_goes_first():
    make_due(30)
    paced_claim(5)
    [newer] = make_due(0)
    [straggler] = make_due(600)  # send_after in the past, or a transaction open for minutes

    assert paced_claim(1).message_ids == [newer.pk]
    assert paced_claim(5).message_ids == []

    lowered = claim_floors_sweep()

    assert lowered == {"normal": straggler.next_attempt_at}
    assert paced_claim(5).message_ids == [straggler.pk]
    assert claim_floors_sweep() == {}  # nothing more below


@pytest.mark.django_db
def test_floors_are_per_priority():
    make_due(30)
    paced_claim(5)
    [urgent] = (make_message(next_attempt_at=database_now() - timedelta(seconds=600), priority="high"),)

    # The high level's floor moved too (it had nothing): the late high message waits for the sweep.
    assert paced_claim(5).message_ids == []
    assert set(claim_floors_sweep()) == {"high"}
    assert paced_claim(5).message_ids == [urgent.pk]


@pytest.mark.django_db
def test_a_manual_tick_reads_from_the_start_and_leaves_the_floors_alone():
    make_due(30)
    paced_claim(5)
    floors = dispatcher_claim_floors_read()
    [straggler] = make_due(600)

    with transaction.atomic():
        manual = claim_tick(due_only=False)

    assert manual is not None and manual.message_ids == [straggler.pk]
    assert dispatcher_claim_floors_read() == floors


@pytest.mark.django_db(transaction=True)
def test_with_a_transaction_held_open_the_paced_claim_does_not_walk_what_was_claimed_before():
    """The reason for the floors: a claim from the start reads every index entry the earlier
    claims left dead (and their rows), because nothing can clean them up while any
    transaction that began before them is open; the floored claim reads its own range."""
    now = database_now()
    Message.objects.bulk_create(
        Message(
            recipient_phone_number=phone_number(),
            content="x",
            next_attempt_at=now - timedelta(seconds=3000 - i * 0.5),
        )
        for i in range(3000)
    )
    params = connection.get_connection_params()
    params = {k: v for k, v in params.items() if k not in ("cursor_factory", "context", "prepare_threshold")}
    with psycopg.connect(**params) as held:
        held.execute("SELECT txid_current()")  # open, holding back the xmin horizon, idle
        for _ in range(10):
            assert len(paced_claim(290).message_ids) == 290
        floor = dispatcher_claim_floors_read()["normal"]

        def pages_read(queryset) -> int:
            sql, sql_params = queryset.values("id")[:290].query.sql_with_params()
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, sql_params)
                plan = cursor.fetchone()[0]
            plan = plan[0]["Plan"] if isinstance(plan, list) else plan
            return plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]

        from_start = pages_read(due_queue("normal"))
        from_floor = pages_read(due_queue("normal", floor))
        held.rollback()

    assert Message.objects.filter(status=Status.PROCESSING).count() == 2900
    # 2,900 dead entries (and their rows) from the start; the floored claim reads the 100 live ones.
    assert from_floor * 4 < from_start, (from_floor, from_start)


@pytest.mark.django_db(transaction=True)
def test_a_wake_reads_from_the_due_time_its_creation_announced_without_waiting_for_the_sweep():
    """A message created with a send_after in the past (or from a web host whose clock is
    behind the database's) commits below the floor: its announcement lowers it."""
    listener = open_listener(MESSAGES_DUE_CHANNEL)
    assert listener is not None
    try:
        make_due(30)
        paced_claim(5)
        late = message_create(
            recipient_phone_number=phone_number(), content="late", send_after=timezone.now() - timedelta(minutes=10)
        )
        due_from = messages_due_earliest(listener.wait(2))
    finally:
        listener.close()

    assert paced_claim(5).message_ids == []  # from the floor: not there
    DispatcherState.objects.filter(pk=DispatcherState.SINGLETON_PK).update(recent_claims=[])
    assert claim_wake(due_from=due_from).message_ids == [late.pk]
    # ... and the floor is past it again.
    assert dispatcher_claim_floors_read()["normal"] > late.next_attempt_at


@pytest.mark.django_db
def test_a_wake_that_read_below_the_floor_keeps_its_place_for_the_next_claim():
    make_due(30)
    paced_claim(5)
    key = database_now() - timedelta(minutes=10)
    first, second = (make_message(next_attempt_at=key) for _ in range(2))  # both below the floor

    DispatcherState.objects.filter(pk=DispatcherState.SINGLETON_PK).update(batch_size=1, recent_claims=[])
    assert claim_wake(due_from={"normal": key}).message_ids == [first.pk]
    # The budget took one; the next claim goes on from that key, not from the old floor.
    assert paced_claim(5).message_ids == [second.pk]


# --- the lease recovery's floor -------------------------------------------------------------


def processing(*, lease_seconds_from_now: float) -> Message:
    message = make_message()
    messages_claim(message_ids=[message.pk], claim_token=uuid.uuid4(), lease_seconds=60)
    Message.objects.filter(pk=message.pk).update(
        lease_expires_at=database_now() + timedelta(seconds=lease_seconds_from_now)
    )
    return message


@pytest.mark.django_db
def test_messages_in_flight_are_those_whose_lease_still_runs():
    processing(lease_seconds_from_now=30)
    processing(lease_seconds_from_now=45)
    processing(lease_seconds_from_now=-5)  # its worker vanished: waiting for the recovery

    assert messages_in_flight() == 2


@pytest.mark.django_db
def test_the_windows_lease_recovery_reads_from_its_floor_and_from_the_start_once_a_minute():
    recovery = LeaseRecoveryFloor()
    gone = processing(lease_seconds_from_now=-5)
    assert recovery.recover() == 1  # the first look is from the start
    assert Message.objects.get(pk=gone.pk).status == Status.UNSENT
    assert recovery.floor is not None

    lapsed = processing(lease_seconds_from_now=-1)  # ran out after the last look: above the floor
    late = processing(lease_seconds_from_now=-600)  # below it: a claim that committed very late
    assert recovery.recover() == 1
    assert Message.objects.get(pk=lapsed.pk).status == Status.UNSENT
    assert Message.objects.get(pk=late.pk).status == Status.PROCESSING

    recovery.full_at = 0.0  # a minute later
    assert recovery.recover() == 1
    assert Message.objects.get(pk=late.pk).status == Status.UNSENT
