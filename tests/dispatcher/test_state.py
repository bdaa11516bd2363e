"""The dispatcher's one state row: created running at deploy, start/stop, pace, and stop vs. claim."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import connection, transaction
from django_q.conf import Conf
from django_q.models import OrmQ, Schedule

from dispatcher.apps import _ensure_dispatcher_running
from dispatcher.conf import dispatcher_settings
from dispatcher.engine.claiming import claim_tick
from dispatcher.errors import DispatcherConfigError
from dispatcher.models import MAX_BATCH_SIZE, MAX_INTERVAL_SECONDS, DispatcherState
from dispatcher.schedule import DISPATCH_SCHEDULE_NAME, DISPATCH_WINDOW_TASK
from dispatcher.state import (
    TICK_UNTAKEN_AFTER,
    dispatcher_behind_seconds,
    dispatcher_configure,
    dispatcher_pace_check,
    dispatcher_start,
    dispatcher_state_read,
    dispatcher_status,
    dispatcher_stop,
    dispatcher_tick_take,
    dispatcher_window_open,
    next_tick_after,
)
from messages_app.models import Message
from messages_app.transitions import database_now
from tests.factories import make_message
from tests.processes import wait_for

Status = Message.Status


def get_state() -> DispatcherState:
    return DispatcherState.objects.get(pk=DispatcherState.SINGLETON_PK)


def set_state(**fields) -> None:
    assert DispatcherState.objects.filter(pk=DispatcherState.SINGLETON_PK).update(**fields) == 1


def run_post_migrate_handler() -> None:
    _ensure_dispatcher_running(sender=apps.get_app_config("dispatcher"), using="default")


def window_tasks() -> list[dict]:
    return [task.task for task in OrmQ.objects.all() if task.func() == DISPATCH_WINDOW_TASK]


# --- deploy = start ---------------------------------------------------------------


@pytest.mark.django_db
def test_migrate_left_a_running_dispatcher_with_the_configured_pace():
    # Nothing in this test created it: the test database was migrated, which is all a deploy does.
    state = get_state()
    conf = dispatcher_settings()
    assert state.running is True
    assert state.batch_size == conf.initial_batch_size
    assert state.interval_seconds == conf.initial_interval_seconds
    assert state.next_tick_at is not None
    assert DispatcherState.objects.count() == 1


@pytest.mark.django_db
def test_migrate_left_the_every_minute_schedule():
    schedule = Schedule.objects.get(name=DISPATCH_SCHEDULE_NAME)
    assert schedule.func == DISPATCH_WINDOW_TASK == "dispatcher.tasks.dispatch_window"
    assert schedule.schedule_type == Schedule.MINUTES
    assert schedule.minutes == 1
    assert schedule.repeats == -1
    assert Schedule.objects.filter(func=DISPATCH_WINDOW_TASK).count() == 1


@pytest.mark.django_db
def test_post_migrate_handler_creates_what_is_missing_with_the_env_pace(settings):
    DispatcherState.objects.all().delete()
    Schedule.objects.filter(name=DISPATCH_SCHEDULE_NAME).delete()
    settings.DISPATCHER = {**settings.DISPATCHER, "INITIAL_BATCH_SIZE": 7, "INITIAL_INTERVAL_SECONDS": 33}
    before = database_now()

    run_post_migrate_handler()

    state = get_state()
    assert (state.running, state.batch_size, state.interval_seconds) == (True, 7, 33)
    assert before <= state.next_tick_at <= database_now()  # the first tick is due at once
    schedule = Schedule.objects.get(name=DISPATCH_SCHEDULE_NAME, func=DISPATCH_WINDOW_TASK)
    assert before <= schedule.next_run <= database_now()  # due at once, by the database's clock


@pytest.mark.django_db
def test_post_migrate_handler_keeps_a_stopped_dispatcher_stopped_and_its_pace(settings):
    dispatcher_configure(batch_size=9, interval_seconds=45)
    dispatcher_stop()
    schedule = Schedule.objects.get(name=DISPATCH_SCHEDULE_NAME)
    Schedule.objects.filter(pk=schedule.pk).update(minutes=1, repeats=-1)
    settings.DISPATCHER = {**settings.DISPATCHER, "INITIAL_BATCH_SIZE": 3, "INITIAL_INTERVAL_SECONDS": 5}

    run_post_migrate_handler()
    run_post_migrate_handler()

    state = get_state()
    assert (state.running, state.batch_size, state.interval_seconds, state.next_tick_at) == (False, 9, 45, None)
    assert list(Schedule.objects.filter(name=DISPATCH_SCHEDULE_NAME).values_list("pk", flat=True)) == [schedule.pk]


@pytest.mark.django_db(transaction=True)
def test_migrating_again_does_not_restart_or_duplicate():
    dispatcher_stop()

    call_command("migrate", verbosity=0, interactive=False)

    assert get_state().running is False
    assert Schedule.objects.filter(name=DISPATCH_SCHEDULE_NAME).count() == 1


# --- start / stop -----------------------------------------------------------------


@pytest.mark.django_db
def test_stop_is_idempotent():
    first = dispatcher_stop()
    assert first.running is False
    stopped_at = get_state().updated_at

    second = dispatcher_stop()

    assert second.running is False
    state = get_state()
    assert state.running is False and state.next_tick_at is None
    assert state.updated_at == stopped_at  # the second stop wrote nothing


@pytest.fixture
def queued_tasks(monkeypatch):
    """django-q2 queues tasks instead of running them in the test process (a dispatch
    window run here would pace ticks for a whole window)."""
    monkeypatch.setattr(Conf, "SYNC", False)


@pytest.mark.django_db
def test_start_from_stopped_makes_the_first_tick_due_now_and_starts_a_window(
    queued_tasks, django_capture_on_commit_callbacks
):
    dispatcher_stop()
    OrmQ.objects.all().delete()
    before = database_now()

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        state = dispatcher_start()

    assert state.running is True
    assert before <= get_state().next_tick_at <= database_now()
    assert len(callbacks) == 1
    assert [t["func"] for t in window_tasks()] == [DISPATCH_WINDOW_TASK]


@pytest.mark.django_db
def test_start_when_running_changes_nothing(queued_tasks, django_capture_on_commit_callbacks):
    due = database_now() + timedelta(seconds=50)
    set_state(running=True, next_tick_at=due)
    OrmQ.objects.all().delete()

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        dispatcher_start()
        dispatcher_start()

    assert get_state().next_tick_at == due  # not pulled forward: no extra tick
    assert callbacks == []
    assert window_tasks() == []


@pytest.mark.django_db
def test_start_and_stop_create_a_missing_state_row():
    DispatcherState.objects.all().delete()
    assert dispatcher_stop().running is False
    DispatcherState.objects.all().delete()
    assert dispatcher_start().running is True
    assert DispatcherState.objects.count() == 1


# --- pace ---------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -3}, "batch_size"),
        ({"batch_size": MAX_BATCH_SIZE + 1}, "batch_size"),
        ({"interval_seconds": 0}, "interval_seconds"),
        ({"interval_seconds": MAX_INTERVAL_SECONDS + 1}, "interval_seconds"),
        ({"batch_size": 5, "interval_seconds": 0}, "interval_seconds"),  # nothing applied, not half
    ],
)
def test_configure_rejects_out_of_range_values(kwargs, field):
    before = get_state()
    with pytest.raises(DispatcherConfigError) as raised:
        dispatcher_configure(**kwargs)
    assert raised.value.field == field
    assert raised.value.message
    after = get_state()
    assert (after.batch_size, after.interval_seconds, after.next_tick_at) == (
        before.batch_size,
        before.interval_seconds,
        before.next_tick_at,
    )


@pytest.mark.django_db
def test_configure_accepts_the_limits():
    dispatcher_configure(batch_size=1, interval_seconds=1)
    assert (get_state().batch_size, get_state().interval_seconds) == (1, 1)
    dispatcher_configure(batch_size=MAX_BATCH_SIZE, interval_seconds=MAX_INTERVAL_SECONDS)
    assert (get_state().batch_size, get_state().interval_seconds) == (MAX_BATCH_SIZE, MAX_INTERVAL_SECONDS)


@pytest.mark.django_db
def test_changing_the_interval_counts_from_the_last_tick():
    last = database_now() - timedelta(seconds=20)
    set_state(running=True, interval_seconds=120, last_tick_at=last, next_tick_at=last + timedelta(seconds=120))

    state = dispatcher_configure(interval_seconds=30)

    assert state.next_tick_at == last + timedelta(seconds=30)
    assert get_state().next_tick_at == last + timedelta(seconds=30)
    assert get_state().interval_seconds == 30


@pytest.mark.django_db
def test_changing_the_interval_before_any_tick_counts_from_now():
    set_state(running=True, interval_seconds=120, last_tick_at=None)
    before = database_now()
    dispatcher_configure(interval_seconds=10)
    due = get_state().next_tick_at
    assert before + timedelta(seconds=10) <= due <= database_now() + timedelta(seconds=10)


@pytest.mark.django_db
def test_changing_only_the_batch_size_leaves_the_schedule_alone():
    last = database_now() - timedelta(seconds=5)
    due = last + timedelta(seconds=60)
    set_state(running=True, interval_seconds=60, last_tick_at=last, next_tick_at=due)

    dispatcher_configure(batch_size=25)
    dispatcher_configure(interval_seconds=60)  # the same interval is no change either

    state = get_state()
    assert (state.batch_size, state.interval_seconds, state.next_tick_at) == (25, 60, due)


@pytest.mark.django_db
def test_changing_the_interval_while_stopped_does_not_schedule_a_tick():
    dispatcher_stop()
    set_state(last_tick_at=database_now() - timedelta(hours=1))
    make_message()
    dispatcher_configure(interval_seconds=15)
    state = get_state()
    assert state.interval_seconds == 15
    assert state.next_tick_at is None
    assert claim_tick(due_only=True) is None
    assert Message.objects.filter(status=Status.UNSENT).count() == 1


# --- stop waits for an in-progress claim ------------------------------------------


def _waiting_on_locks() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_stop_waits_for_an_in_progress_claim_and_no_claim_follows_it():
    set_state(running=True, batch_size=2, next_tick_at=database_now())
    messages = [make_message() for _ in range(6)]

    claim_open = threading.Event()
    let_claim_commit = threading.Event()
    timeline: dict[str, float] = {}
    results: dict[str, object] = {}
    errors: list[BaseException] = []

    def in_thread(name, body):
        def run():
            try:
                results[name] = body()
            except BaseException as exc:
                errors.append(exc)
            finally:
                timeline[f"{name} done"] = time.monotonic()
                connection.close()

        thread = threading.Thread(target=run, name=name)
        thread.start()
        return thread

    def slow_claim():
        # claim_tick inside an outer transaction: its row lock lasts until we commit.
        with transaction.atomic():
            tick = claim_tick(due_only=True)
            claim_open.set()
            assert let_claim_commit.wait(20)
            timeline["claim committing"] = time.monotonic()
        return tick

    claimer = in_thread("claim", slow_claim)
    assert claim_open.wait(10)
    stopper = in_thread("stop", dispatcher_stop)
    wait_for(lambda: _waiting_on_locks() >= 1, timeout=10, what="stop to wait for the claim's row lock")
    # A claim that comes after stop began waits for the row too.
    late_claimer = in_thread("late claim", lambda: claim_tick(due_only=False))
    wait_for(lambda: _waiting_on_locks() >= 2, timeout=10, what="the late claim to queue up")
    time.sleep(0.3)
    assert stopper.is_alive(), "stop returned while a claim held the state row"

    let_claim_commit.set()
    for thread in (claimer, stopper, late_claimer):
        thread.join(20)
        assert not thread.is_alive()
    assert not errors, errors

    assert timeline["stop done"] > timeline["claim committing"]
    tick = results["claim"]
    assert tick is not None and tick.message_ids == [messages[0].pk, messages[1].pk]
    late = results["late claim"]
    if late is not None:
        # PostgreSQL does not hand a row lock to its waiters in order once the holder has updated
        # the row: each follows the row to its new version and the late claim may lock that first.
        # It then went before the stop, which saw its tick under the lock: stop returned after it.
        late_claimed_at = Message.objects.get(pk=late.message_ids[0]).claimed_at
        assert results["stop"].last_tick_at == late_claimed_at
    assert get_state().running is False

    # After stop returned, nothing claims any more, however overdue a tick would be.
    set_state(next_tick_at=database_now() - timedelta(hours=1))
    Message.objects.filter(status=Status.PROCESSING).update(status=Status.SENT)  # room for a tick
    assert claim_tick(due_only=True) is None
    assert claim_tick(due_only=False) is None
    claimed = 2 + (len(late.message_ids) if late is not None else 0)
    assert Message.objects.filter(status=Status.SENT).count() == claimed
    assert Message.objects.filter(status=Status.UNSENT).count() == 6 - claimed


# --- when the next tick is due ----------------------------------------------------

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


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


# --- taking a tick, and falling behind ------------------------------------------------


def take(**kwargs):
    with transaction.atomic():
        return dispatcher_tick_take(**kwargs)


@pytest.mark.django_db
def test_taking_a_due_tick_stamps_it_by_the_database_clock():
    due = database_now() - timedelta(seconds=2)
    set_state(running=True, batch_size=4, interval_seconds=30, next_tick_at=due, last_tick_at=None)

    before = database_now()
    tick = take(due_only=True)
    after = database_now()

    assert tick is not None
    assert (tick.batch_size, tick.interval_seconds) == (4, 30)
    assert before <= tick.now <= after
    state = get_state()
    assert state.last_tick_at == tick.now
    assert state.next_tick_at == due + timedelta(seconds=30)
    assert take(due_only=True) is None  # the next one is not due yet


@pytest.mark.django_db
def test_a_due_tick_is_held_while_a_whole_batch_is_in_flight(caplog):
    due = database_now() - timedelta(seconds=2)
    set_state(running=True, batch_size=5, interval_seconds=60, next_tick_at=due, last_tick_at=None)

    assert take(due_only=True, in_flight=5) is None
    assert take(due_only=True, in_flight=7) is None

    state = get_state()
    assert state.behind_since == due  # behind since the held tick fell due
    assert state.next_tick_at == due  # still due
    assert state.last_tick_at is None
    # Warned once when it fell behind, not on every look.
    assert sum("behind its pace" in r.getMessage() for r in caplog.records) == 1

    status = dispatcher_status()
    assert status.pace_held is False
    assert status.behind_since == due
    assert status.behind_seconds >= 2

    # A manual tick takes no notice of the pace, and leaves the record of it alone.
    assert take(due_only=False, in_flight=7) is not None
    assert get_state().behind_since == due

    assert take(due_only=True, in_flight=4) is not None
    assert get_state().behind_since is None
    assert any("back on pace" in r.getMessage() for r in caplog.records)
    status = dispatcher_status()
    assert (status.pace_held, status.behind_since, status.behind_seconds) == (True, None, 0.0)


@pytest.mark.django_db
def test_the_tick_after_a_held_one_is_counted_from_when_it_was_taken():
    set_state(running=True, batch_size=5, interval_seconds=60, next_tick_at=database_now() - timedelta(seconds=20))
    assert take(due_only=True, in_flight=5) is None

    tick = take(due_only=True, in_flight=0)

    assert tick is not None
    assert get_state().next_tick_at == tick.now + timedelta(seconds=60)


@pytest.mark.django_db
def test_a_tick_not_due_is_not_held_or_marked_behind():
    set_state(running=True, batch_size=5, next_tick_at=database_now() + timedelta(minutes=1))
    assert take(due_only=True, in_flight=50) is None
    assert get_state().behind_since is None


@pytest.mark.django_db
def test_stop_and_start_forget_that_the_cluster_was_behind(queued_tasks):
    set_state(running=True, batch_size=5, next_tick_at=database_now() - timedelta(seconds=1))
    assert take(due_only=True, in_flight=5) is None
    assert get_state().behind_since is not None

    dispatcher_stop()
    assert get_state().behind_since is None
    status = dispatcher_status()
    assert (status.running, status.next_tick_at, status.behind_since, status.behind_seconds) == (False, None, None, 0.0)

    set_state(behind_since=database_now())  # a stale record left behind
    dispatcher_start()
    assert get_state().behind_since is None


@pytest.mark.django_db
def test_a_stopped_dispatcher_gives_no_tick_unless_asked_to():
    set_state(running=False, next_tick_at=None, last_tick_at=None)
    assert take(due_only=True) is None
    assert take(due_only=False) is None
    tick = take(due_only=False, even_if_stopped=True)
    assert tick is not None
    state = get_state()
    assert (state.running, state.next_tick_at, state.last_tick_at) == (False, None, tick.now)


# --- reads ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_status_counts_the_messages_and_hides_the_schedule_while_stopped():
    make_message()
    make_message(status=Status.SENT)
    make_message(status=Status.SENT, delivery_cache_pending=True)
    due = database_now() + timedelta(seconds=40)
    set_state(running=True, batch_size=3, interval_seconds=40, next_tick_at=due)

    status = dispatcher_status()

    assert (status.running, status.batch_size, status.interval_seconds, status.next_tick_at) == (True, 3, 40, due)
    assert status.counts[Status.UNSENT] == 1 and status.counts[Status.SENT] == 2
    assert status.delivery_cache_pending == 1
    assert status.pace_held is True

    set_state(running=False)
    assert dispatcher_status().next_tick_at is None


@pytest.mark.django_db
def test_a_due_tick_no_window_has_taken_shows_the_pace_as_not_held():
    # No window takes ticks (the qcluster that ran them left, or the schedule starts none), so
    # dispatcher_tick_take never runs to record that the cluster is behind: the tick just stays due.
    due = database_now() - timedelta(minutes=4)
    set_state(running=True, batch_size=5, interval_seconds=1, next_tick_at=due, behind_since=None)

    status = dispatcher_status()

    assert status.pace_held is False
    assert status.tick_untaken is True
    assert status.behind_since == due
    assert 240 <= status.behind_seconds <= 300
    assert 240 <= dispatcher_behind_seconds() <= 300

    # A window takes the tick: on pace again.
    assert take(due_only=True) is not None
    status = dispatcher_status()
    assert (status.pace_held, status.tick_untaken, status.behind_seconds) == (True, False, 0.0)


@pytest.mark.django_db
def test_a_tick_just_due_or_held_for_a_batch_is_not_counted_as_untaken():
    # Due a moment ago: a pacing window is about to take it.
    set_state(running=True, next_tick_at=database_now() - TICK_UNTAKEN_AFTER / 2, behind_since=None)
    assert dispatcher_status().pace_held is True
    assert dispatcher_behind_seconds() == 0.0
    # Held for a batch in flight: behind since the tick fell due, for that reason.
    due = database_now() - timedelta(minutes=1)
    set_state(next_tick_at=due, behind_since=due)
    status = dispatcher_status()
    assert (status.pace_held, status.tick_untaken, status.behind_since) == (False, False, due)
    # Stopped: nothing is due, nothing is behind.
    set_state(running=False)
    status = dispatcher_status()
    assert (status.pace_held, status.tick_untaken, status.behind_seconds) == (True, False, 0.0)
    assert dispatcher_behind_seconds() == 0.0


@pytest.mark.django_db
def test_pace_check_says_how_long_until_the_tick_by_the_database_clock():
    set_state(running=True, next_tick_at=database_now() + timedelta(seconds=30))
    window = uuid.uuid4()
    dispatcher_window_open(window_id=window)

    pace = dispatcher_pace_check()

    assert pace.running is True and pace.window_id == window
    assert 29 <= pace.due_in_seconds <= 30
    set_state(next_tick_at=database_now() - timedelta(seconds=5))
    assert dispatcher_pace_check().due_in_seconds <= -5
    set_state(running=False, next_tick_at=None)
    assert (dispatcher_pace_check().running, dispatcher_pace_check().due_in_seconds) == (False, 0.0)


@pytest.mark.django_db
def test_pace_check_and_read_without_a_state_row_write_nothing(settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "INITIAL_BATCH_SIZE": 4, "INITIAL_INTERVAL_SECONDS": 9}
    DispatcherState.objects.all().delete()

    assert dispatcher_pace_check() is None
    state = dispatcher_state_read()
    assert (state.running, state.batch_size, state.interval_seconds) == (True, 4, 9)
    assert not DispatcherState.objects.exists()


# --- the pace as a budget ------------------------------------------------------------------


def claims_ago(*seconds_and_counts) -> list:
    now = database_now().timestamp()
    return [[now - ago, count] for ago, count in seconds_and_counts]


@pytest.mark.django_db
def test_a_due_tick_takes_only_what_the_last_interval_left_of_the_pace():
    set_state(
        running=True, batch_size=5, interval_seconds=10, next_tick_at=database_now(), recent_claims=claims_ago((4, 2))
    )
    tick = take(due_only=True)
    assert tick is not None and tick.budget == 3


@pytest.mark.django_db
def test_a_due_tick_waits_while_the_last_interval_used_the_pace():
    set_state(
        running=True, batch_size=5, interval_seconds=10, next_tick_at=database_now(), recent_claims=claims_ago((9.5, 5))
    )
    assert take(due_only=True) is None
    assert get_state().behind_since is None  # waiting for the budget is not falling behind
    pace = dispatcher_pace_check()
    assert pace.budget_left == 0
    assert 0 < pace.budget_frees_in_seconds <= 0.5
    time.sleep(pace.budget_frees_in_seconds + 0.01)
    assert take(due_only=True).budget == 5  # a claim exactly an interval old has left the window


@pytest.mark.django_db
def test_a_wake_claims_the_budget_left_and_records_it():
    from dispatcher.engine.claiming import claim_wake

    set_state(running=True, batch_size=3, interval_seconds=60, next_tick_at=database_now() + timedelta(seconds=60))
    for _ in range(5):
        make_message()

    first = claim_wake()
    assert len(first.message_ids) == 3
    assert claim_wake() is None  # the pace is used for the next minute
    assert sum(count for _at, count in get_state().recent_claims) == 3
    assert get_state().next_tick_at > database_now()  # the ticks' schedule is left alone

    set_state(running=False)
    set_state(recent_claims=[])
    assert claim_wake() is None  # stopped


# --- a lost dispatch window is replaced --------------------------------------------


@pytest.mark.django_db
def test_a_window_that_stops_saying_it_is_alive_is_replaced_once_by_one_scheduler_pass():
    from dispatcher.engine.pacing import dispatch_window_revive
    from dispatcher.state import WINDOW_LOST_AFTER, dispatcher_window_alive, dispatcher_window_open

    OrmQ.objects.all().delete()
    set_state(running=True)
    window = uuid.uuid4()
    dispatcher_window_open(window_id=window)
    assert dispatch_window_revive() is False  # it opened just now
    assert dispatcher_window_alive(window_id=window) is True
    assert dispatcher_window_alive(window_id=uuid.uuid4()) is False  # not the one that paces

    # Silent for longer than WINDOW_LOST_AFTER (its qcluster died): the first pass asks for one
    # window, the passes of the other qclusters that follow do not ask again.
    set_state(window_seen_at=database_now() - WINDOW_LOST_AFTER - timedelta(seconds=1))
    assert dispatch_window_revive() is True
    assert dispatch_window_revive() is False
    assert len(window_tasks()) == 1

    # Stopped: no window is wanted, however long none was seen.
    OrmQ.objects.all().delete()
    set_state(running=False, window_seen_at=None)
    assert dispatch_window_revive() is False
    assert window_tasks() == []


# Committed for real: the window's loop closes obsolete connections each turn, which inside a
# test's transaction closes the test's own (it passed only when the machine was slow enough for
# the 0.01 s to run out before the loop's first turn).
@pytest.mark.django_db(transaction=True)
def test_a_window_ending_without_a_successor_is_replaced_at_the_next_pass():
    from dispatcher.engine.pacing import dispatch_window_revive, run_dispatch_window

    OrmQ.objects.all().delete()
    set_state(running=True)
    run_dispatch_window(window_seconds=0.01)  # its time is up, and no newer window took over
    assert get_state().window_seen_at is None
    assert dispatch_window_revive() is True
    assert len(window_tasks()) == 1
