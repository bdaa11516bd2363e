"""Claiming work in PostgreSQL: which messages a tick (or a drain) takes.

A tick's claim happens in one short transaction that also holds the
dispatcher-state row lock (dispatcher.state.dispatcher_tick_take), so a
concurrent stop() waits for an in-progress claim and no claim can start after
stop() has returned. Sending happens only after this transaction commits, in
chunk tasks (dispatcher.engine.pipeline).
"""

from __future__ import annotations

import logging
import math
import random
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Now

from dispatcher.conf import BATCH_SIZE, dispatcher_settings
from dispatcher.engine.providers import provider_specs
from dispatcher.state import (
    dispatcher_claims_record,
    dispatcher_state_lock,
    dispatcher_tick_take,
    dispatcher_wake_take,
)
from messages_app.models import Message
from messages_app.transitions import database_now, messages_claim, messages_expire, messages_recover_expired

logger = logging.getLogger(__name__)

Status = Message.Status
BATCH_SIZE_LIMIT = int(BATCH_SIZE.maximum)


@dataclass(frozen=True)
class Claim:
    """Messages leased to one claim token, higher priority first, then earliest due."""

    claim_token: uuid.UUID
    message_ids: list[int]

    def chunks(self, size: int) -> list[list[int]]:
        return [self.message_ids[i : i + size] for i in range(0, len(self.message_ids), size)]


def claimable():
    """Unsent messages that are due (their send_after or retry backoff has passed) and not
    past their expiry, by the database's clock."""
    return Message.objects.filter(status=Status.UNSENT, next_attempt_at__lte=Now()).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=Now())
    )


PRIORITIES = (Message.Priority.HIGH, Message.Priority.NORMAL, Message.Priority.LOW)


def _claim_level(
    priority: str, limit: int, claim_token: uuid.UUID, lease_seconds: float, claimed_at: datetime
) -> list[int]:
    if limit <= 0:
        return []
    ids = list(
        claimable()
        .filter(priority=priority)
        .order_by("next_attempt_at", "id")
        .select_for_update(skip_locked=True)
        .values_list("id", flat=True)[:limit]
    )
    if ids:
        messages_claim(message_ids=ids, claim_token=claim_token, lease_seconds=lease_seconds, claimed_at=claimed_at)
    return ids


def _reserve(share_of_remaining: float) -> int:
    """Slots a level leaves to the ones below: the whole part of its share, and the
    fraction as a chance, so that a small batch (one slot at 20%) gives the lower
    levels one tick in five instead of rounding them to never or always."""
    whole = math.floor(share_of_remaining)
    return whole + (1 if random.random() < share_of_remaining - whole else 0)


def claim_batch(*, batch_size: int, claimed_at: datetime | None = None) -> Claim:
    """Lease up to `batch_size` due messages, higher priority first, earliest due first
    within a priority.

    Higher priorities never take the whole batch while lower ones wait: each level
    leaves DISPATCH_LOWER_PRIORITY_SHARE of what remains to the levels below it (on
    average, for batches too small to split), and what they do not use goes back to
    the higher ones. Each level is read on its
    own from the (priority, next_attempt_at, id) index, so messages scheduled for
    later are never scanned.

    Rows another transaction has locked are skipped, not waited for, so any
    number of dispatchers can claim at once and never take the same message.
    The lease is short (DISPATCH_LEASE_SECONDS); the worker that sends the
    messages renews it while it works.
    """
    conf = dispatcher_settings()
    token = uuid.uuid4()
    # One time for the whole claim, however many statements it takes (the tick's, when given).
    claimed_at = claimed_at or database_now()
    ids: list[int] = []
    remaining = batch_size
    exhausted: set[str] = set()
    for index, priority in enumerate(PRIORITIES):
        below = index < len(PRIORITIES) - 1
        cap = remaining - (_reserve(remaining * conf.lower_priority_share) if below else 0)
        taken = _claim_level(priority, cap, token, conf.lease_seconds, claimed_at)
        if len(taken) < cap:
            exhausted.add(priority)  # fewer than asked: nothing more of it to take in this claim
        ids.extend(taken)
        remaining -= len(taken)
    # What the lower levels left of their share, the higher ones may have.
    for priority in PRIORITIES:
        if remaining <= 0:
            break
        if priority in exhausted:
            continue
        taken = _claim_level(priority, remaining, token, conf.lease_seconds, claimed_at)
        ids.extend(taken)
        remaining -= len(taken)
    return Claim(claim_token=token, message_ids=ids)


def messages_in_flight() -> int:
    """Messages claimed and not yet done, cluster-wide (a partial index counts them)."""
    return Message.objects.filter(status=Status.PROCESSING).count()


def claim_tick(*, due_only: bool, even_if_stopped: bool = False) -> Claim | None:
    """Take the next tick if the dispatcher runs (and, with `due_only`, if it is due and
    the cluster has room) and claim its messages. None when there is no tick to take."""
    in_flight = messages_in_flight() if due_only else 0
    with transaction.atomic():
        tick = dispatcher_tick_take(due_only=due_only, even_if_stopped=even_if_stopped, in_flight=in_flight)
        if tick is None:
            return None
        claim = claim_batch(batch_size=min(tick.budget, providers_capacity(tick.interval_seconds)), claimed_at=tick.now)
        dispatcher_claims_record(taken=tick, count=len(claim.message_ids))
        return claim


def claim_wake() -> Claim | None:
    """Claim the due messages the pace's budget allows now, without waiting for the tick
    (a due message was created). None when the dispatcher is stopped or the budget is used;
    the claim may be empty (another qcluster's wake took them)."""
    with transaction.atomic():
        allowed = dispatcher_wake_take()
        if allowed is None:
            return None
        claim = claim_batch(
            batch_size=min(allowed.budget, providers_capacity(allowed.interval_seconds)), claimed_at=allowed.now
        )
        dispatcher_claims_record(taken=allowed, count=len(claim.message_ids))
        return claim


def providers_capacity(interval_seconds: int) -> int:
    """How many messages the providers' rate limits let through in one interval: a tick
    claims no more, so no message waits, leased, for a rate that cannot reach it.
    Unlimited when any provider has no limit."""
    specs = provider_specs()
    if not specs or any(spec.rate_per_second <= 0 for spec in specs):
        return BATCH_SIZE_LIMIT
    return max(1, int(sum(spec.rate_per_second for spec in specs) * interval_seconds))


def claim_drain_batch(*, batch_size: int) -> Claim | None:
    """A batch for `dispatcher drain`, which ignores the pace: None once the dispatcher is stopped.

    Like a tick it claims under the state-row lock, so nothing is claimed after stop() returns.
    """
    with transaction.atomic():
        if not dispatcher_state_lock().running:
            return None
        return claim_batch(batch_size=batch_size)


def recover_expired_leases(*, limit: int = 1000) -> int:
    """Return messages whose worker vanished (lease expired) to the queue; count them."""
    recovered = messages_recover_expired(max_attempts=dispatcher_settings().max_attempts, limit=limit)
    if recovered.count:
        ids = recovered.requeued + recovered.failed + recovered.never_started + recovered.expired
        logger.warning(
            "recovered %d messages with expired leases (ids %s..%s): %d tried and requeued, "
            "%d failed for good, %d never started, %d past their expiry",
            recovered.count,
            min(ids),
            max(ids),
            len(recovered.requeued),
            len(recovered.failed),
            len(recovered.never_started),
            len(recovered.expired),
            extra={"message_ids": ids[:100]},
        )
    return recovered.count


def expire_overdue() -> int:
    """Move unsent messages past their expiry to `expired`; count them."""
    ids = messages_expire()
    if ids:
        logger.warning(
            "expired %d unsent messages past their expiry (ids %s..%s)",
            len(ids),
            min(ids),
            max(ids),
            extra={"message_ids": ids[:100]},
        )
    return len(ids)
