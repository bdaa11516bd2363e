"""Sending claimed messages and recording each outcome.

A batch is sent `DISPATCH_CONCURRENCY` requests at a time, then its outcomes
are written together: one cache pipeline and one UPDATE for the sent messages,
one INSERT for the attempt log. Every write matches the message's claim token,
so a worker whose lease ran out (and whose message another worker took over)
changes nothing.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import close_old_connections, transaction
from django.utils import timezone

from dispatcher.conf import DispatcherSettings, dispatcher_settings
from dispatcher.engine.claiming import release_claimed
from dispatcher.engine.delivery_cache import delivery_cache_record_many
from dispatcher.engine.providers import BaseProvider, ProviderError, ProviderResult
from dispatcher.monitoring.metrics import metrics_record_batch
from messages_app.models import DeliveryAttempt, Message
from messages_app.services import messages_mark_sent, messages_transition

logger = logging.getLogger(__name__)

Status = Message.Status
Outcome = DeliveryAttempt.Outcome
MAX_ERROR_LENGTH = 2000
# However long a provider asks us to wait, come back within a day.
MAX_RETRY_AFTER_SECONDS = 86_400
# How often a batch in flight checks whether the worker is shutting down.
STOP_CHECK_SECONDS = 0.2


@dataclass(frozen=True)
class DeliveryOutcome:
    message_id: int
    message_uuid: str
    outcome: str  # a DeliveryAttempt.Outcome value
    provider_message_id: str = ""
    error: str = ""
    cached: bool = False
    next_attempt_at: datetime | None = None

    @property
    def sent(self) -> bool:
        return self.outcome == Outcome.SENT


@dataclass(frozen=True)
class SendResult:
    """What one call to the provider produced, before anything is written."""

    message: Message
    started_at: datetime
    finished_at: datetime
    duration_ms: int
    result: ProviderResult | None = None
    error: ProviderError | None = None


def retry_delay(*, attempt: int, conf: DispatcherSettings, retry_after: float | None = None) -> float:
    """Seconds before attempt `attempt + 1`: the provider's Retry-After if it gave one,
    else exponential backoff with jitter (half to all of base x 2^(attempt-1), capped)."""
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_AFTER_SECONDS)
    ceiling = min(conf.retry_max_seconds, conf.retry_base_seconds * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def send_one(*, message: Message, provider: BaseProvider) -> SendResult:
    """Call the provider for one message; never raises (a crash is a transient error)."""
    started_at = timezone.now()
    started = time.monotonic()
    result = error = None
    try:
        result = provider.send(message)
    except ProviderError as exc:
        error = exc
    except Exception as exc:  # a bug in a backend must not leave the message in processing
        logger.exception(
            "provider backend crashed on message id=%s uuid=%s",
            message.pk,
            message.uuid,
            extra={"message_id": message.pk, "message_uuid": str(message.uuid)},
        )
        error = ProviderError(f"unexpected error in provider backend: {type(exc).__name__}: {exc}")
    return SendResult(
        message=message,
        started_at=started_at,
        finished_at=timezone.now(),
        duration_ms=int((time.monotonic() - started) * 1000),
        result=result,
        error=error,
    )


def deliver_message(
    *, message: Message, provider: BaseProvider, conf: DispatcherSettings | None = None
) -> DeliveryOutcome:
    """Send one claimed (`processing`) message and record the outcome: sent, retry or failed."""
    [outcome] = record_outcomes(results=[send_one(message=message, provider=provider)], conf=conf)
    return outcome


def deliver_batch(
    *,
    messages: list[Message],
    provider: BaseProvider,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[DeliveryOutcome]:
    """Send a claimed batch and record the outcomes. If `should_stop()` turns true (the
    worker is shutting down), sends in flight finish and the rest is released unsent."""
    conf = dispatcher_settings()
    results, not_sent = _send_all(messages, provider=provider, concurrency=conf.concurrency, should_stop=should_stop)
    outcomes: list[DeliveryOutcome] = []
    try:
        outcomes = record_outcomes(results=results, conf=conf)
    except Exception:
        # Recording failed (database gone?). The messages keep their leases and
        # come back when the leases expire, to be sent again under the same
        # Idempotency-Key. Go on with a fresh connection if the old one broke.
        ids = [r.message.pk for r in results]
        logger.exception("could not record the outcomes of messages %s", ids, extra={"message_ids": ids})
        close_old_connections()
    if not_sent:
        try:
            release_claimed(messages=not_sent)
        except Exception:
            ids = [m.pk for m in not_sent]
            logger.exception("could not release messages %s; their leases will", ids, extra={"message_ids": ids})
    return outcomes


def _send_all(
    messages: list[Message], *, provider: BaseProvider, concurrency: int, should_stop: Callable[[], bool]
) -> tuple[list[SendResult], list[Message]]:
    """Send `messages`, `concurrency` at a time; return the results and the messages never sent."""
    if concurrency <= 1 or len(messages) <= 1:
        results = []
        for index, message in enumerate(messages):
            if should_stop():
                return results, messages[index:]
            results.append(send_one(message=message, provider=provider))
        return results, []

    if should_stop():
        return [], list(messages)
    pool = provider.executor(concurrency)
    futures: dict[Future, Message] = {pool.submit(send_one, message=m, provider=provider): m for m in messages}
    pending = set(futures)
    while pending:
        _done, pending = wait(pending, timeout=STOP_CHECK_SECONDS, return_when=FIRST_COMPLETED)
        if pending and should_stop():
            for future in pending:
                future.cancel()  # only those not started yet; sends in flight finish
            wait(pending)
            break
    results = [f.result() for f in futures if not f.cancelled()]
    not_sent = [m for f, m in futures.items() if f.cancelled()]
    return results, not_sent


def record_outcomes(*, results: list[SendResult], conf: DispatcherSettings | None = None) -> list[DeliveryOutcome]:
    """Write what the provider said, in as few statements as the batch allows."""
    conf = conf or dispatcher_settings()
    sent = [r for r in results if r.result is not None]
    outcomes: dict[int, DeliveryOutcome] = {}
    attempts: list[DeliveryAttempt] = []
    # Cache first, then mark sent: a reader that sees `sent` finds the record.
    # A cache failure never turns a delivery into a failure: the records are
    # flagged and written by a later tick (or `dispatcher recache`).
    cached = bool(sent) and delivery_cache_record_many(deliveries=[(r.result.message_id, r.finished_at) for r in sent])
    with transaction.atomic():
        if sent:
            _mark_sent(sent, cached=cached)
            for r in sent:
                outcomes[r.message.pk] = DeliveryOutcome(
                    message_id=r.message.pk,
                    message_uuid=str(r.message.uuid),
                    outcome=Outcome.SENT,
                    provider_message_id=r.result.message_id,
                    cached=cached,
                )
                attempts.append(_attempt(r, Outcome.SENT))
        for r in results:
            if r.error is not None:
                outcome = _mark_unsuccessful(r, conf)
                outcomes[r.message.pk] = outcome
                attempts.append(_attempt(r, outcome.outcome))
        DeliveryAttempt.objects.bulk_create(attempts)
    # After the commit: only outcomes on record count. A few cache calls per batch, never raises.
    metrics_record_batch(
        outcomes=[o.outcome for o in outcomes.values()], provider_latencies_ms=[r.duration_ms for r in results]
    )
    return [outcomes[r.message.pk] for r in results]


def _mark_sent(sent: list[SendResult], *, cached: bool) -> None:
    by_token: dict[object, list[SendResult]] = defaultdict(list)
    for r in sent:
        by_token[r.message.claim_token].append(r)
    for token, group in by_token.items():
        changed = messages_mark_sent(
            claim_token=token,
            deliveries=[(r.message.pk, r.finished_at, r.result.message_id) for r in group],
            delivery_cache_pending=not cached,
        )
        if changed < len(group):
            ids = [r.message.pk for r in group]
            logger.warning(
                "%d of messages %s were sent but their leases had passed to another worker",
                len(group) - changed,
                ids,
                extra={"message_ids": ids},
            )
    for r in sent:
        logger.info(
            "sent message id=%s uuid=%s attempt=%d messageId=%s in %d ms",
            r.message.pk,
            r.message.uuid,
            r.message.attempts + 1,
            r.result.message_id,
            r.duration_ms,
            extra={"message_id": r.message.pk, "message_uuid": str(r.message.uuid)},
        )


def _mark_unsuccessful(r: SendResult, conf: DispatcherSettings) -> DeliveryOutcome:
    message, exc = r.message, r.error
    attempt = message.attempts + 1
    error = exc.reason[:MAX_ERROR_LENGTH]
    common = {
        "queryset": Message.objects.filter(claim_token=message.claim_token),
        "message_ids": [message.pk],
        "from_status": Status.PROCESSING,
        "increment_attempts": True,
        "last_error": error,
        "claim_token": None,
        "lease_expires_at": None,
    }
    if exc.permanent or attempt >= conf.max_attempts:
        messages_transition(to_status=Status.FAILED, **common)
        logger.warning(
            "failed message id=%s uuid=%s attempt=%d%s: %s",
            message.pk,
            message.uuid,
            attempt,
            "" if exc.permanent else " (no attempts left)",
            error,
            extra={"message_id": message.pk, "message_uuid": str(message.uuid)},
        )
        return DeliveryOutcome(
            message_id=message.pk, message_uuid=str(message.uuid), outcome=Outcome.FAILED, error=error
        )
    next_attempt_at = timezone.now() + timedelta(
        seconds=retry_delay(attempt=attempt, conf=conf, retry_after=exc.retry_after)
    )
    messages_transition(to_status=Status.UNSENT, next_attempt_at=next_attempt_at, **common)
    logger.warning(
        "retrying message id=%s uuid=%s attempt=%d at %s: %s",
        message.pk,
        message.uuid,
        attempt,
        next_attempt_at.isoformat(),
        error,
        extra={"message_id": message.pk, "message_uuid": str(message.uuid)},
    )
    return DeliveryOutcome(
        message_id=message.pk,
        message_uuid=str(message.uuid),
        outcome=Outcome.RETRY,
        error=error,
        next_attempt_at=next_attempt_at,
    )


def _attempt(r: SendResult, outcome: str) -> DeliveryAttempt:
    return DeliveryAttempt(
        message_id=r.message.pk,
        number=r.message.attempts + 1,
        started_at=r.started_at,
        duration_ms=r.duration_ms,
        http_status=(r.result.http_status if r.result else r.error.http_status),
        outcome=outcome,
        error="" if r.result else r.error.reason[:MAX_ERROR_LENGTH],
        provider_message_id=r.result.message_id if r.result else "",
    )


def delivery_cache_catch_up(*, limit: int = 500) -> int:
    """Write the delivery records that could not be written when their message was sent."""
    pending = list(
        Message.objects.filter(delivery_cache_pending=True).values_list("pk", "provider_message_id", "sent_at")[:limit]
    )
    if not pending or not delivery_cache_record_many(deliveries=[(pmid, sent_at) for _, pmid, sent_at in pending]):
        return 0
    ids = [pk for pk, _, _ in pending]
    Message.objects.filter(pk__in=ids).update(delivery_cache_pending=False)
    logger.info("wrote %d pending delivery cache records", len(pending), extra={"message_ids": ids})
    return len(pending)
