"""Recording what the provider said: the delivery records in Redis, then each
message's transition (with its attempt row) under the claim token, then the
metrics. Every write matches the claim token, so a worker whose lease ran out
(its message handed to another) changes nothing."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from audit.services import Via
from consent.models import Consent
from consent.services import consent_set
from dispatcher.conf import DispatcherSettings
from dispatcher.engine.counters import metrics_record_batch
from dispatcher.engine.delivery_cache import delivery_cache_record_many
from dispatcher.engine.receipts import receipts_apply_for_sent
from dispatcher.engine.sending import SendResult, retry_delay
from messages_app.models import DeliveryAttempt, Message
from messages_app.transitions import (
    message_defer,
    message_fail,
    message_schedule_retry,
    messages_mark_sent,
)

logger = logging.getLogger(__name__)

Outcome = DeliveryAttempt.Outcome
# What a log line shows of a provider's error; the attempt log keeps it whole.
LOGGED_ERROR_LENGTH = 300


@dataclass(frozen=True)
class DeliveryOutcome:
    message_id: int
    message_uuid: str
    outcome: str  # a DeliveryAttempt.Outcome value; "lost" if the lease had passed on
    provider_message_id: str = ""
    error: str = ""
    cached: bool = False
    next_attempt_at: datetime | None = None

    @property
    def sent(self) -> bool:
        return self.outcome == Outcome.SENT


LOST = "lost"


def record_results(
    *,
    results: list[SendResult],
    claim_token: uuid.UUID,
    conf: DispatcherSettings,
    clock_offset: timedelta,
) -> list[DeliveryOutcome]:
    """Write the outcomes of `results` (all sent under `claim_token`).

    `clock_offset`, the database's clock minus ours as a chunk read it when it began,
    dates the sends by our clock moved onto the database's, instead of asking the
    database for every group (a round trip that cost a sending worker 4 % of its CPU).
    """
    if not results:
        return []
    sent = [r for r in results if r.result is not None]
    outcomes: dict[int, DeliveryOutcome] = {}
    # Cache first, then mark sent: a reader that sees `sent` finds the record.
    # A cache failure never turns a delivery into a failure: the records are
    # flagged and written by a later tick (or `dispatcher recache`).
    # One time on the database's clock is the sending time of the whole group, in
    # Redis and on the rows alike.
    sent_at = timezone.now() + clock_offset if sent else None
    cached = bool(sent) and delivery_cache_record_many(deliveries=[(r.result.message_id, sent_at) for r in sent])
    with transaction.atomic():
        moved = messages_mark_sent(
            claim_token=claim_token,
            attempts=[r.attempt() for r in sent],
            sent_at=sent_at,
            delivery_cache_pending=not cached,
        )
        # Receipts that came before these sends were recorded apply now, in the same transaction.
        receipts_apply_for_sent(provider_message_ids=[r.result.message_id for r in sent if r.message.pk in moved])
        for r in sent:
            outcomes[r.message.pk] = _sent_outcome(r, moved=r.message.pk in moved, cached=cached)
        for r in results:
            if r.error is not None:
                outcomes[r.message.pk] = _record_unsuccessful(r, claim_token=claim_token, conf=conf)
                if r.error.recipient_opted_out:
                    _record_provider_opt_out(r)
    # After the commit: only outcomes on record count. A few cache calls, never raises.
    metrics_record_batch(
        outcomes=[o.outcome for o in outcomes.values()], provider_latencies_ms=[r.duration_ms for r in results]
    )
    return [outcomes[r.message.pk] for r in results]


def _ids(r: SendResult) -> dict:
    return {"message_id": r.message.pk, "message_uuid": str(r.message.uuid)}


def _sent_outcome(r: SendResult, *, moved: bool, cached: bool) -> DeliveryOutcome:
    message = r.message
    if not moved:
        logger.warning(
            "sent message id=%s uuid=%s messageId=%s, but it was no longer ours to record "
            "(its lease passed to another worker, or it was deleted)",
            message.pk,
            message.uuid,
            r.result.message_id,
            extra=_ids(r),
        )
        return DeliveryOutcome(message.pk, str(message.uuid), LOST, provider_message_id=r.result.message_id)
    logger.info(
        "sent message id=%s uuid=%s attempt=%d messageId=%s in %d ms",
        message.pk,
        message.uuid,
        message.attempts + 1,
        r.result.message_id,
        r.duration_ms,
        extra=_ids(r),
    )
    return DeliveryOutcome(
        message.pk, str(message.uuid), Outcome.SENT, provider_message_id=r.result.message_id, cached=cached
    )


def _record_provider_opt_out(r: SendResult) -> None:
    """The provider says the recipient opted out with it: the number's opt-out, as a
    provider report (its queued messages end suppressed, the next create is refused)."""
    consent_set(
        phone_number=r.message.recipient_phone_number,
        status=Consent.Status.OPTED_OUT,
        method=Consent.Method.PROVIDER_REPORT,
        via=Via.INBOUND,
        note=f"the provider refused message id={r.message.pk}: {r.error.reason}"[:500],
    )


def _record_unsuccessful(r: SendResult, *, claim_token: uuid.UUID, conf: DispatcherSettings) -> DeliveryOutcome:
    message, exc = r.message, r.error
    attempt = r.attempt()
    error = exc.reason[:LOGGED_ERROR_LENGTH]
    if r.defer:
        moved_to = message_defer(
            claim_token=claim_token, attempt=attempt, retry_in_seconds=r.defer_seconds, sticky=not exc.not_sent
        )
        if moved_to is None:
            return DeliveryOutcome(message.pk, str(message.uuid), LOST, error=error)
        logger.warning(
            "deferred message id=%s uuid=%s for %.0f s, attempt not counted (provider %s unavailable): %s",
            message.pk,
            message.uuid,
            r.defer_seconds,
            r.provider or "-",
            error,
            extra=_ids(r),
        )
        outcome = Outcome.DEFERRED if moved_to == Message.Status.UNSENT else Outcome.EXPIRED
        return DeliveryOutcome(message.pk, str(message.uuid), outcome, error=error)
    if exc.permanent or attempt.number >= conf.max_attempts:
        if not message_fail(claim_token=claim_token, attempt=attempt):
            return DeliveryOutcome(message.pk, str(message.uuid), LOST, error=error)
        logger.warning(
            "failed message id=%s uuid=%s attempt=%d%s: %s",
            message.pk,
            message.uuid,
            attempt.number,
            "" if exc.permanent else " (no attempts left)",
            error,
            extra=_ids(r),
        )
        return DeliveryOutcome(message.pk, str(message.uuid), Outcome.FAILED, error=error)
    delay = retry_delay(attempt=attempt.number, conf=conf, retry_after=exc.retry_after)
    # A provider that provably did not take it leaves it free for any provider next time.
    moved_to = message_schedule_retry(
        claim_token=claim_token, attempt=attempt, retry_in_seconds=delay, sticky=not exc.not_sent
    )
    if moved_to is None:
        return DeliveryOutcome(message.pk, str(message.uuid), LOST, error=error)
    if moved_to == Message.Status.EXPIRED:
        logger.warning(
            "expired message id=%s uuid=%s attempt=%d: its next try would come after its expiry: %s",
            message.pk,
            message.uuid,
            attempt.number,
            error,
            extra=_ids(r),
        )
        return DeliveryOutcome(message.pk, str(message.uuid), Outcome.EXPIRED, error=error)
    logger.warning(
        "retrying message id=%s uuid=%s attempt=%d in %.1f s: %s",
        message.pk,
        message.uuid,
        attempt.number,
        delay,
        error,
        extra=_ids(r),
    )
    return DeliveryOutcome(message.pk, str(message.uuid), Outcome.RETRY, error=error)


def delivery_cache_catch_up(*, limit: int = 500) -> int:
    """Write the delivery records that could not be written when their message was sent."""
    pending = list(
        Message.objects.filter(delivery_cache_pending=True).values_list("pk", "provider_message_id", "sent_at")[:limit]
    )
    if not pending or not delivery_cache_record_many(deliveries=[(pmid, sent_at) for _, pmid, sent_at in pending]):
        return 0
    ids = [pk for pk, _, _ in pending]
    Message.objects.filter(pk__in=ids).update(delivery_cache_pending=False)
    logger.info(
        "wrote %d pending delivery cache records (ids %s..%s)",
        len(pending),
        min(ids),
        max(ids),
        extra={"message_ids": ids[:100]},
    )
    return len(pending)


def messages_sent_in(*, since: datetime | None, until: datetime | None) -> QuerySet[Message]:
    """The sent messages (with a provider messageId) sent at or after `since` and before `until`."""
    sent = Message.objects.filter(status=Message.Status.SENT).exclude(provider_message_id="")
    if since is not None:
        sent = sent.filter(sent_at__gte=since)
    if until is not None:
        sent = sent.filter(sent_at__lt=until)
    return sent


class DeliveryCacheUnavailable(Exception):
    """The delivery cache refused a write (Redis down): nothing more is written."""


def delivery_cache_rebuild(
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    batch_size: int = 1000,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Write again, from the database, the `messages:<messageId>` record of every
    message sent at or after `since` and before `until` (either may be open); return
    how many were written.

    For a Redis that lost its data (restarted without persistence, flushed, failed
    over to an empty replica): those records are otherwise gone for good, since
    only the ones that failed to be written are flagged pending. Each record gets
    the message's sending time and the cache's TTL from now. Messages are read
    `batch_size` at a time in sending order (the sent list's index), each batch
    written in one round trip; `on_progress` gets the count after each batch.
    Raise DeliveryCacheUnavailable if the cache refuses a batch: the batches
    before it are written, a rerun writes them again harmlessly.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    sent = messages_sent_in(since=since, until=until)
    written = 0
    after: tuple[datetime, int] | None = None
    while True:
        page = sent if after is None else sent.filter(Q(sent_at__gt=after[0]) | Q(sent_at=after[0], pk__gt=after[1]))
        batch = list(page.order_by("sent_at", "pk").values_list("pk", "provider_message_id", "sent_at")[:batch_size])
        if not batch:
            return written
        if not delivery_cache_record_many(deliveries=[(pmid, sent_at) for _, pmid, sent_at in batch]):
            raise DeliveryCacheUnavailable(f"the delivery cache refused a write after {written} record(s)")
        ids = [pk for pk, _, _ in batch]
        Message.objects.filter(pk__in=ids, delivery_cache_pending=True).update(delivery_cache_pending=False)
        written += len(batch)
        after = (batch[-1][2], batch[-1][0])
        if on_progress is not None:
            on_progress(len(batch))
