"""Claiming: which tick runs, and which messages it takes (real PostgreSQL, real concurrency)."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from dispatcher.engine.claiming import claim_batch, claim_tick, next_tick_after
from dispatcher.models import DispatcherState
from messages_app.models import Message
from tests.factories import make_message, phone_number
from tests.processes import start_claimer, wait_for

Status = Message.Status


def set_state(**fields) -> None:
    assert DispatcherState.objects.filter(pk=DispatcherState.SINGLETON_PK).update(**fields) == 1


def get_state() -> DispatcherState:
    return DispatcherState.objects.get(pk=DispatcherState.SINGLETON_PK)


def make_aged(*ages_seconds: int) -> list[Message]:
    """Messages created `age` seconds ago each, in the order given (ids ascending)."""
    now = timezone.now()
    messages = []
    for age in ages_seconds:
        message = make_message()
        Message.objects.filter(pk=message.pk).update(created_at=now - timedelta(seconds=age))
        messages.append(message)
    return messages


# --- which messages a claim takes ---------------------------------------------


@pytest.mark.django_db
def test_claim_takes_oldest_created_first_not_lowest_id():
    newest, oldest, middle, second_oldest = make_aged(10, 400, 100, 300)
    with transaction.atomic():
        claimed = claim_batch(batch_size=3, now=timezone.now())
    assert [m.pk for m in claimed] == [oldest.pk, second_oldest.pk, middle.pk]
    assert Message.objects.get(pk=newest.pk).status == Status.UNSENT


@pytest.mark.django_db
def test_claim_ties_on_created_at_break_by_id():
    messages = [make_message() for _ in range(4)]
    same = timezone.now() - timedelta(minutes=1)
    Message.objects.update(created_at=same)
    with transaction.atomic():
        claimed = claim_batch(batch_size=4, now=timezone.now())
    assert [m.pk for m in claimed] == sorted(m.pk for m in messages)


@pytest.mark.django_db
@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_claim_respects_batch_size(batch_size):
    make_aged(*range(10, 0, -1))
    with transaction.atomic():
        claimed = claim_batch(batch_size=batch_size, now=timezone.now())
    assert len(claimed) == batch_size
    assert Message.objects.filter(status=Status.PROCESSING).count() == batch_size
    assert Message.objects.filter(status=Status.UNSENT).count() == 10 - batch_size


@pytest.mark.django_db
def test_claim_takes_only_unsent_and_marks_them_processing_with_claimed_at():
    # The non-unsent ones are the oldest, so a claim that ignored status would take them first.
    now = timezone.now()
    others = {status: make_message(status=status) for status in (Status.SENT, Status.FAILED, Status.PROCESSING)}
    Message.objects.filter(pk__in=[m.pk for m in others.values()]).update(created_at=now - timedelta(hours=1))
    unsent = make_aged(30, 20)

    claim_now = timezone.now()
    with transaction.atomic():
        claimed = claim_batch(batch_size=10, now=claim_now)

    assert {m.pk for m in claimed} == {m.pk for m in unsent}
    for message in claimed:  # the returned objects are fresh, not stale copies
        assert message.status == Status.PROCESSING
        assert message.claimed_at == claim_now
    for message in Message.objects.filter(pk__in=[m.pk for m in unsent]):
        assert message.status == Status.PROCESSING
        assert message.claimed_at == claim_now
        assert message.attempts == 0
    for status, message in others.items():
        assert Message.objects.get(pk=message.pk).status == status


@pytest.mark.django_db
def test_claim_with_nothing_unsent_returns_empty():
    make_message(status=Status.SENT)
    with transaction.atomic():
        assert claim_batch(batch_size=5, now=timezone.now()) == []


# --- which tick runs ------------------------------------------------------------


@pytest.mark.django_db
def test_claim_tick_when_due_claims_a_batch_and_moves_the_schedule():
    now = timezone.now()
    set_state(running=True, batch_size=2, interval_seconds=5, next_tick_at=now - timedelta(seconds=1))
    make_aged(3, 2, 1)

    tick = claim_tick(now=now, due_only=True)

    assert tick is not None
    assert (tick.batch_size, tick.interval_seconds) == (2, 5)
    assert len(tick.messages) == 2
    state = get_state()
    assert state.last_tick_at == now
    # Phase kept: due 1 s ago, so the next is 4 s from now, not 5.
    assert state.next_tick_at == now + timedelta(seconds=4)


@pytest.mark.django_db
def test_claim_tick_not_due_returns_none_and_claims_nothing():
    now = timezone.now()
    due = now + timedelta(seconds=3)
    set_state(running=True, next_tick_at=due, last_tick_at=None)
    make_message()

    assert claim_tick(now=now, due_only=True) is None

    state = get_state()
    assert state.next_tick_at == due
    assert state.last_tick_at is None
    assert Message.objects.filter(status=Status.UNSENT).count() == 1


@pytest.mark.django_db
def test_claim_tick_stopped_returns_none_even_when_not_due_only():
    set_state(running=False, next_tick_at=None)
    make_message()
    now = timezone.now()

    assert claim_tick(now=now, due_only=True) is None
    assert claim_tick(now=now, due_only=False) is None
    assert Message.objects.filter(status=Status.UNSENT).count() == 1


@pytest.mark.django_db
def test_claim_tick_even_if_stopped_claims_but_keeps_it_stopped():
    set_state(running=False, next_tick_at=None, batch_size=5)
    make_message()
    now = timezone.now()

    tick = claim_tick(now=now, due_only=False, even_if_stopped=True)

    assert tick is not None and len(tick.messages) == 1
    state = get_state()
    assert state.running is False
    assert state.next_tick_at is None


@pytest.mark.django_db
def test_manual_claim_tick_ignores_due_time_and_leaves_the_schedule_alone():
    now = timezone.now()
    due = now + timedelta(minutes=5)
    set_state(running=True, next_tick_at=due, batch_size=1)
    make_message()

    tick = claim_tick(now=now, due_only=False)

    assert tick is not None and len(tick.messages) == 1
    state = get_state()
    assert state.next_tick_at == due
    assert state.last_tick_at == now


@pytest.mark.django_db
def test_claim_tick_with_an_empty_queue_still_counts_as_a_tick():
    now = timezone.now()
    set_state(running=True, next_tick_at=now, interval_seconds=2)
    tick = claim_tick(now=now, due_only=True)
    assert tick is not None and tick.messages == []
    assert get_state().next_tick_at == now + timedelta(seconds=2)


@pytest.mark.django_db
def test_claim_tick_without_a_state_row_returns_none():
    DispatcherState.objects.all().delete()
    make_message()
    assert claim_tick(now=timezone.now(), due_only=True) is None
    assert claim_tick(now=timezone.now(), due_only=False) is None


# --- when the next tick is due ----------------------------------------------------


T0 = timezone.now().replace(microsecond=0)


@pytest.mark.parametrize(
    ("late_by", "expected_from_t0"),
    [
        (timedelta(0), timedelta(seconds=10)),  # on time
        (timedelta(seconds=3), timedelta(seconds=10)),  # late: the phase is kept, not pushed back
        (timedelta(seconds=9, milliseconds=999), timedelta(seconds=10)),
    ],
)
def test_next_tick_after_keeps_the_phase(late_by, expected_from_t0):
    assert next_tick_after(scheduled_at=T0, interval_seconds=10, now=T0 + late_by) == T0 + expected_from_t0


@pytest.mark.parametrize("late_by", [timedelta(seconds=10), timedelta(seconds=25), timedelta(hours=3)])
def test_next_tick_after_skips_missed_ticks(late_by):
    now = T0 + late_by
    assert next_tick_after(scheduled_at=T0, interval_seconds=10, now=now) == now + timedelta(seconds=10)


def test_next_tick_after_the_first_tick():
    assert next_tick_after(scheduled_at=None, interval_seconds=7, now=T0) == T0 + timedelta(seconds=7)


@pytest.mark.django_db
def test_ticks_keep_their_phase_and_no_burst_follows_an_outage():
    start = timezone.now()
    set_state(running=True, batch_size=1, interval_seconds=1, next_tick_at=start)
    make_aged(*range(30, 0, -1))

    def tick_at(offset: float):
        return claim_tick(now=start + timedelta(seconds=offset), due_only=True)

    # Ticks run a little late each time; the schedule still advances by whole intervals.
    for offset in (0.2, 1.3, 2.1, 3.4):
        assert tick_at(offset) is not None, offset
    assert get_state().next_tick_at == start + timedelta(seconds=4)
    assert tick_at(3.9) is None

    # The cluster was away for ~10 intervals: one tick now, then the normal pace, no replay.
    assert tick_at(14.5) is not None
    assert get_state().next_tick_at == start + timedelta(seconds=15.5)
    for offset in (14.6, 14.9, 15.0, 15.4):
        assert tick_at(offset) is None, offset
    assert tick_at(15.5) is not None

    assert Message.objects.filter(status=Status.PROCESSING).count() == 6


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
            ids = [m.pk for m in claim_batch(batch_size=7, now=timezone.now())]
            if ids:
                time.sleep(0.002)  # hold the row locks so the others must skip them
        return ids or None

    _assert_disjoint_cover(pool, _run_claimer_threads(4, claim_once))


@pytest.mark.django_db(transaction=True)
def test_concurrent_claim_tick_threads_never_share_a_message():
    pool = _make_pool(200)
    set_state(running=True, batch_size=5)

    def claim_once() -> list[int] | None:
        tick = claim_tick(now=timezone.now(), due_only=False)
        assert tick is not None
        return [m.pk for m in tick.messages] or None

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
