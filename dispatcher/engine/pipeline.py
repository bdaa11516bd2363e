"""The one sending pipeline: claim, send, record, count.

Every way of sending goes through `send_chunk`:

- the paced dispatcher: a dispatch window (dispatcher.engine.pacing) takes each
  due tick, claims its N messages (`hand_out_tick`) and hands them out as
  django-q2 chunk tasks, which any worker of any qcluster runs (`send_chunk`);
- `dispatcher tick`: one tick claimed now and its chunks sent in this process;
- `dispatcher drain`: batches claimed back to back without the pace, each sent
  here the same way.

A chunk renews its lease while it works, records outcomes as its sends complete
(never only at the end), stops starting sends before django-q2's task timeout
could kill it, and gives back what it did not start.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import close_old_connections
from django.utils import timezone

from consent.policy import marketing_opening as quiet_hours_opening
from consent.selectors import messages_to_suppress
from dispatcher.conf import dispatcher_settings
from dispatcher.engine.claiming import Claim, claim_drain_batch, claim_tick, claim_wake, recover_expired_leases
from dispatcher.engine.counters import metrics_record_tick
from dispatcher.engine.leases import LeaseKeeper, lease_clock
from dispatcher.engine.providers import BaseProvider, ProviderSet, provider_session
from dispatcher.engine.recording import DeliveryOutcome, delivery_cache_catch_up, record_results
from dispatcher.engine.sending import SendResult, Unsent, send_concurrently
from dispatcher.errors import DispatcherStoppedError
from dispatcher.schedule import enqueue_chunk
from messages_app.models import Message
from messages_app.transitions import (
    database_now,
    messages_expire_claimed,
    messages_hold_claimed,
    messages_release_unsent,
    messages_start_sending,
    messages_suppress_claimed,
)

logger = logging.getLogger(__name__)

# Outcomes are written when this many results are waiting, or this often.
FLUSH_RESULTS = 200
FLUSH_SECONDS = 0.25


def _never() -> bool:
    return False


@dataclass
class ChunkReport:
    outcomes: list[DeliveryOutcome] = field(default_factory=list)
    released: int = 0
    expired: int = 0
    suppressed: int = 0
    held: int = 0
    lease_lost: bool = False

    def counts(self) -> Counter[str]:
        counts = Counter(o.outcome for o in self.outcomes)
        if self.suppressed:
            counts["suppressed"] += self.suppressed
        if self.held:
            counts["held"] += self.held
        if self.released:
            counts["released"] += self.released
        if self.expired:
            counts["expired"] += self.expired
        return counts


def send_chunk(
    *,
    message_ids: list[int],
    claim_token: uuid.UUID,
    provider: BaseProvider | ProviderSet,
    should_stop: Callable[[], bool] = _never,
) -> ChunkReport:
    """Send the claimed messages `message_ids` held under `claim_token` and record each outcome.

    Messages no longer held (their lease ran out while the chunk waited, or they
    were deleted) are skipped. If `should_stop()` turns true (the worker is
    shutting down) or the send budget is spent, sends in flight finish and the
    rest is given back to the queue unsent.
    """
    conf = dispatcher_settings()
    report = ChunkReport()
    lease_renewed_at = lease_clock()  # before the statement that renews the lease: the lease runs longer
    started = messages_start_sending(message_ids=message_ids, claim_token=claim_token, lease_seconds=conf.lease_seconds)
    if not started:
        logger.info("chunk %s: none of its %d messages is still ours; nothing to send", claim_token, len(message_ids))
        return report
    # Just before sending: recipients who opted out since these were queued (one query
    # for the chunk). Their messages end suppressed, and no provider is asked.
    to_suppress = messages_to_suppress(message_ids=[m.pk for m in started])
    if to_suppress:
        report.suppressed = len(messages_suppress_claimed(claim_token=claim_token, reasons=to_suppress))
        started = [m for m in started if m.pk not in to_suppress]
        logger.info(
            "chunk %s: %d messages suppressed, their recipients opted out (ids %s..%s)",
            claim_token,
            report.suppressed,
            min(to_suppress),
            max(to_suppress),
        )
        if not started:
            return report
    # Marketing messages claimed inside their recipient's quiet hours (due by then, or
    # sent after a retry): back to the queue, due when the window opens. No query.
    now = timezone.now()
    holds = {
        m.pk: opening
        for m in started
        if m.category == Message.Category.MARKETING
        and (opening := quiet_hours_opening(phone_number=m.recipient_phone_number, at=now)) is not None
    }
    if holds:
        report.held = len(messages_hold_claimed(claim_token=claim_token, holds=holds))
        started = [m for m in started if m.pk not in holds]
        logger.info("chunk %s: %d marketing messages held for quiet hours", claim_token, report.held)
        if not started:
            return report
    position = {pk: index for index, pk in enumerate(message_ids)}  # the claim's order: priority, then due
    messages = sorted(started, key=lambda m: position[m.pk])
    held = [m.pk for m in messages]
    deadline = time.monotonic() + conf.chunk_send_budget_seconds
    # Expiry is judged by the database's clock, read once and carried by our own.
    clock_offset = database_now() - timezone.now()

    def past_expiry(message: Message) -> bool:
        return message.expires_at is not None and message.expires_at <= timezone.now() + clock_offset

    unsent = Unsent(messages=[])
    waiting: list[SendResult] = []
    flushed_at = time.monotonic()

    with LeaseKeeper(
        message_ids=held, claim_token=claim_token, lease_seconds=conf.lease_seconds, renewed_at=lease_renewed_at
    ) as keeper:

        def stop_sending() -> bool:
            # Asked before each send: `holds()` also notices a lease this worker may have lost while
            # it was frozen, before the keeper's next renewal can tell.
            return not keeper.holds() or should_stop() or time.monotonic() > deadline

        def suppress_found_before_send(reasons: dict[int, str]) -> None:
            moved = messages_suppress_claimed(claim_token=claim_token, reasons=reasons)
            report.suppressed += len(moved)
            logger.info(
                "chunk %s: %d messages suppressed just before their send, their recipients opted out "
                "during the chunk (ids %s..%s)",
                claim_token,
                len(moved),
                min(reasons),
                max(reasons),
            )

        def flush() -> None:
            nonlocal waiting, flushed_at
            if waiting and not keeper.lost:
                with keeper.recording():
                    # Numbers that opted out after the check above, found just before their send.
                    opted_out = {r.message.pk: r.suppressed for r in waiting if r.suppressed}
                    if opted_out:
                        suppress_found_before_send(opted_out)
                    report.outcomes.extend(
                        _record(
                            [r for r in waiting if not r.suppressed],
                            claim_token=claim_token,
                            conf=conf,
                            clock_offset=clock_offset,
                        )
                    )
                    keeper.done(r.message.pk for r in waiting)
            waiting, flushed_at = [], time.monotonic()

        try:
            for results in send_concurrently(
                messages,
                provider=provider,
                concurrency=conf.concurrency,
                should_stop=stop_sending,
                skip=past_expiry,
                unsent=unsent,
                clock_offset=clock_offset,
            ):
                waiting.extend(results)
                if len(waiting) >= FLUSH_RESULTS or time.monotonic() - flushed_at >= FLUSH_SECONDS:
                    flush()
            flush()
            # Given back under the keeper's lock too: a renewal between the write and done()
            # would take the messages just given back for a lost lease.
            if unsent.skipped and not keeper.lost:
                with keeper.recording():
                    expired = messages_expire_claimed(
                        claim_token=claim_token, message_ids=[m.pk for m in unsent.skipped]
                    )
                    report.expired = len(expired)
                    keeper.done(m.pk for m in unsent.skipped)
                if expired:
                    logger.warning(
                        "chunk %s: %d messages past their expiry not sent (ids %s..%s)",
                        claim_token,
                        len(expired),
                        min(expired),
                        max(expired),
                    )
            if unsent.messages and not keeper.lost:
                with keeper.recording():
                    report.released = len(
                        messages_release_unsent(claim_token=claim_token, message_ids=[m.pk for m in unsent.messages])
                    )
                    keeper.done(m.pk for m in unsent.messages)
        except Exception:
            # The database is gone: the messages keep their leases and come back
            # when the leases expire, to be sent again under the same Idempotency-Key.
            logger.exception("chunk %s: stopped; its messages come back when the lease runs out", claim_token)
            close_old_connections()
            raise
    report.lease_lost = keeper.lost
    counts = report.counts()
    logger.info(
        "chunk %s: %d messages (ids %s..%s): %s%s",
        claim_token,
        len(messages),
        messages[0].pk,
        messages[-1].pk,
        ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "nothing recorded",
        "; lease lost" if keeper.lost else "",
    )
    return report


def _record(
    results: list[SendResult], *, claim_token: uuid.UUID, conf, clock_offset: timedelta
) -> list[DeliveryOutcome]:
    """Record a group of results together; if that fails, one by one, so that one
    row the database refuses never keeps the others' outcomes from being written.
    A result that cannot be recorded keeps its lease and is sent again after it
    (with the same Idempotency-Key)."""
    try:
        return record_results(results=results, claim_token=claim_token, conf=conf, clock_offset=clock_offset)
    except Exception:
        if len(results) == 1:
            logger.exception(
                "could not record the outcome of message id=%s uuid=%s; it comes back when its lease runs out",
                results[0].message.pk,
                results[0].message.uuid,
                extra={"message_id": results[0].message.pk, "message_uuid": str(results[0].message.uuid)},
            )
            close_old_connections()
            return []
    outcomes: list[DeliveryOutcome] = []
    for result in results:
        outcomes.extend(_record([result], claim_token=claim_token, conf=conf, clock_offset=clock_offset))
    return outcomes


def _log_claim(what: str, claim: Claim) -> None:
    if claim.message_ids:
        logger.info(
            "%s claimed %d messages (ids %s..%s) under %s",
            what,
            len(claim.message_ids),
            claim.message_ids[0],
            claim.message_ids[-1],
            claim.claim_token,
        )


def hand_out_tick(*, due_from: dict[str, datetime] | None = None) -> bool:
    """Take the due tick, if any, claim its messages and enqueue them as chunk tasks
    for the cluster's workers. The pacer does not send. Return whether a tick was taken."""
    started = time.monotonic()
    claim = claim_tick(due_only=True, due_from=due_from)
    if claim is None:
        return False
    _log_claim("tick", claim)
    for chunk in claim.chunks(dispatcher_settings().chunk_size):
        enqueue_chunk(message_ids=chunk, claim_token=claim.claim_token)
    metrics_record_tick(duration_seconds=time.monotonic() - started)
    return True


def hand_out_wake(*, due_from: dict[str, datetime] | None = None) -> int:
    """A due message was created: claim what the pace's budget allows now and enqueue it
    as chunk tasks, like a tick; return how many messages were handed out."""
    claim = claim_wake(due_from=due_from)
    if not claim or not claim.message_ids:
        return 0
    _log_claim("wake", claim)
    for chunk in claim.chunks(dispatcher_settings().chunk_size):
        enqueue_chunk(message_ids=chunk, claim_token=claim.claim_token)
    return len(claim.message_ids)


def _send_claim_here(claim: Claim, *, provider: ProviderSet, should_stop: Callable[[], bool]) -> list[DeliveryOutcome]:
    outcomes: list[DeliveryOutcome] = []
    for chunk in claim.chunks(dispatcher_settings().chunk_size):
        if should_stop():
            messages_release_unsent(claim_token=claim.claim_token, message_ids=chunk)
            continue
        report = send_chunk(
            message_ids=chunk, claim_token=claim.claim_token, provider=provider, should_stop=should_stop
        )
        outcomes.extend(report.outcomes)
    return outcomes


def run_tick_here(*, force: bool = False, provider: BaseProvider | ProviderSet | None = None) -> list[DeliveryOutcome]:
    """`dispatcher tick`: claim one tick's batch now and send it in this process.

    The schedule is left alone; `force` sends one batch even while the
    dispatcher is stopped (otherwise DispatcherStoppedError).
    """
    started = time.monotonic()
    recover_expired_leases()
    claim = claim_tick(due_only=False, even_if_stopped=force)
    if claim is None:
        raise DispatcherStoppedError("The dispatcher is stopped; start it first, or force the tick.")
    _log_claim("manual tick", claim)
    with provider_session(provider) as session:
        outcomes = _send_claim_here(claim, provider=session, should_stop=_never)
    delivery_cache_catch_up()
    metrics_record_tick(duration_seconds=time.monotonic() - started)
    return outcomes


def drain(
    *,
    batch_size: int,
    provider: BaseProvider | ProviderSet | None = None,
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
    totals: Counter[str] = Counter()
    with provider_session(provider) as session:
        while not should_stop() and (deadline is None or time.monotonic() < deadline):
            started = time.monotonic()
            recover_expired_leases()
            claim = claim_drain_batch(batch_size=batch_size)
            if not claim or not claim.message_ids:  # stopped (None) or nothing claimable
                break
            _log_claim("drain", claim)
            totals.update(o.outcome for o in _send_claim_here(claim, provider=session, should_stop=should_stop))
            metrics_record_tick(duration_seconds=time.monotonic() - started)  # a drain batch counts as a tick
            if on_batch:
                on_batch(totals)
        delivery_cache_catch_up()
    return totals
