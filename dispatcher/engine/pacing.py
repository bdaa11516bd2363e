"""Pacing ticks at any interval on top of django-q2's minute-grained schedules.

django-q2 runs a schedule at most once a minute and its scheduler wakes only
every 30 s, so the schedule does not tick itself: every minute it starts a
*dispatch window*, a task that runs for DISPATCH_WINDOW_SECONDS (longer than
the schedule's worst-case gap, so windows overlap) and inside it waits for each
tick's due time, stored in the database. Whoever takes a due tick moves
`next_tick_at` under the state-row lock, so however many windows, workers or
hosts are running, each tick happens once. A newer window takes over from an
older one, which then ends, so normally one worker is busy pacing.

The window paces and hands out; it does not send. Each tick's messages go to
django-q2 as chunk tasks (dispatcher.engine.pipeline), which every worker of
every qcluster takes from the shared queue.

Between ticks the window does not just sleep: on PostgreSQL it waits on
LISTEN for a due message being created (messages_app.due_signal), and then claims
at once what the pace's budget allows (`hand_out_wake`; dispatcher.state says
what the budget is), so a lone message does not wait for the next tick. The
ticks remain for a backlog, for messages that fall due later (send_after,
retries) and where there is no LISTEN (SQLite).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import datetime

from django.db import close_old_connections

from dispatcher.engine.claiming import LeaseRecoveryFloor, claim_floors_sweep, expire_overdue
from dispatcher.engine.listening import open_listener
from dispatcher.engine.pipeline import hand_out_tick, hand_out_wake
from dispatcher.engine.receipts import receipts_apply_waiting
from dispatcher.engine.recording import delivery_cache_catch_up
from dispatcher.schedule import enqueue_dispatch_window
from dispatcher.state import (
    WINDOW_LOST_AFTER,
    dispatcher_pace_check,
    dispatcher_window_alive,
    dispatcher_window_lost,
    dispatcher_window_open,
    dispatcher_window_revive_claim,
)
from messages_app.due_signal import MESSAGES_DUE_CHANNEL, due_earliest, messages_due_earliest

logger = logging.getLogger(__name__)

# How often a waiting window re-reads the state, to notice stop/start, a new
# pace or a newer window without waiting out a long interval.
POLL_SECONDS = 1.0
# How soon a window held behind the pace looks again: the tick goes out as soon as
# the cluster has room, so its workers never run dry while the pacer sleeps (a
# look is a count on a partial index and the state row's lock).
HELD_POLL_SECONDS = 0.05
# After an unexpected error (database gone, say), wait before the next try.
ERROR_BACKOFF_SECONDS = 2.0
# How often a window returns expired leases to the queue (so a dead worker's
# messages come back within about a lease, whatever the interval), expires
# unsent messages past their expiry and writes delivery records Redis missed.
UPKEEP_SECONDS = 5.0
# How often a window sweeps below the claim floors for due rows that committed after the
# claims had passed their place (dispatcher.engine.claiming.claim_floors_sweep): the longest
# such a row waits. The sweep reads what the floors spare the claims, so not every upkeep.
FLOOR_SWEEP_SECONDS = 15.0


# django-q2's stop event of the qcluster this process works for: a multiprocessing
# Event its main process sets the moment the cluster begins to stop. The sentinel
# hands it over before forking its workers (dispatcher/management/commands/qcluster.py),
# so every worker inherits it. None in any other process.
_cluster_stop_event = None


def qcluster_stop_event_share(event) -> None:
    """Called in the qcluster's sentinel before it forks its workers, with the cluster's
    stop event: `qcluster_is_stopping` then reads it in each worker."""
    global _cluster_stop_event
    _cluster_stop_event = event


def qcluster_is_stopping() -> bool:
    """True once the qcluster that owns this worker process has begun to shut down.

    django-q2 does not signal its workers on shutdown. They inherit its stop event
    (`qcluster_stop_event_share`), which costs a semaphore read: asking the cluster
    status django-q2 publishes in the cache (below) cost a sending worker 6 % of its
    CPU, and with Redis down never said "stopping". That status is the fallback
    where the event was not inherited (a start method other than fork); it is
    keyed by the sentinel, which is this worker's parent process.
    """
    if _cluster_stop_event is not None:
        return _cluster_stop_event.is_set()
    from django_q.conf import Conf
    from django_q.status import Stat

    try:
        stats = Stat.get_all()
    except Exception:
        return False
    parent, host = os.getppid(), socket.gethostname()
    for stat in stats:
        if stat.sentinel == parent and stat.host == host:
            return stat.status in (Conf.STOPPING, Conf.STOPPED)
    return False


def qcluster_running_on_this_host() -> bool:
    """True if a qcluster on this host has published a running status lately (for health checks)."""
    from django_q.conf import Conf
    from django_q.status import Stat

    host = socket.gethostname()
    return any(stat.host == host and stat.status in (Conf.IDLE, Conf.WORKING, Conf.STARTING) for stat in Stat.get_all())


class ShutdownWatch:
    """`qcluster_is_stopping`, asked at most every `every` seconds (its fallback reads the cache)."""

    def __init__(self, check: Callable[[], bool] = qcluster_is_stopping, every: float = 0.5) -> None:
        self._check = check
        self._every = every
        self._checked_at = float("-inf")
        self._stopping = False

    def __call__(self) -> bool:
        if not self._stopping and time.monotonic() - self._checked_at >= self._every:
            self._checked_at = time.monotonic()
            self._stopping = self._check()
        return self._stopping


def run_dispatch_window(
    *,
    window_seconds: float,
    should_stop: Callable[[], bool] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Take due ticks for up to `window_seconds`, handing each tick's messages out as
    chunk tasks, and between ticks hand out at once, within the pace's budget, messages
    created due; return how many ticks this window took. Between ticks it also returns
    expired leases to the queue, writes delivery records Redis missed and sweeps below the
    claim floors."""
    should_stop = should_stop or ShutdownWatch()
    window_id = uuid.uuid4()
    deadline = time.monotonic() + window_seconds
    dispatcher_window_open(window_id=window_id)
    listener = open_listener(MESSAGES_DUE_CHANNEL)
    logger.info(
        "dispatch window %s opened for %g s%s",
        window_id,
        window_seconds,
        ", woken by due messages" if listener else ", ticks only",
    )
    ticks = 0
    upkeep_at = 0.0
    sweep_at = 0.0
    lease_recovery = LeaseRecoveryFloor()
    reason = "window elapsed"
    # Whether a due message may be waiting that the budget left for later: the wake comes
    # back when the budget frees, rather than waiting for the next tick.
    wake_pending = False
    # The earliest due time per priority announced by creations not claimed yet: the next
    # claim reads its due queue from there (messages_app.due_signal; claiming's floors).
    due_from: dict[str, datetime] = {}
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            close_old_connections()
            try:
                pace = dispatcher_pace_check()
                if pace is None or not pace.running:
                    reason = "dispatcher stopped"
                    break
                if pace.window_id != window_id:
                    reason = "a newer window took over"
                    break
                if should_stop():
                    reason = "qcluster is shutting down"
                    break
                if time.monotonic() >= upkeep_at:
                    upkeep_at = time.monotonic() + UPKEEP_SECONDS
                    dispatcher_window_alive(window_id=window_id)
                    lease_recovery.recover()
                    expire_overdue()
                    receipts_apply_waiting()
                    delivery_cache_catch_up()
                    if listener is None:
                        listener = open_listener(MESSAGES_DUE_CHANNEL)  # after a lost connection
                if time.monotonic() >= sweep_at:
                    sweep_at = time.monotonic() + FLOOR_SWEEP_SECONDS
                    claim_floors_sweep()
                if pace.due_in_seconds <= 0 and pace.budget_left <= 0:
                    # Due, but the last interval's claims used the pace: wait until the oldest
                    # leaves the window (a backlog's tick is taken then, not a poll later).
                    sleep(min(pace.budget_frees_in_seconds + 0.001, POLL_SECONDS, max(remaining, 0)))
                    continue
                if pace.due_in_seconds <= 0:
                    if hand_out_tick(due_from=due_from):
                        ticks += 1
                        wake_pending = False
                        due_from = {}
                        continue
                    # Due but not taken: the cluster is behind (dispatcher.state); look again shortly.
                    sleep(min(HELD_POLL_SECONDS, max(remaining, 0)))
                    continue
                if wake_pending and pace.budget_left > 0:
                    # A claim the budget cut short may have left due messages: wake again
                    # once it frees.
                    wake_pending = hand_out_wake(due_from=due_from) >= pace.budget_left
                    due_from = {}
                    continue
            except Exception:
                logger.exception("dispatch window %s: tick failed; retrying", window_id)
                close_old_connections()
                sleep(min(ERROR_BACKOFF_SECONDS, max(remaining, 0)))
                continue
            wait = max(0.0, min(pace.due_in_seconds, POLL_SECONDS, remaining))
            if wake_pending and pace.budget_left <= 0:
                wait = min(wait, pace.budget_frees_in_seconds + 0.001)
            if listener is None:
                sleep(wait)
                continue
            try:
                woken = listener.wait(wait)
            except Exception as exc:
                logger.warning("dispatch window %s: lost its LISTEN connection, ticking only: %r", window_id, exc)
                listener.close()
                listener = None
                continue
            if woken:
                due_from = due_earliest([*due_from.items(), *messages_due_earliest(woken).items()])
                if pace.budget_left <= 0:
                    wake_pending = True  # handed out once the budget frees (the turns above)
                    continue
                # Claimed at once, before the turn's own reads: the claim itself checks under the
                # state row's lock that the dispatcher runs and what the budget allows; a stop
                # or a newer window is seen on the next turn.
                try:
                    wake_pending = hand_out_wake(due_from=due_from) >= pace.budget_left
                    due_from = {}
                except Exception:
                    logger.exception("dispatch window %s: wake failed; the ticks will find the message", window_id)
                    close_old_connections()
    finally:
        if listener is not None:
            listener.close()
        if reason not in ("dispatcher stopped", "a newer window took over"):
            # No window paces once this one ends: the next scheduler pass starts one now
            # rather than after WINDOW_LOST_AFTER.
            try:
                dispatcher_window_lost(window_id=window_id)
            except Exception as exc:
                logger.warning("dispatch window %s: could not record its end: %r", window_id, exc)
    logger.info("dispatch window %s closed after %d ticks: %s", window_id, ticks, reason)
    return ticks


def dispatch_window_revive() -> bool:
    """Start a dispatch window if none has said it is alive for WINDOW_LOST_AFTER while the
    dispatcher runs (its qcluster was killed, stopped or is frozen); True if one was asked for.

    Every qcluster's scheduler pass calls this (dispatcher/management/commands/qcluster.py),
    so the pace resumes within WINDOW_LOST_AFTER and a pass, not at the minute schedule's
    next window. One guarded UPDATE decides which pass asks."""
    if not dispatcher_window_revive_claim():
        return False
    enqueue_dispatch_window()
    logger.warning(
        "no dispatch window said it was alive in the last %d s: started one", WINDOW_LOST_AFTER.total_seconds()
    )
    return True
