"""Claiming work in PostgreSQL: which tick runs, and which messages it takes.

Both happen in one short transaction that holds the dispatcher-state row lock,
so a concurrent stop() waits for an in-progress claim and no claim can start
after stop() has returned. Sending happens only after this transaction commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction

from dispatcher.models import DispatcherState
from messages_app.models import Message
from messages_app.services import messages_transition

Status = Message.Status


@dataclass(frozen=True)
class ClaimedTick:
    batch_size: int
    interval_seconds: int
    messages: list[Message]


def next_tick_after(*, scheduled_at: datetime | None, interval_seconds: int, now: datetime) -> datetime:
    """When the tick after one due at `scheduled_at` (run at `now`) is due.

    Keeping the phase (scheduled_at + interval) stops small delays from adding
    up into fewer ticks; once we are a whole interval behind (the cluster was
    down, a send took long) we restart from now instead of replaying missed
    ticks in a burst.
    """
    interval = timedelta(seconds=interval_seconds)
    if scheduled_at is not None and scheduled_at + interval > now:
        return scheduled_at + interval
    return now + interval


def claim_batch(*, batch_size: int, now: datetime) -> list[Message]:
    """Mark up to `batch_size` of the oldest unsent messages `processing` and return them.

    Rows another transaction has locked are skipped, not waited for, so any
    number of dispatchers can claim at once and never take the same message.
    """
    ids = list(
        Message.objects.filter(status=Status.UNSENT)
        .order_by("created_at", "id")
        .select_for_update(skip_locked=True)
        .values_list("id", flat=True)[:batch_size]
    )
    if not ids:
        return []
    messages_transition(message_ids=ids, from_status=Status.UNSENT, to_status=Status.PROCESSING, claimed_at=now)
    return list(Message.objects.filter(pk__in=ids).order_by("created_at", "id"))


def claim_tick(*, now: datetime, due_only: bool, even_if_stopped: bool = False) -> ClaimedTick | None:
    """Take the next tick if the dispatcher runs (and, with `due_only`, if it is due).

    Returns None when there is no tick to take. A manual tick (`due_only=False`)
    leaves the schedule alone.
    """
    with transaction.atomic():
        state = DispatcherState.objects.select_for_update().filter(pk=DispatcherState.SINGLETON_PK).first()
        if state is None or not (state.running or even_if_stopped):
            return None
        update_fields = ["last_tick_at", "updated_at"]
        if due_only:
            if state.next_tick_at is not None and state.next_tick_at > now:
                return None
            state.next_tick_at = next_tick_after(
                scheduled_at=state.next_tick_at, interval_seconds=state.interval_seconds, now=now
            )
            update_fields.append("next_tick_at")
        state.last_tick_at = now
        state.save(update_fields=update_fields)
        messages = claim_batch(batch_size=state.batch_size, now=now)
    return ClaimedTick(batch_size=state.batch_size, interval_seconds=state.interval_seconds, messages=messages)
