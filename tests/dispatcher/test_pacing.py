"""Dispatch windows: pacing ticks in real time against real PostgreSQL (locmem provider)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from dispatcher.engine.pacing import run_dispatch_window
from dispatcher.engine.providers import BaseProvider, ProviderResult, locmem
from dispatcher.models import DispatcherState
from dispatcher.state import dispatcher_stop
from messages_app.models import Message
from tests.factories import phone_number
from tests.processes import wait_for

Status = Message.Status

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def one_a_second(settings, tasks_run_inline):
    # The window hands each tick out as chunk tasks; run inline, they are sent at once.
    settings.DISPATCHER = {**settings.DISPATCHER, "PROVIDER_BACKEND": "locmem"}
    DispatcherState.objects.filter(pk=DispatcherState.SINGLETON_PK).update(
        running=True, batch_size=1, interval_seconds=1, next_tick_at=timezone.now(), last_tick_at=None
    )


def make_messages(n: int) -> None:
    Message.objects.bulk_create([Message(recipient_phone_number=phone_number(), content=f"m{i}") for i in range(n)])


def never_stop() -> bool:
    return False


class WindowThread(threading.Thread):
    """run_dispatch_window in a thread with its own database connection."""

    def __init__(self, **kwargs) -> None:
        super().__init__(daemon=True)
        kwargs.setdefault("should_stop", never_stop)
        self.kwargs = kwargs
        self.ticks: int | None = None
        self.error: BaseException | None = None
        self.started_at = self.ended_at = 0.0

    def run(self) -> None:
        self.started_at = time.monotonic()
        try:
            self.ticks = run_dispatch_window(**self.kwargs)
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended_at = time.monotonic()
            connection.close()

    def finish(self, timeout: float) -> int:
        self.join(timeout)
        assert not self.is_alive(), f"the window did not end within {timeout} s"
        assert self.error is None, self.error
        return self.ticks


def closing_reason(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "closed after" in r.getMessage()]


def test_a_window_ticks_once_per_interval(caplog):
    make_messages(20)
    started = time.monotonic()

    ticks = run_dispatch_window(window_seconds=4, should_stop=never_stop)

    elapsed = time.monotonic() - started
    assert 3.9 <= elapsed < 5.5
    assert 3 <= ticks <= 5
    assert len(locmem.outbox) == ticks  # one message per tick
    assert Message.objects.filter(status=Status.SENT).count() == ticks
    assert Message.objects.filter(status=Status.PROCESSING).count() == 0
    # sent oldest first, taken about a second apart: judged by when each tick claimed its message
    # (sent_at also carries how soon the send went), and a tick taken late on a loaded machine is
    # followed by one on the schedule, so a gap may be short by that lateness, never a burst's ~0
    sent = list(Message.objects.filter(status=Status.SENT).order_by("claimed_at"))
    assert [m.pk for m in sent] == sorted(m.pk for m in sent)
    gaps = [(b.claimed_at - a.claimed_at).total_seconds() for a, b in itertools.pairwise(sent)]
    assert all(0.5 <= gap <= 1.5 for gap in gaps), gaps  # no burst, no skipped tick
    assert any("window elapsed" in m for m in closing_reason(caplog))


def test_a_window_follows_the_batch_size_and_interval_in_the_database():
    DispatcherState.objects.update(batch_size=3, interval_seconds=2)
    make_messages(30)
    ticks = run_dispatch_window(window_seconds=4.5, should_stop=never_stop)
    assert 2 <= ticks <= 3
    assert len(locmem.outbox) == 3 * ticks


def test_a_window_with_nothing_to_send_keeps_ticking_and_picks_up_new_messages():
    window = WindowThread(window_seconds=4)
    window.start()
    time.sleep(1.5)
    assert locmem.outbox == []
    make_messages(1)
    wait_for(lambda: len(locmem.outbox) == 1, timeout=3, what="the new message to be sent")
    window.finish(6)


def test_a_window_ends_soon_after_the_dispatcher_is_stopped(caplog):
    make_messages(30)
    window = WindowThread(window_seconds=30)
    window.start()
    wait_for(lambda: len(locmem.outbox) >= 2, timeout=5, what="two ticks")

    dispatcher_stop()
    stopped = time.monotonic()
    sent_at_stop = len(locmem.outbox)

    window.finish(5)
    assert window.ended_at - stopped < 2.5
    assert len(locmem.outbox) <= sent_at_stop + 1  # at most a tick that had already claimed
    time.sleep(1.2)
    assert Message.objects.filter(status=Status.PROCESSING).count() == 0
    assert any("dispatcher stopped" in m for m in closing_reason(caplog))


def test_a_window_ends_when_the_cluster_shuts_down(caplog):
    make_messages(30)
    shutdown_at = time.monotonic() + 1.5

    ticks = run_dispatch_window(window_seconds=30, should_stop=lambda: time.monotonic() >= shutdown_at)

    assert time.monotonic() - shutdown_at < 1.5
    assert 1 <= ticks <= 3
    assert any("qcluster is shutting down" in m for m in closing_reason(caplog))


def test_a_newer_window_takes_over_and_the_pace_stays_the_same(caplog):
    make_messages(30)
    older = WindowThread(window_seconds=30)
    older.start()
    wait_for(lambda: len(locmem.outbox) >= 2, timeout=5, what="the first window to tick")

    newer = WindowThread(window_seconds=3)
    newer.start()
    older_ticks = older.finish(4)
    assert older.ended_at - newer.started_at < 2.0

    newer_ticks = newer.finish(5)
    assert newer_ticks >= 2
    total_time = newer.ended_at - older.started_at
    # One tick a second across both windows (n ticks span n - 1 intervals): no double ticks, no gap.
    assert total_time - 0.5 <= older_ticks + newer_ticks <= total_time + 1.5, (older_ticks, newer_ticks, total_time)
    assert len(locmem.outbox) == older_ticks + newer_ticks
    assert any("a newer window took over" in m for m in closing_reason(caplog))


def test_a_window_hands_over_when_the_window_id_changes():
    window = WindowThread(window_seconds=30)
    window.start()
    wait_for(
        lambda: DispatcherState.objects.filter(window_id__isnull=False).exists(), timeout=5, what="window registered"
    )
    changed = time.monotonic()
    DispatcherState.objects.update(window_id=uuid.uuid4())
    window.finish(5)
    assert window.ended_at - changed < 2.0


class OverlongIdProvider(BaseProvider):
    """Answers the first send with a messageId too long for the database column."""

    calls = 0

    def send(self, message):
        type(self).calls += 1
        if type(self).calls == 1:
            return ProviderResult(message_id="x" * 300)
        return ProviderResult(message_id=f"ok-{message.pk}")


def test_a_database_error_in_a_tick_is_logged_and_the_window_goes_on(settings, caplog):
    settings.DISPATCHER = {**settings.DISPATCHER, "PROVIDER_BACKEND": f"{__name__}.OverlongIdProvider"}
    OverlongIdProvider.calls = 0
    # Two a tick: the one message left processing is less than a batch, so the pace
    # goes on (a whole batch still in flight would hold the next tick).
    DispatcherState.objects.update(batch_size=2)
    make_messages(20)
    started = time.monotonic()

    with caplog.at_level(logging.INFO, logger="dispatcher"):
        run_dispatch_window(window_seconds=5, should_stop=never_stop)

    assert time.monotonic() - started >= 4.9  # it did not give up
    # Recording that outcome failed; the message keeps its lease (it comes back
    # when the lease expires) and the batch and the window go on.
    failures = [r for r in caplog.records if "could not record the outcome" in r.getMessage()]
    assert len(failures) == 1
    assert "value too long" in str(failures[0].exc_info[1])
    assert Message.objects.filter(status=Status.PROCESSING).count() == 1
    assert OverlongIdProvider.calls >= 2
    assert Message.objects.filter(status=Status.SENT).count() == OverlongIdProvider.calls - 1
    assert any("window elapsed" in m for m in closing_reason(caplog))


def test_a_window_without_a_state_row_ends_at_once():
    DispatcherState.objects.all().delete()
    make_messages(1)
    started = time.monotonic()
    assert run_dispatch_window(window_seconds=10, should_stop=never_stop) == 0
    assert time.monotonic() - started < 1
    assert locmem.outbox == []


# --- the pace as a budget, woken by due messages ------------------------------------------


def queue_one() -> Message:
    from messages_app.services import message_create

    return message_create(recipient_phone_number=phone_number(), content="your code is 123456")


def test_a_message_created_due_is_sent_at_once_not_at_the_next_tick():
    # Ticks a minute apart: only the wake on the message's creation can send it within seconds.
    DispatcherState.objects.update(batch_size=5, interval_seconds=60, next_tick_at=timezone.now())
    window = WindowThread(window_seconds=12)
    window.start()
    wait_for(lambda: DispatcherState.objects.get().last_tick_at is not None, timeout=8, what="the first tick")
    time.sleep(0.3)
    created = [queue_one() for _ in range(3)]
    # Sent means recorded as sent: the provider has each a moment before its batch is marked.
    wait_for(
        lambda: Message.objects.filter(status=Status.SENT).count() == 3, timeout=5, what="the three new messages sent"
    )
    assert len(locmem.outbox) == 3
    assert sorted(m.pk for m in Message.objects.filter(status=Status.SENT)) == [m.pk for m in created]
    assert window.finish(15) == 1  # no further tick: the wakes sent them


def test_wakes_stay_within_the_pace_and_the_rest_waits_for_the_budget():
    # 2 every 3 s: of five messages created at once, two go at once and the rest two at a
    # time as the budget frees, never more than two in any 3 s.
    DispatcherState.objects.update(batch_size=2, interval_seconds=3, next_tick_at=timezone.now())
    window = WindowThread(window_seconds=7.5)
    window.start()
    wait_for(lambda: DispatcherState.objects.get().last_tick_at is not None, timeout=5, what="the first tick")
    for _ in range(5):
        queue_one()
    wait_for(lambda: len(locmem.outbox) >= 2, timeout=3, what="the first two")
    window.finish(10)
    claimed = sorted(Message.objects.filter(status=Status.SENT).values_list("claimed_at", flat=True))
    assert len(claimed) == 5
    for index in range(len(claimed) - 2):
        assert (claimed[index + 2] - claimed[index]).total_seconds() >= 3, claimed  # no three within 3 s


def test_a_backlog_still_goes_batch_size_every_interval():
    DispatcherState.objects.update(batch_size=3, interval_seconds=1, next_tick_at=timezone.now())
    make_messages(30)
    ticks = run_dispatch_window(window_seconds=3.5, should_stop=never_stop)
    assert 3 <= ticks <= 4
    assert len(locmem.outbox) == 3 * ticks
    claims = list(Message.objects.filter(status=Status.SENT).order_by().values_list("claimed_at", flat=True).distinct())
    assert len(claims) == ticks  # one claim of three per tick


def test_a_message_committed_below_the_claim_floor_is_sent_after_the_windows_sweep(monkeypatch):
    """Rows written without an announcement (bulk_create here; a requeue, a recovered lease)
    whose due time the claims had passed when they committed: the sweep finds them."""
    monkeypatch.setattr("dispatcher.engine.pacing.FLOOR_SWEEP_SECONDS", 2.0)
    DispatcherState.objects.update(batch_size=5, interval_seconds=1, next_tick_at=timezone.now())
    window = WindowThread(window_seconds=10)
    window.start()
    wait_for(lambda: DispatcherState.objects.get().claim_floors, timeout=5, what="the first paced claim")
    an_hour_ago = timezone.now() - timedelta(hours=1)
    [straggler] = Message.objects.bulk_create(
        [Message(recipient_phone_number=phone_number(), content="late", next_attempt_at=an_hour_ago)]
    )

    wait_for(lambda: Message.objects.get(pk=straggler.pk).status == Status.SENT, timeout=6, what="the straggler sent")
    window.finish(15)


def test_a_message_created_due_before_the_claim_floor_is_sent_at_once():
    # Ticks a minute apart and no sweep in the test's time: only the announcement's due time
    # lets the wake read below the floor.
    DispatcherState.objects.update(batch_size=5, interval_seconds=60, next_tick_at=timezone.now())
    window = WindowThread(window_seconds=6)
    window.start()
    wait_for(lambda: DispatcherState.objects.get().claim_floors, timeout=5, what="the first paced claim")
    time.sleep(0.3)
    from messages_app.services import message_create

    late = message_create(
        recipient_phone_number=phone_number(), content="late", send_after=timezone.now() - timedelta(hours=1)
    )

    wait_for(lambda: Message.objects.get(pk=late.pk).status == Status.SENT, timeout=3, what="the message sent")
    window.finish(10)
