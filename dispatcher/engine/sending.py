"""Calling the provider: one message (`send_one`), or many at once (`send_concurrently`),
which hands back results as they complete so they can be recorded continuously."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from datetime import datetime

from django.utils import timezone

from dispatcher.conf import DispatcherSettings
from dispatcher.engine.providers import BaseProvider, ProviderError, ProviderResult
from messages_app.models import Message
from messages_app.transitions import AttemptRecord

logger = logging.getLogger(__name__)

# However long a provider asks us to wait, come back within a day.
MAX_RETRY_AFTER_SECONDS = 86_400
# How often sends in flight are collected (and the stop condition checked).
COLLECT_SECONDS = 0.2


@dataclass(frozen=True)
class SendResult:
    """What one call to the provider produced, before anything is written."""

    message: Message
    started_at: datetime
    duration_ms: int
    result: ProviderResult | None = None
    error: ProviderError | None = None

    def attempt(self) -> AttemptRecord:
        return AttemptRecord(
            message_id=self.message.pk,
            number=self.message.attempts + 1,
            started_at=self.started_at,
            duration_ms=self.duration_ms,
            http_status=self.result.http_status if self.result else self.error.http_status,
            error=self.error.reason if self.error else "",
            provider_message_id=self.result.message_id if self.result else "",
        )


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
        duration_ms=int((time.monotonic() - started) * 1000),
        result=result,
        error=error,
    )


@dataclass
class Unsent:
    """The messages `send_concurrently` never started: told to stop before them
    (`messages`), or skipped because `skip` said so when their turn came (`skipped`)."""

    messages: list[Message]
    skipped: list[Message] = field(default_factory=list)


def send_concurrently(
    messages: list[Message],
    *,
    provider: BaseProvider,
    concurrency: int,
    should_stop: Callable[[], bool],
    unsent: Unsent,
    skip: Callable[[Message], bool] = lambda message: False,
) -> Iterator[list[SendResult]]:
    """Send `messages`, `concurrency` at a time, yielding the results completed since the
    last yield (possibly none, at least every COLLECT_SECONDS). Once `should_stop()` turns true no
    further send starts; those in flight finish, and the rest end up in `unsent`."""
    if concurrency <= 1 or len(messages) <= 1:
        for index, message in enumerate(messages):
            if should_stop():
                unsent.messages = messages[index:]
                return
            if skip(message):
                unsent.skipped.append(message)
                continue
            yield [send_one(message=message, provider=provider)]
        return

    pool = provider.executor(concurrency)
    pending_messages = list(reversed(messages))
    in_flight: set[Future] = set()
    stopping = False
    while pending_messages or in_flight:
        if not stopping and should_stop():
            stopping = True
        # Keep `concurrency` sends in flight: submitting as others finish (rather
        # than all at once) means a stop leaves nothing queued in the pool.
        while not stopping and pending_messages and len(in_flight) < concurrency:
            message = pending_messages.pop()
            if skip(message):
                unsent.skipped.append(message)
                continue
            in_flight.add(pool.submit(send_one, message=message, provider=provider))
        if not in_flight:
            break
        done, in_flight = wait(in_flight, timeout=COLLECT_SECONDS, return_when=FIRST_COMPLETED)
        # Yields also when nothing finished, so the caller can flush and check on its lease.
        yield [future.result() for future in done]
    unsent.messages = list(reversed(pending_messages))
