"""Sending claimed messages and recording each outcome.

Every write here matches the message's claim token, so a worker whose lease
ran out (and whose message another worker took over) changes nothing.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import close_old_connections
from django.utils import timezone

from dispatcher.claiming import release_claimed
from dispatcher.conf import DispatcherSettings, dispatcher_settings
from dispatcher.delivery_cache import delivery_cache_record
from dispatcher.providers import BaseProvider, ProviderError
from messages_app.models import DeliveryAttempt, Message
from messages_app.services import messages_transition

logger = logging.getLogger(__name__)

Status = Message.Status
Outcome = DeliveryAttempt.Outcome
MAX_ERROR_LENGTH = 2000
# However long a provider asks us to wait, come back within a day.
MAX_RETRY_AFTER_SECONDS = 86_400


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


def retry_delay(*, attempt: int, conf: DispatcherSettings, retry_after: float | None = None) -> float:
    """Seconds before attempt `attempt + 1`: the provider's Retry-After if it gave one,
    else exponential backoff with jitter (half to all of base x 2^(attempt-1), capped)."""
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_AFTER_SECONDS)
    ceiling = min(conf.retry_max_seconds, conf.retry_base_seconds * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def _owned(message: Message):
    return Message.objects.filter(claim_token=message.claim_token)


def deliver_message(
    *, message: Message, provider: BaseProvider, conf: DispatcherSettings | None = None
) -> DeliveryOutcome:
    """Send one claimed (`processing`) message and record the outcome: sent, retry or failed."""
    conf = conf or dispatcher_settings()
    attempt = message.attempts + 1
    started_at = timezone.now()
    started = time.monotonic()
    http_status: int | None = None
    retry_after: float | None = None
    try:
        result = provider.send(message)
    except ProviderError as exc:
        error, permanent, http_status, retry_after = exc.reason, exc.permanent, exc.http_status, exc.retry_after
    except Exception as exc:  # a bug in a backend must not leave the message in processing
        logger.exception("provider backend crashed on message id=%s uuid=%s", message.pk, message.uuid)
        error, permanent = f"unexpected error in provider backend: {type(exc).__name__}: {exc}", False
    else:
        duration_ms = int((time.monotonic() - started) * 1000)
        sent_at = timezone.now()
        # Cache first, then mark sent: a reader that sees `sent` finds the record.
        # A cache failure never turns a delivery into a failure: the record is
        # flagged and written by a later tick (or `dispatcher recache`).
        cached = delivery_cache_record(provider_message_id=result.message_id, sent_at=sent_at)
        changed = messages_transition(
            queryset=_owned(message),
            message_ids=[message.pk],
            from_status=Status.PROCESSING,
            to_status=Status.SENT,
            increment_attempts=True,
            sent_at=sent_at,
            provider_message_id=result.message_id,
            delivery_cache_pending=not cached,
            last_error="",
            claim_token=None,
            lease_expires_at=None,
        )
        _record_attempt(
            message, attempt, started_at, duration_ms, result.http_status, Outcome.SENT, "", result.message_id
        )
        if not changed:
            logger.warning(
                "sent message id=%s uuid=%s messageId=%s but its lease had passed to another worker",
                message.pk,
                message.uuid,
                result.message_id,
            )
        logger.info(
            "sent message id=%s uuid=%s attempt=%d messageId=%s in %d ms",
            message.pk,
            message.uuid,
            attempt,
            result.message_id,
            duration_ms,
        )
        return DeliveryOutcome(
            message_id=message.pk,
            message_uuid=str(message.uuid),
            outcome=Outcome.SENT,
            provider_message_id=result.message_id,
            cached=cached,
        )

    duration_ms = int((time.monotonic() - started) * 1000)
    error = error[:MAX_ERROR_LENGTH]
    released = {"last_error": error, "claim_token": None, "lease_expires_at": None}
    if permanent or attempt >= conf.max_attempts:
        outcome, next_attempt_at = Outcome.FAILED, None
        messages_transition(
            queryset=_owned(message),
            message_ids=[message.pk],
            from_status=Status.PROCESSING,
            to_status=Status.FAILED,
            increment_attempts=True,
            **released,
        )
        logger.warning(
            "failed message id=%s uuid=%s attempt=%d%s: %s",
            message.pk,
            message.uuid,
            attempt,
            "" if permanent else " (no attempts left)",
            error,
        )
    else:
        outcome = Outcome.RETRY
        next_attempt_at = timezone.now() + timedelta(
            seconds=retry_delay(attempt=attempt, conf=conf, retry_after=retry_after)
        )
        messages_transition(
            queryset=_owned(message),
            message_ids=[message.pk],
            from_status=Status.PROCESSING,
            to_status=Status.UNSENT,
            increment_attempts=True,
            next_attempt_at=next_attempt_at,
            **released,
        )
        logger.warning(
            "retrying message id=%s uuid=%s attempt=%d at %s: %s",
            message.pk,
            message.uuid,
            attempt,
            next_attempt_at.isoformat(),
            error,
        )
    _record_attempt(message, attempt, started_at, duration_ms, http_status, outcome, error, "")
    return DeliveryOutcome(
        message_id=message.pk,
        message_uuid=str(message.uuid),
        outcome=outcome,
        error=error,
        next_attempt_at=next_attempt_at,
    )


def _record_attempt(
    message: Message,
    number: int,
    started_at: datetime,
    duration_ms: int,
    http_status: int | None,
    outcome: str,
    error: str,
    provider_message_id: str,
) -> None:
    DeliveryAttempt.objects.create(
        message_id=message.pk,
        number=number,
        started_at=started_at,
        duration_ms=duration_ms,
        http_status=http_status,
        outcome=outcome,
        error=error,
        provider_message_id=provider_message_id,
    )


def deliver_batch(
    *,
    messages: list[Message],
    provider: BaseProvider,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[DeliveryOutcome]:
    """Send a claimed batch in order. If `should_stop()` turns true (the worker is
    shutting down), the send in flight finishes and the rest is released unsent."""
    conf = dispatcher_settings()
    outcomes: list[DeliveryOutcome] = []
    for index, message in enumerate(messages):
        if should_stop():
            release_claimed(messages=messages[index:])
            break
        try:
            outcomes.append(deliver_message(message=message, provider=provider, conf=conf))
        except Exception:
            # Recording the outcome failed (database gone?). The message keeps
            # its lease and comes back when the lease expires; go on with the
            # rest on a fresh connection if the old one is broken.
            logger.exception("could not record the outcome of message id=%s uuid=%s", message.pk, message.uuid)
            close_old_connections()
    return outcomes


def delivery_cache_catch_up(*, limit: int = 500) -> int:
    """Write the delivery records that could not be written when their message was sent."""
    pending = list(
        Message.objects.filter(delivery_cache_pending=True).values_list("pk", "provider_message_id", "sent_at")[:limit]
    )
    written = []
    for pk, provider_message_id, sent_at in pending:
        if not delivery_cache_record(provider_message_id=provider_message_id, sent_at=sent_at):
            break  # still unreachable: don't wait out a timeout for every record
        written.append(pk)
    if written:
        Message.objects.filter(pk__in=written).update(delivery_cache_pending=False)
        logger.info("wrote %d pending delivery cache records", len(written))
    return len(written)
