"""Claiming work in PostgreSQL: which tick runs, and which messages it takes.

Both happen in one short transaction that holds the dispatcher-state row lock,
so a concurrent stop() waits for an in-progress claim and no claim can start
after stop() has returned. Sending happens only after this transaction commits.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from dispatcher.conf import dispatcher_settings
from dispatcher.models import DispatcherState
from messages_app.models import DeliveryAttempt, Message
from messages_app.services import messages_transition

logger = logging.getLogger(__name__)

Status = Message.Status
LEASE_EXPIRED_ERROR = "lease expired: the worker sending it stopped or lost its connection before recording an outcome"


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


def claimable(now: datetime):
    """Unsent messages whose send_after / retry backoff has passed."""
    return Message.objects.filter(status=Status.UNSENT).filter(
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    )


def claim_batch(*, batch_size: int, now: datetime) -> list[Message]:
    """Lease up to `batch_size` of the oldest claimable messages and return them.

    Rows another transaction has locked are skipped, not waited for, so any
    number of dispatchers can claim at once and never take the same message.
    Each claim gets a fresh token and a lease long enough to send the batch.
    """
    ids = list(
        claimable(now)
        .order_by("created_at", "id")
        .select_for_update(skip_locked=True)
        .values_list("id", flat=True)[:batch_size]
    )
    if not ids:
        return []
    token = uuid.uuid4()
    lease = timedelta(seconds=dispatcher_settings().lease_for(len(ids)))
    messages_transition(
        message_ids=ids,
        from_status=Status.UNSENT,
        to_status=Status.PROCESSING,
        claimed_at=now,
        claim_token=token,
        lease_expires_at=now + lease,
    )
    return list(Message.objects.filter(pk__in=ids, claim_token=token).order_by("created_at", "id"))


def recover_expired_leases(*, now: datetime, limit: int = 1000) -> int:
    """Return messages whose worker vanished (lease expired) to the queue; count them.

    The lost attempt counts: after DISPATCH_MAX_ATTEMPTS the message fails
    instead, so a message that kills its worker every time cannot loop forever.
    """
    max_attempts = dispatcher_settings().max_attempts
    with transaction.atomic():
        expired = list(
            Message.objects.filter(status=Status.PROCESSING, lease_expires_at__lt=now)
            .select_for_update(skip_locked=True)
            .values_list("id", "attempts")[:limit]
        )
        if not expired:
            return 0
        to_failed = [pk for pk, attempts in expired if attempts + 1 >= max_attempts]
        to_unsent = [pk for pk, attempts in expired if attempts + 1 < max_attempts]
        released = {"claim_token": None, "lease_expires_at": None, "last_error": LEASE_EXPIRED_ERROR}
        messages_transition(
            message_ids=to_unsent,
            from_status=Status.PROCESSING,
            to_status=Status.UNSENT,
            increment_attempts=True,
            next_attempt_at=now,
            **released,
        )
        messages_transition(
            message_ids=to_failed,
            from_status=Status.PROCESSING,
            to_status=Status.FAILED,
            increment_attempts=True,
            **released,
        )
        DeliveryAttempt.objects.bulk_create(
            DeliveryAttempt(
                message_id=pk,
                number=attempts + 1,
                started_at=now,
                outcome=DeliveryAttempt.Outcome.LEASE_EXPIRED,
                error=LEASE_EXPIRED_ERROR,
            )
            for pk, attempts in expired
        )
    ids = [pk for pk, _ in expired]
    logger.warning(
        "recovered %d messages with expired leases (ids %s); %d failed for good",
        len(expired),
        ids[:20],
        len(to_failed),
        extra={"message_ids": ids, "failed_message_ids": to_failed},
    )
    return len(expired)


def release_claimed(*, messages: list[Message]) -> int:
    """Give back claimed messages we will not send (shutting down); the attempt does not count."""
    released: list[Message] = []
    with transaction.atomic():
        for message in messages:
            if messages_transition(
                queryset=Message.objects.filter(claim_token=message.claim_token),
                message_ids=[message.pk],
                from_status=Status.PROCESSING,
                to_status=Status.UNSENT,
                claim_token=None,
                lease_expires_at=None,
            ):
                released.append(message)
        DeliveryAttempt.objects.bulk_create(
            DeliveryAttempt(
                message_id=m.pk,
                number=m.attempts + 1,
                started_at=m.claimed_at or timezone.now(),
                outcome=DeliveryAttempt.Outcome.RELEASED,
                error="released unsent: the worker was shutting down",
            )
            for m in released
        )
    if released:
        ids = [m.pk for m in released]
        logger.info(
            "released %d claimed messages unsent (ids %s): shutting down",
            len(released),
            ids,
            extra={"message_ids": ids},
        )
    return len(released)


def _lock_state() -> DispatcherState | None:
    """The state row, locked until the transaction ends: ticks, drains and stop() queue on it."""
    return DispatcherState.objects.select_for_update().filter(pk=DispatcherState.SINGLETON_PK).first()


def claim_drain_batch(*, now: datetime, batch_size: int) -> list[Message] | None:
    """A batch for `dispatcher drain`, which ignores the pace: None once the dispatcher is stopped.

    Like a tick it claims under the state-row lock, so nothing is claimed after stop() returns.
    """
    with transaction.atomic():
        state = _lock_state()
        if state is None or not state.running:
            return None
        return claim_batch(batch_size=batch_size, now=now)


def claim_tick(*, now: datetime, due_only: bool, even_if_stopped: bool = False) -> ClaimedTick | None:
    """Take the next tick if the dispatcher runs (and, with `due_only`, if it is due).

    Returns None when there is no tick to take. A manual tick (`due_only=False`)
    leaves the schedule alone.
    """
    with transaction.atomic():
        state = _lock_state()
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
