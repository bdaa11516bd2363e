"""Operating the dispatcher: its state, start/stop, pace, and one tick."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from audit.services import Action, Via, control_action_record
from dispatcher.conf import dispatcher_settings
from dispatcher.engine.claiming import claim_drain_batch, claim_tick, recover_expired_leases
from dispatcher.engine.providers import BaseProvider, get_provider
from dispatcher.engine.sending import DeliveryOutcome, deliver_batch, delivery_cache_catch_up
from dispatcher.errors import DispatcherConfigError, DispatcherStoppedError
from dispatcher.models import MAX_BATCH_SIZE, MAX_INTERVAL_SECONDS, DispatcherState
from dispatcher.monitoring.metrics import metrics_record_tick
from messages_app.models import Message

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

DISPATCH_WINDOW_TASK = "dispatcher.tasks.dispatch_window"
DISPATCH_SCHEDULE_NAME = "dispatcher: pace dispatch ticks"


def _never() -> bool:
    return False


@dataclass
class TickResult:
    ticked: bool
    outcomes: list[DeliveryOutcome] = field(default_factory=list)

    @property
    def sent(self) -> list[DeliveryOutcome]:
        return [o for o in self.outcomes if o.sent]


def dispatcher_state_ensure(*, using: str = "default") -> DispatcherState:
    """Return the state row, creating it running with the configured pace (deploy = start)."""
    conf = dispatcher_settings()
    state, created = DispatcherState.objects.using(using).get_or_create(
        pk=DispatcherState.SINGLETON_PK,
        defaults={
            "running": True,
            "batch_size": conf.initial_batch_size,
            "interval_seconds": conf.initial_interval_seconds,
            "next_tick_at": timezone.now(),
        },
    )
    if created:
        logger.info("dispatcher created: running, %d messages every %d s", state.batch_size, state.interval_seconds)
    return state


def dispatcher_schedule_ensure(*, using: str = "default") -> None:
    """Make sure django-q2 starts a dispatch window every minute (created once, kept as is)."""
    from django_q.models import Schedule

    Schedule.objects.using(using).get_or_create(
        name=DISPATCH_SCHEDULE_NAME,
        defaults={
            "func": DISPATCH_WINDOW_TASK,
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
            "next_run": timezone.now(),
        },
    )


def enqueue_dispatch_window() -> None:
    from django_q.tasks import async_task

    async_task(DISPATCH_WINDOW_TASK, task_name="dispatch window (started)", group="dispatcher")


def _locked_state() -> DispatcherState:
    dispatcher_state_ensure()
    return DispatcherState.objects.select_for_update().get(pk=DispatcherState.SINGLETON_PK)


def dispatcher_start(*, actor: AbstractBaseUser | None = None, via: str = Via.COMMAND) -> DispatcherState:
    """Start sending cluster-wide; the first tick is due at once. Idempotent.

    Recorded in the audit log as done by `actor` through `via` (None and
    "command": someone at the shell), even when it was already running.
    """
    with transaction.atomic():
        state = _locked_state()
        changed = not state.running
        if changed:
            state.running = True
            state.next_tick_at = timezone.now()
            state.save(update_fields=["running", "next_tick_at", "updated_at"])
            # A window may not be running (they end when stopped); start one now
            # rather than waiting up to a minute for the schedule.
            transaction.on_commit(enqueue_dispatch_window)
        control_action_record(action=Action.START, actor=actor, via=via, detail={"changed": changed})
    if changed:
        logger.info("dispatcher started")
    return state


def dispatcher_stop(*, actor: AbstractBaseUser | None = None, via: str = Via.COMMAND) -> DispatcherState:
    """Stop claiming cluster-wide. Idempotent; recorded in the audit log like dispatcher_start.

    The UPDATE waits for the state-row lock that an in-progress claim holds, so
    once this returns no further message is claimed; messages already claimed
    are still sent.
    """
    with transaction.atomic():
        state = _locked_state()
        changed = state.running
        if changed:
            state.running = False
            state.next_tick_at = None
            state.save(update_fields=["running", "next_tick_at", "updated_at"])
        control_action_record(action=Action.STOP, actor=actor, via=via, detail={"changed": changed})
    if changed:
        logger.info("dispatcher stopped")
    return state


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
    if batch_size is not None and not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise DispatcherConfigError("batch_size", f"Batch size must be between 1 and {MAX_BATCH_SIZE}.")
    if interval_seconds is not None and not 1 <= interval_seconds <= MAX_INTERVAL_SECONDS:
        raise DispatcherConfigError(
            "interval_seconds", f"Interval must be between 1 and {MAX_INTERVAL_SECONDS} seconds."
        )
    with transaction.atomic():
        state = _locked_state()
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
                base = state.last_tick_at or timezone.now()
                state.next_tick_at = base + timezone.timedelta(seconds=interval_seconds)
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


def dispatch_tick(
    *,
    provider: BaseProvider | None = None,
    due_only: bool = True,
    force: bool = False,
    should_stop: Callable[[], bool] = _never,
) -> TickResult:
    """Run one tick: recover expired leases, claim a batch (if running and, with
    `due_only`, if due), send it, then catch up on pending cache records.

    `force` (manual ticks only) sends one batch even while the dispatcher is stopped.
    """
    started = time.monotonic()
    now = timezone.now()
    recover_expired_leases(now=now)
    if not due_only:
        dispatcher_state_ensure()
    claimed = claim_tick(now=now, due_only=due_only, even_if_stopped=force)
    if claimed is None:
        if not due_only:
            raise DispatcherStoppedError("The dispatcher is stopped; start it first, or force the tick.")
        return TickResult(ticked=False)
    outcomes = _send_claimed(claimed.messages, provider=provider, should_stop=should_stop)
    metrics_record_tick(duration_seconds=time.monotonic() - started)
    return TickResult(ticked=True, outcomes=outcomes)


def dispatch_drain(
    *,
    batch_size: int,
    provider: BaseProvider | None = None,
    should_stop: Callable[[], bool] = _never,
    deadline: float | None = None,
    on_batch: Callable[[Counter[str]], None] | None = None,
) -> Counter[str]:
    """Claim and send batches back to back, ignoring the pace, until nothing is claimable,
    the dispatcher is stopped, `should_stop()` or the monotonic `deadline` passes.

    Returns how many attempts ended in each outcome (`on_batch` gets the running
    counts after each batch); outcomes are not kept, so memory stays flat
    however many messages go through.
    """
    owned_provider = provider is None
    provider = provider or get_provider()
    totals: Counter[str] = Counter()
    try:
        while not should_stop() and (deadline is None or time.monotonic() < deadline):
            started = time.monotonic()
            now = timezone.now()
            recover_expired_leases(now=now)
            messages = claim_drain_batch(now=now, batch_size=batch_size)
            if not messages:  # stopped (None) or nothing claimable
                break
            batch = deliver_batch(messages=messages, provider=provider, should_stop=should_stop)
            metrics_record_tick(duration_seconds=time.monotonic() - started)  # a drain batch counts as a tick
            totals.update(o.outcome for o in batch)
            if on_batch:
                on_batch(totals)
        delivery_cache_catch_up()
    finally:
        if owned_provider:
            provider.close()
    return totals


def _send_claimed(
    messages: list[Message], *, provider: BaseProvider | None, should_stop: Callable[[], bool]
) -> list[DeliveryOutcome]:
    if messages:
        ids = [m.pk for m in messages]
        logger.info("tick claimed %d messages: ids %s", len(messages), ids, extra={"message_ids": ids})
    owned_provider = provider is None
    provider = provider or get_provider()
    try:
        outcomes = deliver_batch(messages=messages, provider=provider, should_stop=should_stop)
        if Message.objects.filter(delivery_cache_pending=True).exists():
            delivery_cache_catch_up()
    finally:
        if owned_provider:
            provider.close()
    return outcomes
