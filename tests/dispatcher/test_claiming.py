"""Claiming: which tick runs, and which messages it takes (real PostgreSQL, real concurrency).

Claims read the database's clock, so these tests move time by moving the rows
(`next_attempt_at`, `next_tick_at`) rather than by passing a clock in.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.db import connection, transaction

from dispatcher.engine.claiming import Claim, claim_batch, claim_drain_batch, claim_tick, messages_in_flight
from dispatcher.models import DispatcherState
from messages_app.models import Message
from messages_app.transitions import database_now
from tests.factories import make_message, phone_number
from tests.processes import start_claimer, wait_for

Status = Message.Status


def set_state(**fields) -> None:
    assert DispatcherState.objects.filter(pk=DispatcherState.SINGLETON_PK).update(**fields) == 1


def get_state() -> DispatcherState:
    return DispatcherState.objects.get(pk=DispatcherState.SINGLETON_PK)


def make_due(*due_seconds_ago: float) -> list[Message]:
    """Messages that fell due that many seconds ago each, in the order given (ids ascending)."""
    now = database_now()
    return [make_message(next_attempt_at=now - timedelta(seconds=ago)) for ago in due_seconds_ago]


def claim(batch_size: int) -> Claim:
    with transaction.atomic():
        return claim_batch(batch_size=batch_size)


# --- which messages a claim takes ---------------------------------------------


@pytest.mark.django_db
def test_claim_takes_the_earliest_due_first_not_the_lowest_id():
    latest, earliest, middle, second_earliest = make_due(10, 400, 100, 300)

    claimed = claim(3)

    assert claimed.message_ids == [earliest.pk, second_earliest.pk, middle.pk]
    assert Message.objects.get(pk=latest.pk).status == Status.UNSENT


@pytest.mark.django_db
def test_claim_orders_by_due_time_not_by_creation():
    # An old message whose retry is due later waits behind a new one that is due now.
    now = database_now()
    old_retrying = make_message(attempts=1, next_attempt_at=now - timedelta(seconds=5))
    Message.objects.filter(pk=old_retrying.pk).update(created_at=now - timedelta(hours=1))
    new = make_message(next_attempt_at=now - timedelta(seconds=60))

    assert claim(2).message_ids == [new.pk, old_retrying.pk]


@pytest.mark.django_db
def test_claim_ties_on_the_due_time_break_by_id():
    messages = [make_message() for _ in range(4)]
    Message.objects.update(next_attempt_at=database_now() - timedelta(minutes=1))

    assert claim(4).message_ids == sorted(m.pk for m in messages)


@pytest.mark.django_db
@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_claim_respects_batch_size(batch_size):
    make_due(*range(10, 0, -1))

    claimed = claim(batch_size)

    assert len(claimed.message_ids) == batch_size
    assert Message.objects.filter(status=Status.PROCESSING).count() == batch_size
    assert Message.objects.filter(status=Status.UNSENT).count() == 10 - batch_size


@pytest.mark.django_db
def test_claim_takes_only_unsent_and_leases_them_by_the_database_clock(settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "LEASE_SECONDS": 45}
    # The others fell due the earliest, so a claim that ignored status would take them first.
    long_ago = database_now() - timedelta(hours=1)
    others = {
        status: make_message(status=status, next_attempt_at=long_ago)
        for status in (Status.SENT, Status.FAILED, Status.PROCESSING)
    }
    unsent = make_due(30, 20)

    before = database_now()
    claimed = claim(10)
    after = database_now()

    assert claimed.message_ids == [m.pk for m in unsent]
    assert claimed.claim_token is not None
    for message in Message.objects.filter(pk__in=claimed.message_ids):
        assert message.status == Status.PROCESSING
        assert message.claim_token == claimed.claim_token
        assert before <= message.claimed_at <= after
        # One statement's clock: the lease is exactly LEASE_SECONDS from the claim.
        assert message.lease_expires_at == message.claimed_at + timedelta(seconds=45)
        assert message.sending_started_at is None  # claimed, not yet started by a worker
        assert message.attempts == 0
    for status, message in others.items():
        assert Message.objects.get(pk=message.pk).status == status


@pytest.mark.django_db
def test_claim_skips_messages_not_due_by_the_database_clock():
    later = make_message(next_attempt_at=database_now() + timedelta(minutes=5))
    due = make_due(1)[0]

    assert claim(10).message_ids == [due.pk]

    # Its time comes.
    Message.objects.filter(pk=later.pk).update(next_attempt_at=database_now() - timedelta(seconds=1))
    assert claim(10).message_ids == [later.pk]


@pytest.mark.django_db
def test_claim_with_nothing_unsent_returns_no_ids():
    make_message(status=Status.SENT)
    claimed = claim(5)
    assert claimed.message_ids == []
    assert claimed.chunks(2) == []


def test_a_claim_is_handed_out_in_chunks_in_order():
    ids = list(range(1, 8))
    assert Claim(claim_token=uuid.uuid4(), message_ids=ids).chunks(3) == [[1, 2, 3], [4, 5, 6], [7]]


# --- which tick runs ------------------------------------------------------------


@pytest.mark.django_db
def test_claim_tick_when_due_claims_a_batch_and_moves_the_schedule():
    due = database_now() - timedelta(seconds=1)
    set_state(running=True, batch_size=2, interval_seconds=5, next_tick_at=due)
    make_due(3, 2, 1)

    before = database_now()
    tick = claim_tick(due_only=True)
    after = database_now()

    assert tick is not None
    assert len(tick.message_ids) == 2
    state = get_state()
    assert before <= state.last_tick_at <= after
    # Phase kept: due 1 s ago, so the next is due 5 s after that one, not 5 s from now.
    assert state.next_tick_at == due + timedelta(seconds=5)


@pytest.mark.django_db
def test_claim_tick_not_due_returns_none_and_claims_nothing():
    due = database_now() + timedelta(seconds=30)
    set_state(running=True, next_tick_at=due, last_tick_at=None)
    make_message()

    assert claim_tick(due_only=True) is None

    state = get_state()
    assert state.next_tick_at == due
    assert state.last_tick_at is None
    assert Message.objects.filter(status=Status.UNSENT).count() == 1


@pytest.mark.django_db
def test_claim_tick_stopped_returns_none_even_when_not_due_only():
    set_state(running=False, next_tick_at=None)
    make_message()

    assert claim_tick(due_only=True) is None
    assert claim_tick(due_only=False) is None
    assert Message.objects.filter(status=Status.UNSENT).count() == 1


@pytest.mark.django_db
def test_claim_tick_even_if_stopped_claims_but_keeps_it_stopped():
    set_state(running=False, next_tick_at=None, batch_size=5)
    message = make_message()

    tick = claim_tick(due_only=False, even_if_stopped=True)

    assert tick is not None and tick.message_ids == [message.pk]
    state = get_state()
    assert state.running is False
    assert state.next_tick_at is None


@pytest.mark.django_db
def test_manual_claim_tick_ignores_due_time_and_leaves_the_schedule_alone():
    due = database_now() + timedelta(minutes=5)
    set_state(running=True, next_tick_at=due, batch_size=1)
    make_message()

    before = database_now()
    tick = claim_tick(due_only=False)

    assert tick is not None and len(tick.message_ids) == 1
    state = get_state()
    assert state.next_tick_at == due
    assert before <= state.last_tick_at <= database_now()


@pytest.mark.django_db
def test_claim_tick_with_an_empty_queue_still_counts_as_a_tick():
    due = database_now()
    set_state(running=True, next_tick_at=due, interval_seconds=2)
    tick = claim_tick(due_only=True)
    assert tick is not None and tick.message_ids == []
    assert get_state().next_tick_at == due + timedelta(seconds=2)


@pytest.mark.django_db
def test_claim_tick_without_a_state_row_recreates_it_running(settings):
    # Deploy = start: a missing state row is created running with the configured pace
    # (as `migrate` creates it), and its first tick is due at once.
    settings.DISPATCHER = {**settings.DISPATCHER, "INITIAL_BATCH_SIZE": 2, "INITIAL_INTERVAL_SECONDS": 60}
    DispatcherState.objects.all().delete()
    make_due(3, 2, 1)

    tick = claim_tick(due_only=True)

    assert tick is not None and len(tick.message_ids) == 2
    state = get_state()
    assert (state.running, state.batch_size, state.interval_seconds) == (True, 2, 60)
    assert claim_tick(due_only=True) is None  # the next tick is a minute away


def finish_in_flight() -> None:
    """The workers send what the ticks claimed (so the next tick is not held for room)."""
    Message.objects.filter(status=Status.PROCESSING).update(status=Status.SENT, claim_token=None)


@pytest.mark.django_db
def test_ticks_keep_their_phase_and_no_burst_follows_an_outage():
    set_state(running=True, batch_size=1, interval_seconds=10, next_tick_at=database_now() - timedelta(seconds=3))
    make_due(*range(30, 0, -1))

    # A tick taken a little late: the next one keeps the phase (due + interval, not now + interval).
    due = get_state().next_tick_at
    assert claim_tick(due_only=True) is not None
    finish_in_flight()
    assert get_state().next_tick_at == due + timedelta(seconds=10)
    assert claim_tick(due_only=True) is None

    # The cluster was away for ten intervals: one tick now, then the normal pace, no replay.
    # (The claims of the last interval, which the pace counts, are long gone by then.)
    set_state(next_tick_at=database_now() - timedelta(seconds=100), recent_claims=[])
    before = database_now()
    assert claim_tick(due_only=True) is not None
    after = database_now()
    finish_in_flight()
    next_due = get_state().next_tick_at
    assert before + timedelta(seconds=10) <= next_due <= after + timedelta(seconds=10)
    for _ in range(3):
        assert claim_tick(due_only=True) is None

    assert Message.objects.filter(status=Status.SENT).count() == 2


# --- a busy cluster holds the tick ------------------------------------------------


@pytest.mark.django_db
def test_a_due_tick_waits_while_a_whole_batch_is_still_in_flight():
    set_state(running=True, batch_size=3, interval_seconds=60, next_tick_at=database_now() - timedelta(seconds=1))
    make_due(*range(10, 0, -1))
    first = claim_tick(due_only=True)
    assert first is not None and len(first.message_ids) == 3
    assert messages_in_flight() == 3

    # The next tick falls due (an interval later: the first claim has left the pace's
    # window), but the three of the first are still being sent.
    due = database_now() - timedelta(seconds=1)
    set_state(next_tick_at=due, recent_claims=[])
    assert claim_tick(due_only=True) is None
    state = get_state()
    assert state.behind_since == due
    assert state.next_tick_at == due  # still due: taken as soon as there is room
    assert messages_in_flight() == 3

    # A manual tick is not held back by the pace.
    manual = claim_tick(due_only=False)
    assert manual is not None and len(manual.message_ids) == 3
    assert messages_in_flight() == 6

    # The first batch is done, but a whole batch is still in flight: still held.
    Message.objects.filter(pk__in=first.message_ids).update(status=Status.SENT, claim_token=None)
    assert claim_tick(due_only=True) is None
    assert get_state().behind_since == due

    # Room again (and the manual tick's claim an interval old).
    Message.objects.filter(pk=manual.message_ids[0]).update(status=Status.SENT, claim_token=None)
    set_state(recent_claims=[])
    second = claim_tick(due_only=True)
    assert second is not None and len(second.message_ids) == 3
    assert get_state().behind_since is None


@pytest.mark.django_db
def test_fewer_than_a_batch_in_flight_does_not_hold_the_tick():
    set_state(running=True, batch_size=3, next_tick_at=database_now() - timedelta(seconds=1))
    make_due(3, 2, 1)
    make_message(status=Status.PROCESSING)
    make_message(status=Status.PROCESSING)

    tick = claim_tick(due_only=True)

    assert tick is not None and len(tick.message_ids) == 3
    assert get_state().behind_since is None


# --- drains ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_claim_drain_batch_ignores_the_pace_but_not_a_stop():
    set_state(running=True, next_tick_at=database_now() + timedelta(hours=1), last_tick_at=None)
    make_due(3, 2, 1)

    drained = claim_drain_batch(batch_size=2)

    assert drained is not None and len(drained.message_ids) == 2
    assert get_state().last_tick_at is None  # a drain batch is no tick of the schedule
    set_state(running=False, next_tick_at=None)
    assert claim_drain_batch(batch_size=2) is None
    assert Message.objects.filter(status=Status.UNSENT).count() == 1


# --- concurrent claimers never share a message -------------------------------------

POOL_SIZE = 500


def _make_pool(n: int = POOL_SIZE) -> set[int]:
    Message.objects.bulk_create(
        [Message(recipient_phone_number=phone_number(), content=f"message {i}") for i in range(n)]
    )
    return set(Message.objects.values_list("id", flat=True))


def _assert_disjoint_cover(pool: set[int], claimed_by: list[list[int]]) -> None:
    sets = [set(ids) for ids in claimed_by]
    for ids, as_set in zip(claimed_by, sets, strict=True):
        assert len(ids) == len(as_set), "a claimer got the same message twice"
    for i, a in enumerate(sets):
        for b in sets[i + 1 :]:
            assert a.isdisjoint(b), f"shared messages: {sorted(a & b)[:10]}"
    assert set().union(*sets) == pool
    assert sum(len(s) for s in sets) == len(pool)
    # The claimers really ran side by side: each one got a share.
    assert all(sets), [len(s) for s in sets]
    assert Message.objects.filter(status=Status.PROCESSING).count() == len(pool)


def _run_claimer_threads(n_threads: int, claim_once) -> list[list[int]]:
    barrier = threading.Barrier(n_threads, timeout=10)
    results: list[list[int]] = [[] for _ in range(n_threads)]
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            connection.ensure_connection()  # each thread has its own connection
            barrier.wait()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                ids = claim_once()
                if ids is None:
                    break
                results[index].extend(ids)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not any(t.is_alive() for t in threads), "a claimer thread hung"
    assert not errors, errors
    return results


@pytest.mark.django_db(transaction=True)
def test_concurrent_claim_batch_threads_never_share_a_message():
    pool = _make_pool()

    def claim_once() -> list[int] | None:
        with transaction.atomic():
            ids = claim_batch(batch_size=7).message_ids
            if ids:
                time.sleep(0.002)  # hold the row locks so the others must skip them
        return ids or None

    _assert_disjoint_cover(pool, _run_claimer_threads(4, claim_once))


@pytest.mark.django_db(transaction=True)
def test_concurrent_claim_tick_threads_never_share_a_message():
    pool = _make_pool(200)
    set_state(running=True, batch_size=5)

    def claim_once() -> list[int] | None:
        tick = claim_tick(due_only=False)
        assert tick is not None
        return tick.message_ids or None

    _assert_disjoint_cover(pool, _run_claimer_threads(3, claim_once))


@pytest.mark.django_db(transaction=True)
def test_concurrent_claimer_processes_never_share_a_message(tmp_path):
    pool = _make_pool()
    go = tmp_path / "go"
    claimers = [start_claimer(tmp_path, f"claimer{i}", go_file=go, batch_size=5, hold=0.003) for i in range(2)]
    try:
        wait_for(
            lambda: all(ready.exists() or popen.poll() is not None for popen, ready in claimers),
            timeout=30,
            what="the claimer processes to connect",
        )
        go.touch()
        outputs = []
        for popen, _ in claimers:
            out, err = popen.communicate(timeout=60)
            assert popen.returncode == 0, err
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for popen, _ in claimers:
            if popen.poll() is None:
                popen.kill()
                popen.wait(5)
    _assert_disjoint_cover(pool, outputs)
