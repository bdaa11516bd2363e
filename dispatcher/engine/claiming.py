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
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Now

from dispatcher.conf import BATCH_SIZE, dispatcher_settings
from dispatcher.engine.providers import provider_specs
from dispatcher.state import (
    dispatcher_claim_floors_lower,
    dispatcher_claim_floors_read,
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


# How long after its due time a row may commit and still be found without a sweep: a paced
# claim's floor never passes now minus this, so a message created (or put back) due a moment
# ago, whose transaction was still open while a claim went by, is read by the next claim.
FLOOR_LAG_SECONDS = 2.0
# A sweep slower than this is logged.
SLOW_SWEEP_SECONDS = 0.1


@dataclass(frozen=True)
class Claim:
    """Messages leased to one claim token, higher priority first, then earliest due."""

    claim_token: uuid.UUID
    message_ids: list[int]
    # Where the next paced claim may start reading each priority (None: a claim from the start).
    floors: dict[str, datetime] | None = None

    def chunks(self, size: int) -> list[list[int]]:
        return [self.message_ids[i : i + size] for i in range(0, len(self.message_ids), size)]


def claimable():
    """Unsent messages that are due (their send_after or retry backoff has passed) and not
    past their expiry, by the database's clock."""
    return Message.objects.filter(status=Status.UNSENT, next_attempt_at__lte=Now()).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=Now())
    )


PRIORITIES = (Message.Priority.HIGH, Message.Priority.NORMAL, Message.Priority.LOW)


def due_queue(priority: str, floor: datetime | None = None):
    """One priority's claimable messages in claim order, from `floor` on when given: a
    range of the (priority, next_attempt_at, id) partial index `message_due_queue`."""
    due = claimable().filter(priority=priority)
    if floor is not None:
        due = due.filter(next_attempt_at__gte=floor)
    return due.order_by("next_attempt_at", "id")


def _claim_level(
    priority: str,
    limit: int,
    claim_token: uuid.UUID,
    lease_seconds: float,
    claimed_at: datetime,
    floor: datetime | None,
) -> list[tuple[int, datetime]]:
    """Claim up to `limit` due messages of `priority`, reading from `floor` on; return their
    (id, next_attempt_at) in claim order."""
    if limit <= 0:
        return []
    rows = list(
        due_queue(priority, floor).select_for_update(skip_locked=True).values_list("id", "next_attempt_at")[:limit]
    )
    if rows:
        ids = [pk for pk, _ in rows]
        messages_claim(message_ids=ids, claim_token=claim_token, lease_seconds=lease_seconds, claimed_at=claimed_at)
    return rows


def _reserve(share_of_remaining: float) -> int:
    """Slots a level leaves to the ones below: the whole part of its share, and the
    fraction as a chance, so that a small batch (one slot at 20%) gives the lower
    levels one tick in five instead of rounding them to never or always."""
    whole = math.floor(share_of_remaining)
    return whole + (1 if random.random() < share_of_remaining - whole else 0)


def _next_floor(
    *, old: datetime | None, rows: list[tuple[int, datetime]], exhausted: bool, now: datetime
) -> datetime | None:
    """Where the next claim of a level starts: past what this one claimed, never past
    now - FLOOR_LAG_SECONDS. A level that gave fewer than asked had nothing more to give
    up to now (but rows still to commit); one that gave all it was asked may have more
    right after its last key."""
    horizon = now - timedelta(seconds=FLOOR_LAG_SECONDS)
    if exhausted:
        return max(old, horizon) if old is not None else horizon
    if rows:
        return min(rows[-1][1], horizon)
    return old


def claim_batch(
    *, batch_size: int, claimed_at: datetime | None = None, floors: dict[str, datetime] | None = None
) -> Claim:
    """Lease up to `batch_size` due messages, higher priority first, earliest due first
    within a priority.

    Higher priorities never take the whole batch while lower ones wait: each level
    leaves DISPATCH_LOWER_PRIORITY_SHARE of what remains to the levels below it (on
    average, for batches too small to split), and what they do not use goes back to
    the higher ones. Each level is read on its
    own from the (priority, next_attempt_at, id) index, so messages scheduled for
    later are never scanned.

    With `floors` (the paced claims of the dispatch window) each level is read from its
    floor on, and the returned Claim says where the next one starts. The index entries
    below a floor are those of messages already claimed: dead row versions that a
    transaction held open elsewhere keeps VACUUM from removing, and that a claim from the
    start would walk, every time, all the while (issue 26). A row that commits below a
    floor (a transaction that stayed open longer than FLOOR_LAG_SECONDS, a send_after in
    the past) is found by the window's sweep (claim_floors_sweep), which lowers the floor.

    Rows another transaction has locked are skipped, not waited for, so any
    number of dispatchers can claim at once and never take the same message.
    The lease is short (DISPATCH_LEASE_SECONDS); the worker that sends the
    messages renews it while it works.
    """
    conf = dispatcher_settings()
    token = uuid.uuid4()
    # One time for the whole claim, however many statements it takes (the tick's, when given).
    claimed_at = claimed_at or database_now()
    start = floors or {}
    ids: list[int] = []
    taken_by_level: dict[str, list[tuple[int, datetime]]] = {}
    remaining = batch_size
    exhausted: set[str] = set()

    def take(priority: str, cap: int) -> None:
        nonlocal remaining
        rows = _claim_level(priority, cap, token, conf.lease_seconds, claimed_at, start.get(priority))
        if cap > 0 and len(rows) < cap:
            exhausted.add(priority)  # fewer than asked: nothing more of it to take in this claim
        if rows:
            taken_by_level[priority] = rows  # the last pass's rows end furthest in
        ids.extend(pk for pk, _ in rows)
        remaining -= len(rows)

    for index, priority in enumerate(PRIORITIES):
        below = index < len(PRIORITIES) - 1
        take(priority, remaining - (_reserve(remaining * conf.lower_priority_share) if below else 0))
    # What the lower levels left of their share, the higher ones may have.
    for priority in PRIORITIES:
        if remaining <= 0:
            break
        if priority not in exhausted:
            take(priority, remaining)
    next_floors = None
    if floors is not None:
        next_floors = {}
        for priority in PRIORITIES:
            floor = _next_floor(
                old=start.get(priority),
                rows=taken_by_level.get(priority, []),
                exhausted=priority in exhausted,
                now=claimed_at,
            )
            if floor is not None:
                next_floors[priority] = floor
    return Claim(claim_token=token, message_ids=ids, floors=next_floors)


def claim_floors_sweep() -> dict[str, datetime]:
    """Look below each claim floor for a due row that committed after the claims had passed
    its place, and lower the floor to it; return the floors lowered.

    This read walks the dead entries the floors spare the claims, so the dispatch window
    runs it every FLOOR_SWEEP_SECONDS, outside any lock the claims need."""
    started = time.monotonic()
    found: dict[str, datetime] = {}
    for priority, floor in dispatcher_claim_floors_read().items():
        key = due_queue(priority).filter(next_attempt_at__lt=floor).values_list("next_attempt_at", flat=True).first()
        if key is not None:
            found[priority] = key
    lowered = dispatcher_claim_floors_lower(found) if found else {}
    for priority, key in lowered.items():
        logger.info("claim floor of %s lowered to %s: a due message committed below it", priority, key.isoformat())
    took = time.monotonic() - started
    if took >= SLOW_SWEEP_SECONDS:
        # What the floors spare the claims, the sweep reads: slow while a transaction stays open.
        logger.warning("claim floor sweep took %.0f ms (a long-open transaction keeps dead rows?)", took * 1000)
    return lowered


def messages_in_flight() -> int:
    """Messages claimed and not yet done by a worker that holds them, cluster-wide: those
    whose lease has not run out (one whose lease ran out waits for the recovery, not for a
    worker). The partial index on processing leases counts them from now on, so the entries
    of messages finished earlier, which a transaction held open keeps, are not walked."""
    return Message.objects.filter(status=Status.PROCESSING, lease_expires_at__gte=Now()).count()


def claim_tick(
    *, due_only: bool, even_if_stopped: bool = False, due_from: dict[str, datetime] | None = None
) -> Claim | None:
    """Take the next tick if the dispatcher runs (and, with `due_only`, if it is due and
    the cluster has room) and claim its messages. None when there is no tick to take.
    `due_from`: the earliest due times announced since the last claim (see claim_wake)."""
    in_flight = messages_in_flight() if due_only else 0
    with transaction.atomic():
        tick = dispatcher_tick_take(
            due_only=due_only, even_if_stopped=even_if_stopped, in_flight=in_flight, due_from=due_from
        )
        if tick is None:
            return None
        claim = claim_batch(
            batch_size=min(tick.budget, providers_capacity(tick.interval_seconds)),
            claimed_at=tick.now,
            floors=tick.claim_floors if due_only else None,
        )
        dispatcher_claims_record(taken=tick, count=len(claim.message_ids), floors=claim.floors)
        return claim


def claim_wake(*, due_from: dict[str, datetime] | None = None) -> Claim | None:
    """Claim the due messages the pace's budget allows now, without waiting for the tick
    (a due message was created). None when the dispatcher is stopped or the budget is used;
    the claim may be empty (another qcluster's wake took them).

    `due_from` is the earliest due time per priority the creations announced: the claim
    reads from there when it is below the floor, so a message that committed late, or
    was due before the claims had passed its time, goes now rather than at the sweep."""
    with transaction.atomic():
        allowed = dispatcher_wake_take(due_from=due_from)
        if allowed is None:
            return None
        claim = claim_batch(
            batch_size=min(allowed.budget, providers_capacity(allowed.interval_seconds)),
            claimed_at=allowed.now,
            floors=allowed.claim_floors,
        )
        dispatcher_claims_record(taken=allowed, count=len(claim.message_ids), floors=claim.floors)
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


RECOVERY_LIMIT = 1000


def recover_expired_leases(*, limit: int = RECOVERY_LIMIT, expired_since: datetime | None = None) -> int:
    """Return messages whose worker vanished (lease expired) to the queue; count them.
    With `expired_since`, only leases that ran out since then (see LeaseRecoveryFloor)."""
    recovered = messages_recover_expired(
        max_attempts=dispatcher_settings().max_attempts, limit=limit, expired_since=expired_since
    )
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


class LeaseRecoveryFloor:
    """Where a dispatch window's lease recovery starts reading the processing leases.

    Every message passes through processing, so the partial index of processing leases
    holds an entry for each one sent; a transaction held open elsewhere keeps them all,
    and a recovery from the start would walk them every few seconds. A look that returned
    everything expired before its start (fewer than its limit) moves the floor to that
    moment less FLOOR_LAG_SECONDS: a message claimed later has its lease a whole lease
    after its claim. Every FULL_SECONDS a look from the start finds what a claim that
    committed very late (its process paused mid-claim) left below the floor.
    Kept by the window that recovers, in its own memory: a new window starts from the start.
    """

    FULL_SECONDS = 60.0

    def __init__(self) -> None:
        self.floor: datetime | None = None
        self.full_at = 0.0

    def recover(self) -> int:
        full = time.monotonic() >= self.full_at
        if full:
            self.full_at = time.monotonic() + self.FULL_SECONDS
        looked_at = database_now()
        recovered = recover_expired_leases(expired_since=None if full else self.floor)
        if recovered < RECOVERY_LIMIT:
            self.floor = looked_at - timedelta(seconds=FLOOR_LAG_SECONDS)
        return recovered


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
