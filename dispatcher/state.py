"""The dispatcher's state, in one place: the one lock on its row, the reads, the
writes (start, stop, pace, taking a tick, falling behind the pace, the claims of the
last interval) and the next-tick and budget rules.

The state is one row (pk=1) that every web and worker process obeys, so start
and stop are cluster-wide and survive restarts. Writes take the row's lock;
taking a tick holds it while the tick claims its messages, so once stop()
returns nothing further is claimed. Tick times come from the database's clock.

The pace "N every T" is a budget: at most N messages claimed in any T seconds,
cluster-wide. Every paced claim (a tick, or a wake when a due message is created)
takes at most N minus what the claims of the last T seconds add up to
(`recent_claims`, read and written under the row's lock), so within the budget a
due message goes at once, and a backlog still goes N every T on the ticks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Now

from audit.services import Action, Via, control_action_record
from dispatcher.conf import BATCH_SIZE, INTERVAL_SECONDS, dispatcher_settings
from dispatcher.errors import DispatcherConfigError
from dispatcher.models import DispatcherState
from dispatcher.schedule import enqueue_dispatch_window
from messages_app.models import Message
from messages_app.selectors import message_status_counts
from messages_app.transitions import database_now

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)


# --- the next-tick rule ------------------------------------------------------------------


def next_tick_after(*, scheduled_at: datetime | None, interval_seconds: int, now: datetime) -> datetime:
    """When the tick after one due at `scheduled_at` (taken at `now`) is due.

    Keeping the phase (scheduled_at + interval) stops small delays from adding
    up into fewer ticks; once we are a whole interval behind (the cluster was
    down or busy) we restart from now instead of replaying missed ticks in a burst.
    A tick with no schedule (start, a new pace) counts from `scheduled_at` = now.
    """
    interval = timedelta(seconds=interval_seconds)
    if scheduled_at is not None and scheduled_at + interval > now:
        return scheduled_at + interval
    return now + interval


# --- the budget rule ----------------------------------------------------------------------


def _claims_in_window(recent_claims: list, *, now: datetime, interval_seconds: int) -> list[list[float]]:
    """The claims of `recent_claims` made in the last `interval_seconds` before `now`:
    (now - T, now], so a claim exactly T ago has left the window and a backlog's tick,
    taken T after the one before, finds its whole budget."""
    since = now.timestamp() - interval_seconds
    return [[at, count] for at, count in recent_claims if at > since]


def _budget_left(state: DispatcherState, now: datetime) -> tuple[int, list[list[float]]]:
    window = _claims_in_window(state.recent_claims or [], now=now, interval_seconds=state.interval_seconds)
    return state.batch_size - sum(count for _at, count in window), window


def _budget_frees_in(window: list[list[float]], *, now: datetime, interval_seconds: int) -> float:
    """Seconds until the oldest claim of the window leaves it (0 with none)."""
    if not window:
        return 0.0
    return max(window[0][0] + interval_seconds - now.timestamp(), 0.0)


# --- the lock and the reads ----------------------------------------------------------------


def dispatcher_state_ensure(*, using: str = "default") -> DispatcherState:
    """Return the state row, creating it running with the configured pace (deploy = start)."""
    conf = dispatcher_settings()
    state, created = DispatcherState.objects.using(using).get_or_create(
        pk=DispatcherState.SINGLETON_PK,
        defaults={
            "running": True,
            "batch_size": conf.initial_batch_size,
            "interval_seconds": conf.initial_interval_seconds,
            "next_tick_at": Now(),
        },
    )
    if created:
        state.refresh_from_db()
        logger.info("dispatcher created: running, %d messages every %d s", state.batch_size, state.interval_seconds)
    return state


def dispatcher_state_lock() -> DispatcherState:
    """The state row, locked until the transaction ends: ticks, drains, start, stop
    and pace changes queue on it. Call inside transaction.atomic()."""
    state = DispatcherState.objects.select_for_update().filter(pk=DispatcherState.SINGLETON_PK).first()
    if state is None:  # before migrate made it, or deleted: made as a deploy makes it, then locked
        dispatcher_state_ensure()
        state = DispatcherState.objects.select_for_update().get(pk=DispatcherState.SINGLETON_PK)
    return state


def dispatcher_state_read() -> DispatcherState:
    """The state as stored, without writing; before `migrate` has created the row,
    the state it will be created with."""
    state = DispatcherState.objects.filter(pk=DispatcherState.SINGLETON_PK).first()
    if state is None:
        conf = dispatcher_settings()
        state = DispatcherState(
            running=True, batch_size=conf.initial_batch_size, interval_seconds=conf.initial_interval_seconds
        )
    return state


@dataclass(frozen=True)
class PaceCheck:
    """What a dispatch window needs each poll, read in one query."""

    running: bool
    window_id: object
    due_in_seconds: float
    # How many messages may be claimed now without exceeding the pace, and (when none)
    # in how many seconds the oldest claim of the last interval leaves the window.
    budget_left: int = 0
    budget_frees_in_seconds: float = 0.0


def dispatcher_pace_check() -> PaceCheck | None:
    row = (
        DispatcherState.objects.filter(pk=DispatcherState.SINGLETON_PK)
        .annotate(db_now=Now())
        .values("running", "next_tick_at", "window_id", "db_now", "batch_size", "interval_seconds", "recent_claims")
        .first()
    )
    if row is None:
        return None
    now, interval = row["db_now"], row["interval_seconds"]
    due_in = (row["next_tick_at"] - now).total_seconds() if row["next_tick_at"] else 0.0
    window = _claims_in_window(row["recent_claims"] or [], now=now, interval_seconds=interval)
    return PaceCheck(
        running=row["running"],
        window_id=row["window_id"],
        due_in_seconds=due_in,
        budget_left=row["batch_size"] - sum(count for _at, count in window),
        budget_frees_in_seconds=_budget_frees_in(window, now=now, interval_seconds=interval),
    )


@dataclass(frozen=True)
class DispatcherStatus:
    running: bool
    batch_size: int
    interval_seconds: int
    last_tick_at: datetime | None
    next_tick_at: datetime | None
    # Since when the cluster has not kept up with the pace (None: it has).
    behind_since: datetime | None
    behind_seconds: float
    # Behind because no dispatch window has taken the due tick (rather than a batch still in flight).
    tick_untaken: bool
    counts: dict[str, int]
    delivery_cache_pending: int

    @property
    def pace_held(self) -> bool:
        return self.behind_since is None


# How late a due tick may be before the pace counts as not held although no batch holds it
# back: a pacing window takes a due tick within its poll (a second) and the claim. Later than
# this, no window is taking ticks: none runs (no qcluster, or the schedule that starts them
# has not), or every worker is busy. dispatcher_tick_take never sees that case, so it is
# read here from the tick's due time, on the database's clock.
TICK_UNTAKEN_AFTER = timedelta(seconds=5)


def _tick_untaken(state: DispatcherState, now: datetime) -> bool:
    return (
        state.running
        and state.behind_since is None
        and state.next_tick_at is not None
        and now - state.next_tick_at > TICK_UNTAKEN_AFTER
    )


def _behind_since(state: DispatcherState, now: datetime) -> datetime | None:
    """Since when the cluster has not held the pace: a due tick held for a batch still in
    flight (recorded by dispatcher_tick_take), or one no window has taken (since it fell due)."""
    if not state.running:
        return None
    if _tick_untaken(state, now):
        return state.next_tick_at
    return state.behind_since


def _behind_seconds(behind_since: datetime | None, now: datetime) -> float:
    if behind_since is None:
        return 0.0
    return round(max((now - behind_since).total_seconds(), 0.0), 3)


def dispatcher_behind_seconds() -> float:
    """How long the cluster has not held the pace (0 while it does, or while stopped)."""
    state, now = dispatcher_state_read(), database_now()
    return _behind_seconds(_behind_since(state, now), now)


def dispatcher_status() -> DispatcherStatus:
    state, now = dispatcher_state_read(), database_now()
    behind_since = _behind_since(state, now)
    return DispatcherStatus(
        running=state.running,
        batch_size=state.batch_size,
        interval_seconds=state.interval_seconds,
        last_tick_at=state.last_tick_at,
        next_tick_at=state.next_tick_at if state.running else None,
        behind_since=behind_since,
        behind_seconds=_behind_seconds(behind_since, now),
        tick_untaken=_tick_untaken(state, now),
        counts=message_status_counts(),
        delivery_cache_pending=Message.objects.filter(delivery_cache_pending=True).count(),
    )


# --- the writes ----------------------------------------------------------------------------


def dispatcher_start(*, actor: AbstractBaseUser | None = None, via: str = Via.COMMAND) -> DispatcherState:
    """Start sending cluster-wide; the first tick is due at once. Idempotent.

    Recorded in the audit log as done by `actor` through `via` (None and
    "command": someone at the shell), even when it was already running.
    """
    with transaction.atomic():
        state = dispatcher_state_lock()
        changed = not state.running
        if changed:
            state.running = True
            state.next_tick_at = database_now()
            state.behind_since = None
            state.save(update_fields=["running", "next_tick_at", "behind_since", "updated_at"])
            # A window may not be running (they end when stopped); start one now
            # rather than waiting up to a minute for the schedule.
            transaction.on_commit(enqueue_dispatch_window)
        control_action_record(action=Action.START, actor=actor, via=via, detail={"changed": changed})
    if changed:
        logger.info("dispatcher started")
    return state


def dispatcher_stop(*, actor: AbstractBaseUser | None = None, via: str = Via.COMMAND) -> DispatcherState:
    """Stop claiming cluster-wide. Idempotent; recorded in the audit log like dispatcher_start.

    Taking the row's lock waits for a claim in progress, so once this returns no
    further message is claimed; messages already claimed are still sent.
    """
    with transaction.atomic():
        state = dispatcher_state_lock()
        changed = state.running
        if changed:
            state.running = False
            state.next_tick_at = None
            state.behind_since = None
            state.save(update_fields=["running", "next_tick_at", "behind_since", "updated_at"])
        control_action_record(action=Action.STOP, actor=actor, via=via, detail={"changed": changed})
    if changed:
        logger.info("dispatcher stopped")
    return state


def _check_in_range(field: str, value: int | None, what: str, spec, unit: str = "") -> None:
    if value is not None and not spec.minimum <= value <= spec.maximum:
        raise DispatcherConfigError(field, f"{what} must be between {spec.minimum:g} and {spec.maximum:g}{unit}.")


def dispatcher_configure(
    *,
    batch_size: int | None = None,
    interval_seconds: int | None = None,
    actor: AbstractBaseUser | None = None,
    via: str = Via.COMMAND,
) -> DispatcherState:
    """Change the pace at run time; it persists in the database.

    Recorded in the audit log with the values asked for and the ones they
    replaced; values out of range raise DispatcherConfigError and record nothing.
    """
    _check_in_range("batch_size", batch_size, "Batch size", BATCH_SIZE)
    _check_in_range("interval_seconds", interval_seconds, "Interval", INTERVAL_SECONDS, " seconds")
    with transaction.atomic():
        state = dispatcher_state_lock()
        previous = {"batch_size": state.batch_size, "interval_seconds": state.interval_seconds}
        update_fields = ["updated_at"]
        if batch_size is not None:
            state.batch_size = batch_size
            update_fields.append("batch_size")
        if interval_seconds is not None and interval_seconds != state.interval_seconds:
            state.interval_seconds = interval_seconds
            update_fields.append("interval_seconds")
            if state.running:
                # The new pace applies from the last tick, not from the next one.
                state.next_tick_at = next_tick_after(
                    scheduled_at=state.last_tick_at, interval_seconds=interval_seconds, now=database_now()
                )
                update_fields.append("next_tick_at")
        state.save(update_fields=update_fields)
        requested = {
            name: value
            for name, value in (("batch_size", batch_size), ("interval_seconds", interval_seconds))
            if value is not None
        }
        control_action_record(
            action=Action.CONFIGURE,
            actor=actor,
            via=via,
            detail={
                **requested,
                "previous": {name: previous[name] for name in requested},
                "changed": any(previous[name] != value for name, value in requested.items()),
            },
        )
    logger.info("dispatcher configured: %d messages every %d s", state.batch_size, state.interval_seconds)
    return state


# How long the pacing window may go without saying it is alive (it does every
# dispatcher.engine.pacing.UPKEEP_SECONDS) before it counts as lost: its qcluster was
# killed, stopped or frozen. A qcluster's scheduler pass (every 30 s on each) then starts a
# new window, so the pace stops for about this plus a pass rather than until the minute
# schedule's next window (docs/RELIABILITY.md).
WINDOW_LOST_AFTER = timedelta(seconds=15)


def dispatcher_window_open(*, window_id: object) -> None:
    """Make `window_id` the dispatch window that paces ticks; an older one sees it and ends."""
    DispatcherState.objects.filter(pk=DispatcherState.SINGLETON_PK).update(window_id=window_id, window_seen_at=Now())


def dispatcher_window_alive(*, window_id: object) -> bool:
    """The pacing window `window_id` says it is alive; False if a newer one paces instead."""
    return bool(
        DispatcherState.objects.filter(pk=DispatcherState.SINGLETON_PK, window_id=window_id).update(
            window_seen_at=Now()
        )
    )


def dispatcher_window_lost(*, window_id: object) -> None:
    """The pacing window `window_id` ends while the dispatcher runs (its qcluster stops, its
    time is up) with no newer window seen: the next scheduler pass starts one at once."""
    DispatcherState.objects.filter(pk=DispatcherState.SINGLETON_PK, window_id=window_id).update(window_seen_at=None)


def dispatcher_window_revive_claim() -> bool:
    """True if no dispatch window has said it is alive for WINDOW_LOST_AFTER while the
    dispatcher runs: the caller then enqueues one. Claimed with one guarded UPDATE that
    stamps the time, so of all the qclusters' passes one asks, and the window it asks for
    has WINDOW_LOST_AFTER to open before another is asked for."""
    now = database_now()
    lost = Q(window_seen_at__isnull=True) | Q(window_seen_at__lt=now - WINDOW_LOST_AFTER)
    claimed = DispatcherState.objects.filter(lost, pk=DispatcherState.SINGLETON_PK, running=True).update(
        window_seen_at=now
    )
    return bool(claimed)


@dataclass(frozen=True)
class TakenTick:
    """A paced claim allowed under the state row's lock: a tick, or a wake."""

    batch_size: int
    interval_seconds: int
    now: datetime
    # How many messages this claim may take (batch_size for a manual tick).
    budget: int = 0
    # The claims of the last interval, to which dispatcher_claims_record adds this one.
    recent_claims: list = field(default_factory=list)
    # Where this claim starts reading each priority's due queue (none: from the start), and
    # the floors as stored (the claim's may be lower: a wake's announced due times).
    claim_floors: dict[str, datetime] = field(default_factory=dict)
    stored_floors: dict[str, datetime] = field(default_factory=dict)


def dispatcher_tick_take(
    *, due_only: bool, even_if_stopped: bool = False, in_flight: int = 0, due_from: dict[str, datetime] | None = None
) -> TakenTick | None:
    """Take the next tick, under the state row's lock (call inside the transaction
    that then claims the tick's messages). None when there is no tick to take:
    the dispatcher is stopped, or (with `due_only`) the tick is not due yet or the
    cluster is still sending a whole batch from before (`in_flight`).

    Falling behind is recorded (`behind_since`, a warning) and the tick stays due,
    to be taken as soon as the cluster has room; the one after it is then counted
    from that moment, so no burst makes up for lost time. A manual tick
    (`due_only=False`) leaves the schedule alone.

    `due_from`: the earliest due time per priority of messages announced since the last
    claim (messages_app.due_signal); a paced tick reads from there if it is below the floor.
    """
    state = dispatcher_state_lock()
    if not (state.running or even_if_stopped):
        return None
    now = database_now()
    budget, window = _budget_left(state, now)
    update_fields = ["last_tick_at", "updated_at"]
    if due_only:
        if state.next_tick_at is not None and state.next_tick_at > now:
            return None
        if budget <= 0:
            # The last interval's claims used the pace (the last tick taken a moment later
            # than this one, or wakes): the tick waits until the oldest leaves the window.
            return None
        if in_flight >= state.batch_size:
            if state.behind_since is None:
                state.behind_since = state.next_tick_at or now
                state.save(update_fields=["behind_since", "updated_at"])
                logger.warning(
                    "dispatcher behind its pace: %d messages of earlier ticks still being sent; "
                    "holding the tick of %d until the cluster has room",
                    in_flight,
                    state.batch_size,
                )
            return None
        scheduled_at = state.next_tick_at
        if state.behind_since is not None:
            logger.warning("dispatcher back on pace after %.1f s behind", (now - state.behind_since).total_seconds())
            state.behind_since = None
            update_fields.append("behind_since")
            scheduled_at = None  # count the next tick from now: no burst for the time lost
        state.next_tick_at = next_tick_after(
            scheduled_at=scheduled_at, interval_seconds=state.interval_seconds, now=now
        )
        update_fields.append("next_tick_at")
    state.last_tick_at = now
    state.save(update_fields=update_fields)
    stored_floors = claim_floors_parse(state.claim_floors)
    return TakenTick(
        batch_size=state.batch_size,
        interval_seconds=state.interval_seconds,
        now=now,
        budget=budget if due_only else state.batch_size,
        recent_claims=window,
        # A manual tick reads from the start: only the window that sweeps below them uses floors.
        claim_floors=_floors_reaching(stored_floors, due_from) if due_only else {},
        stored_floors=stored_floors,
    )


def dispatcher_wake_take(*, due_from: dict[str, datetime] | None = None) -> TakenTick | None:
    """What a wake (a due message created) may claim now, under the state row's lock (call
    inside the transaction that then claims): the pace's budget left, and the claim floors
    lowered to `due_from` (the earliest due time per priority the wake announced). None
    when the dispatcher is stopped or the last interval's claims used the budget; the
    schedule of ticks is left alone."""
    state = dispatcher_state_lock()
    if not state.running:
        return None
    now = database_now()
    budget, window = _budget_left(state, now)
    if budget <= 0:
        return None
    stored_floors = claim_floors_parse(state.claim_floors)
    return TakenTick(
        batch_size=state.batch_size,
        interval_seconds=state.interval_seconds,
        now=now,
        budget=budget,
        recent_claims=window,
        claim_floors=_floors_reaching(stored_floors, due_from),
        stored_floors=stored_floors,
    )


def dispatcher_claims_record(*, taken: TakenTick, count: int, floors: dict[str, datetime] | None = None) -> None:
    """Add a claim of `count` messages at `taken.now` to the last interval's claims, and
    keep the claim floors it moved (in the transaction that took it, under the row's lock)."""
    fields: dict = {}
    if count > 0:
        fields["recent_claims"] = [*taken.recent_claims, [taken.now.timestamp(), count]]
    if floors and floors != taken.stored_floors:
        fields["claim_floors"] = claim_floors_dump(floors)
    if fields:
        DispatcherState.objects.filter(pk=DispatcherState.SINGLETON_PK).update(**fields)


# --- the claim floors ------------------------------------------------------------------------
# Stored as ISO strings, exact to the microsecond: a floor one microsecond above the key it
# came from would hide the rows that share that key.


def claim_floors_parse(raw: dict | None) -> dict[str, datetime]:
    floors: dict[str, datetime] = {}
    for priority, value in (raw or {}).items():
        try:
            floors[priority] = datetime.fromisoformat(value)
        except (TypeError, ValueError):
            logger.warning("dispatcher: ignoring an unreadable claim floor for %s: %.40r", priority, value)
    return floors


def _floors_reaching(floors: dict[str, datetime], due_from: dict[str, datetime] | None) -> dict[str, datetime]:
    """`floors`, each lowered to the due time `due_from` names for its priority if below it
    (a priority without a floor is read from the start anyway)."""
    lowered = {p: key for p, key in (due_from or {}).items() if p in floors and key < floors[p]}
    return {**floors, **lowered}


def claim_floors_dump(floors: dict[str, datetime]) -> dict[str, str]:
    return {priority: moment.isoformat() for priority, moment in floors.items()}


def dispatcher_claim_floors_read() -> dict[str, datetime]:
    """The claim floors as stored (none before the first paced claim)."""
    raw = DispatcherState.objects.filter(pk=DispatcherState.SINGLETON_PK).values_list("claim_floors", flat=True).first()
    return claim_floors_parse(raw)


def dispatcher_claim_floors_lower(found: dict[str, datetime]) -> dict[str, datetime]:
    """Lower each priority's floor to the key `found` below it (a due row committed after the
    claims had passed its place), under the row's lock; return the floors that moved."""
    with transaction.atomic():
        state = dispatcher_state_lock()
        floors = claim_floors_parse(state.claim_floors)
        lowered = {p: key for p, key in found.items() if p in floors and key < floors[p]}
        if lowered:
            state.claim_floors = claim_floors_dump({**floors, **lowered})
            state.save(update_fields=["claim_floors", "updated_at"])
    return lowered
