"""Retention: the schedule that deletes history past MESSAGE_RETENTION_DAYS.

A run deletes, for each final status with a retention, the messages created before
its cutoff with what belongs to them (messages_app.services.messages_prune_batch:
attempts, receipts; a reply's link to its answer), then the receipts that never
matched a message, the inbound replies (consent.inbound.inbound_prune_batch), the
idempotency keys older than the shortest cutoff and the status callback events done with
(delivered or given up) older than the longest (callbacks.services). Each batch is its own short
transaction that locks only final rows with SKIP LOCKED, so the sending path never
waits for it. A run stops after MESSAGE_RETENTION_RUN_SECONDS and the next one (every
SCHEDULE_MINUTES) continues; each run is recorded (RetentionRun) for the dashboard.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import datetime, timedelta

from callbacks.services import callback_events_prune_batch
from consent.inbound import inbound_prune_batch
from messages_app.models import Message
from messages_app.services import messages_prune_batch, receipts_unmatched_prune
from messages_app.transitions import database_now
from restapi.idempotency import idempotency_keys_prune
from retention.conf import RetentionSettings, retention_settings
from retention.models import RetentionRun

logger = logging.getLogger(__name__)

# Runs kept for the dashboard; older ones are deleted by each run.
RUNS_KEPT = 100
# A progress line at most this often while a run deletes.
PROGRESS_EVERY_SECONDS = 5.0
# What the dependents' model labels are called on the dashboard and in the log.
DEPENDENT_NAMES = {
    "messages_app.DeliveryAttempt": "delivery attempts",
    "messages_app.DeliveryReceipt": "delivery receipts",
}


def retention_apply(*, settings: RetentionSettings | None = None, now: datetime | None = None) -> RetentionRun | None:
    """Delete what is past its retention, in batches, for at most the run's time; record
    and return the run (None when no retention is set: nothing is deleted, nothing kept)."""
    conf = settings or retention_settings()
    if not conf.enabled:
        return None
    now = now or database_now()
    clock = time.monotonic()
    deadline = clock + conf.run_seconds
    progress = _Progress(clock)
    messages: Counter[str] = Counter()
    others: Counter[str] = Counter()
    complete = True
    for status, days in conf.days_by_status.items():
        if not days:
            continue
        cutoff = now - timedelta(days=days)
        while True:
            if time.monotonic() >= deadline:
                complete = False
                break
            batch = messages_prune_batch(created_before=cutoff, statuses=[status], batch_size=conf.batch_size)
            if not batch:
                break
            messages[status] += batch.pop(Message._meta.label, 0)
            for label, count in batch.items():
                others[DEPENDENT_NAMES.get(label, label)] += count
            progress.maybe_log(messages, others)
        if not complete:
            break
    cutoffs = [now - timedelta(days=days) for days in conf.days_by_status.values() if days]
    if complete and cutoffs:
        # A receipt that never matched a message could belong to any status: it goes once
        # the longest retention is past. A key answered with a message created when the key
        # was: it goes once the shortest retention is past, never naming a deleted message.
        others["unmatched receipts"] += receipts_unmatched_prune(
            received_before=min(cutoffs), batch_size=conf.batch_size
        )
        others["idempotency keys"] += idempotency_keys_prune(created_before=max(cutoffs))
        # A callback event tells of a message: it goes once the longest retention is past,
        # never while still owed to its endpoint.
        while True:
            if time.monotonic() >= deadline:
                complete = False
                break
            count = callback_events_prune_batch(created_before=min(cutoffs), batch_size=conf.batch_size)
            if not count:
                break
            others["callback events"] += count
    if complete and conf.inbound_days:
        received_before = now - timedelta(days=conf.inbound_days)
        while True:
            if time.monotonic() >= deadline:
                complete = False
                break
            count = inbound_prune_batch(received_before=received_before, batch_size=conf.batch_size)
            if not count:
                break
            others["inbound replies"] += count
    run = RetentionRun.objects.create(
        started_at=now,
        finished_at=database_now(),
        messages_deleted=dict(messages),
        others_deleted={name: count for name, count in others.items() if count},
        complete=complete,
    )
    RetentionRun.objects.filter(pk__lte=run.pk - RUNS_KEPT).delete()
    logger.info(
        "retention: deleted %d messages (%s) and %s in %.1f s%s",
        sum(messages.values()),
        _counts_text(messages),
        _counts_text(others) or "nothing else",
        time.monotonic() - clock,
        "" if complete else f"; stopped at {conf.run_seconds} s, the next run continues",
    )
    return run


class _Progress:
    def __init__(self, started: float) -> None:
        self._started = started
        self._last = started

    def maybe_log(self, messages: Counter[str], others: Counter[str]) -> None:
        now = time.monotonic()
        if now - self._last < PROGRESS_EVERY_SECONDS:
            return
        self._last = now
        logger.info(
            "retention: %d messages deleted so far (%s; %s), %.0f s",
            sum(messages.values()),
            _counts_text(messages),
            _counts_text(others),
            now - self._started,
        )


def _counts_text(counts: Counter[str] | dict[str, int]) -> str:
    return ", ".join(f"{count} {name}" for name, count in counts.items() if count)
