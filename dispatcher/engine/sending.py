"""Calling the provider: one message (`send_one`), or many at once (`send_concurrently`),
which hands back results as they complete so they can be recorded continuously."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone

from consent.recent_opt_outs import number_recently_opted_out, numbers_recently_opted_out
from consent.selectors import messages_to_suppress
from dispatcher.conf import DispatcherSettings, dispatcher_settings
from dispatcher.engine.providers import BaseProvider, ProviderError, ProviderResult, ProviderSet
from dispatcher.engine.providers.gate import shared_state_call, shared_time
from messages_app.models import Message
from messages_app.transitions import MAX_DELAY_SECONDS, AttemptRecord

logger = logging.getLogger(__name__)

# How often sends in flight are collected (and the stop condition checked).
COLLECT_SECONDS = 0.2


@dataclass(frozen=True)
class SendResult:
    """What one message's try produced (through one provider, or several when the
    first ones provably did not take it), before anything is written."""

    message: Message
    started_at: datetime
    duration_ms: int
    provider: str = ""
    result: ProviderResult | None = None
    error: ProviderError | None = None
    # No provider could take it (circuits open, throttled, an outage): the message
    # waits without spending an attempt, for `defer_seconds`.
    defer: bool = False
    defer_seconds: float = 0.0
    # No provider was asked: the worker was told to stop, or may no longer hold the lease,
    # before the request went out. The message goes back with those never started (`Unsent`).
    not_started: bool = False
    # No provider was asked: the number opted out after the chunk's check at its start (why).
    # The message ends `suppressed`.
    suppressed: str = ""

    def attempt(self) -> AttemptRecord:
        return AttemptRecord(
            message_id=self.message.pk,
            number=self.message.attempts + 1,
            started_at=self.started_at,
            duration_ms=self.duration_ms,
            http_status=self.result.http_status if self.result else self.error.http_status,
            error=self.error.reason if self.error else "",
            provider_message_id=self.result.message_id if self.result else "",
            provider=self.provider,
        )


def retry_delay(*, attempt: int, conf: DispatcherSettings, retry_after: float | None = None) -> float:
    """Seconds before attempt `attempt + 1`: the provider's Retry-After if it gave one,
    else exponential backoff with jitter (half to all of base x 2^(attempt-1), capped);
    a day at most, however long the provider asks us to wait."""
    if retry_after is not None:
        return min(retry_after, MAX_DELAY_SECONDS)
    ceiling = min(conf.retry_max_seconds, conf.retry_base_seconds * 2 ** (attempt - 1), MAX_DELAY_SECONDS)
    return random.uniform(ceiling / 2, ceiling)


def _crashed(message: Message, exc: Exception) -> ProviderError:
    # A bug in a backend must not leave the message in processing.
    logger.exception(
        "provider backend crashed on message id=%s uuid=%s",
        message.pk,
        message.uuid,
        extra={"message_id": message.pk, "message_uuid": str(message.uuid)},
    )
    return ProviderError(f"unexpected error in provider backend: {type(exc).__name__}: {exc}")


def _call(provider: BaseProvider, message: Message) -> tuple[ProviderResult | None, ProviderError | None]:
    try:
        return provider.send(message), None
    except ProviderError as exc:
        return None, exc
    except Exception as exc:
        return None, _crashed(message, exc)


async def _call_async(provider: BaseProvider, message: Message) -> tuple[ProviderResult | None, ProviderError | None]:
    try:
        return await provider.send_async(message), None
    except ProviderError as exc:
        return None, exc
    except Exception as exc:
        return None, _crashed(message, exc)


@dataclass(frozen=True)
class _Call:
    """A step of `_try_route`: ask this provider to send the message, and send back (result, error)."""

    provider: BaseProvider
    message: Message


@dataclass(frozen=True)
class _ConfirmOptOut:
    """A step of `_try_route`: the message's number is among the recent opt-outs; ask the
    database why it may not be sent, and send back the reason, "" (it may), or None (no answer)."""

    message: Message


# What `_try_route` yields: a provider to call, an opt-out to confirm, or seconds to wait (for
# the provider's rate).
_Step = _Call | _ConfirmOptOut | float


def send_one(
    *,
    message: Message,
    provider: BaseProvider | ProviderSet,
    should_stop: Callable[[], bool] = lambda: False,
    clock_offset: timedelta = timedelta(0),
    opted_out_known: bool | None = None,
) -> SendResult:
    """Try `message` through its route of providers (`_try_route`) from this thread; never raises."""
    steps = _try_route(
        message=message,
        providers=ProviderSet.of(provider),
        should_stop=should_stop,
        clock_offset=clock_offset,
        opted_out_known=opted_out_known,
    )
    step = _advance(steps, None)
    while not isinstance(step, SendResult):
        if isinstance(step, _Call):
            step = _advance(steps, _call(step.provider, step.message))
        elif isinstance(step, _ConfirmOptOut):
            step = _advance(steps, _opt_out_reason(step.message))
        else:
            time.sleep(step)
            step = _advance(steps, None)
    return step


async def send_one_async(
    *,
    message: Message,
    providers: ProviderSet,
    should_stop: Callable[[], bool],
    clock_offset: timedelta = timedelta(0),
    opted_out_known: bool | None = None,
) -> SendResult:
    """`send_one` in an event loop, for providers that send without a thread (`send_async`)."""
    steps = _try_route(
        message=message,
        providers=providers,
        should_stop=should_stop,
        clock_offset=clock_offset,
        opted_out_known=opted_out_known,
    )
    step = _advance(steps, None)
    while not isinstance(step, SendResult):
        if isinstance(step, _Call):
            step = _advance(steps, await _call_async(step.provider, step.message))
        elif isinstance(step, _ConfirmOptOut):
            # The ORM refuses a running event loop: the query (the rare path) from a thread.
            step = _advance(steps, await asyncio.to_thread(_opt_out_reason, step.message))
        else:
            await asyncio.sleep(step)
            step = _advance(steps, None)
    return step


def _recently_opted_out(message: Message) -> bool:
    """One Redis lookup before each send; False while Redis is unreachable (the chunk's
    check at its start is then the only one)."""
    return shared_state_call(
        lambda: number_recently_opted_out(phone_number=message.recipient_phone_number), lambda: False
    )


def _recently_opted_out_among(messages: list[Message]) -> set[str]:
    """The numbers of `messages` among the recent opt-outs, in one Redis round trip for a
    wave of sends about to start; none while Redis is unreachable (as `_recently_opted_out`)."""
    numbers = list({m.recipient_phone_number for m in messages})
    return shared_state_call(lambda: numbers_recently_opted_out(phone_numbers=numbers), set)


def _opt_out_reason(message: Message) -> str | None:
    """Why `message` may not be sent, as the database says now ("" if it may: its number
    opted in again, or it answers the person's own STOP); None if the database cannot say."""
    opened_here = connection.connection is None
    try:
        return messages_to_suppress(message_ids=[message.pk]).get(message.pk, "")
    except Exception:
        logger.warning("could not confirm the opt-out of message id=%s; not sent", message.pk, exc_info=True)
        return None
    finally:
        if opened_here:
            connection.close()  # a send thread's connection: not held for the thread's life


def _advance(steps: Generator[_Step, object, SendResult], reply: object) -> _Step | SendResult:
    """Hand `reply` (a call's (result, error), or None after a wait) to `_try_route`: its
    next step, or the SendResult it ended with."""
    try:
        return steps.send(reply)
    except StopIteration as done:
        return done.value


def _try_route(
    *,
    message: Message,
    providers: ProviderSet,
    should_stop: Callable[[], bool],
    clock_offset: timedelta,
    opted_out_known: bool | None = None,
) -> Generator[_Step, tuple[ProviderResult | None, ProviderError | None] | None, SendResult]:
    """Try `message` through its route of providers: the one rule, whether a thread
    (`send_one`) or an event loop (`send_one_async`) carries out its steps.

    A provider whose circuit is open is skipped; one that provably did not take
    the message (refused, throttled) hands it to the next. A failure that leaves
    the outcome unknown (a timeout, a 5xx) ends the try: only that provider may
    be asked again, later, with the same Idempotency-Key (the message becomes
    sticky to it). When no provider could take it, the message is deferred
    without spending an attempt while the outage lasts less than
    PROVIDER_OUTAGE_GRACE_SECONDS. `clock_offset` (the database's clock minus
    ours) stamps the attempt by the database's clock.

    Right before a request, a number among the recent opt-outs (an opt-out recorded
    after the chunk's own check) is confirmed with the database: the message then
    ends suppressed, no provider asked. `opted_out_known` is that lookup made for the
    wave of sends this one started with (`send_concurrently`: one round trip for them
    all instead of one each); it stands only while the route has not waited (for a
    rate, or for a provider that refused it), after which the number is looked up again.
    """
    conf = dispatcher_settings()
    started_at = timezone.now() + clock_offset
    started = time.monotonic()
    error: ProviderError | None = None
    used = ""
    defer_seconds: list[float] = []
    may_send = False  # the database said so, after a recent opt-out of the number
    for name in providers.route(message):
        gate = providers.gates[name]
        if not gate.circuit.allows():
            state = gate.circuit.state()
            defer_seconds.append(max(1.0, (state.open_until or shared_time()) - shared_time()))
            error = error or ProviderError(f"provider {name}: circuit open, not asked", not_sent=True)
            used = used or name
            continue
        rate_steps = gate.rate.acquire_steps(should_stop=should_stop)
        try:
            wait = next(rate_steps)
            opted_out_known = None  # waited for the rate: looked up again after the wait
            while True:
                yield wait
                wait = next(rate_steps)
        except StopIteration as done:
            acquired = done.value
        if should_stop():
            # Asked right before each request, after any wait for the rate: a worker frozen
            # past its lease (SIGSTOP, a paused VM) must not send what another now holds.
            return SendResult(message, started_at, _ms(started), not_started=True)
        if not acquired:
            defer_seconds.append(max(1.0, gate.rate.paused_for()))
            error = ProviderError(f"provider {name}: over its rate, not asked", not_sent=True)
            used = used or name
            continue
        recently = _recently_opted_out(message) if opted_out_known is None else opted_out_known
        if not may_send and recently:
            reason = yield _ConfirmOptOut(message)
            if reason is None:  # the database cannot say: not sent, given back with the unstarted
                return SendResult(message, started_at, _ms(started), not_started=True)
            if reason:
                return SendResult(message, started_at, _ms(started), suppressed=reason)
            may_send = True
        result, error = yield _Call(providers.providers[name], message)
        opted_out_known = None  # time passed: a next provider's try looks it up again
        used = name
        if result is not None:
            gate.circuit.success()
            return SendResult(message, started_at, _ms(started), provider=name, result=result)
        if error.http_status == 429:
            asked = error.retry_after
            paused = gate.rate.pause(1.0 if asked is None else asked, reason=_throttled(asked))
            # The provider as a whole waits PROVIDER_MAX_PAUSE_SECONDS at most (one answer must not
            # halt every message for long); this message waits what was asked, a day at most.
            defer_seconds.append(paused if asked is None else min(asked, MAX_DELAY_SECONDS))
        elif error.provider_wide:
            gate.circuit.failure()
            if gate.circuit.state().state != "closed":
                defer_seconds.append(conf.provider_circuit_cooloff_seconds)
        else:
            gate.circuit.success()  # it answered: the provider is up, this message is the problem
        if not (error.not_sent and not message.provider):
            break  # the outcome is unknown, or the message's own fault: no failover
    defer = _defer(error, providers, used, conf) and bool(defer_seconds)
    return SendResult(
        message,
        started_at,
        _ms(started),
        provider=used,
        error=error,
        defer=defer,
        defer_seconds=min(max(defer_seconds), MAX_DELAY_SECONDS) if defer_seconds else 0.0,
    )


def _throttled(retry_after: float | None) -> str:
    """Why a provider is paused, as the status pages show it."""
    if retry_after is None:
        return "429 without Retry-After"
    # Whole seconds past a million: `g` would write 1e+09.
    return f"429 Retry-After {retry_after:g} s" if retry_after < 1e6 else f"429 Retry-After {retry_after:.0f} s"


def _defer(error: ProviderError | None, providers: ProviderSet, name: str, conf: DispatcherSettings) -> bool:
    """Whether this failure is the provider's (an outage or throttling within the grace
    period) rather than the message's: then it costs the message no attempt."""
    if error is None or error.permanent:
        return False
    if error.not_sent:
        return providers.gates[name].circuit.outage_seconds() < conf.provider_outage_grace_seconds or (
            error.http_status == 429
        )
    if error.provider_wide:
        circuit = providers.gates[name].circuit
        return circuit.state().state != "closed" and circuit.outage_seconds() < conf.provider_outage_grace_seconds
    return False


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


@dataclass
class Unsent:
    """The messages `send_concurrently` never started: told to stop before them
    (`messages`), or skipped because `skip` said so when their turn came (`skipped`)."""

    messages: list[Message]
    skipped: list[Message] = field(default_factory=list)


def send_concurrently(
    messages: list[Message],
    *,
    provider: BaseProvider | ProviderSet,
    concurrency: int,
    should_stop: Callable[[], bool],
    unsent: Unsent,
    skip: Callable[[Message], bool] = lambda message: False,
    clock_offset: timedelta = timedelta(0),
) -> Iterator[list[SendResult]]:
    """Send `messages`, `concurrency` at a time, yielding the results completed since the
    last yield (possibly none, at least every COLLECT_SECONDS). Once `should_stop()` turns true no
    further send starts (it is asked again right before each request); those in flight finish,
    and the rest end up in `unsent`."""
    if concurrency <= 1 or len(messages) <= 1:
        for index, message in enumerate(messages):
            if should_stop():
                unsent.messages = messages[index:]
                return
            if skip(message):
                unsent.skipped.append(message)
                continue
            result = send_one(message=message, provider=provider, should_stop=should_stop, clock_offset=clock_offset)
            if result.not_started:
                unsent.messages = messages[index:]
                return
            yield [result]
        return

    providers = ProviderSet.of(provider)
    if providers.sends_async:
        # One event loop of the worker's, run only while this collects results: the
        # caller records them (Django's ORM, which refuses a running loop) in between.
        loop = providers.event_loop()
        loop.run_until_complete(_settle())

        def start(message: Message, opted_out: bool) -> asyncio.Task:
            return loop.create_task(
                send_one_async(
                    message=message,
                    providers=providers,
                    should_stop=should_stop,
                    clock_offset=clock_offset,
                    opted_out_known=opted_out,
                )
            )

        def wait_some(in_flight: set) -> tuple[set, set]:
            return loop.run_until_complete(
                asyncio.wait(in_flight, timeout=COLLECT_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            )

        def abandon(in_flight: set) -> None:
            # The caller gave up (its recording failed): nothing may go on sending in the loop
            # unseen; these outcomes stay unknown and the messages come back after their lease.
            for task in in_flight:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*in_flight, return_exceptions=True))

    else:
        pool = providers.executor(concurrency)

        def start(message: Message, opted_out: bool) -> Future:
            return pool.submit(
                send_one,
                message=message,
                provider=providers,
                should_stop=should_stop,
                clock_offset=clock_offset,
                opted_out_known=opted_out,
            )

        def wait_some(in_flight: set) -> tuple[set, set]:
            return wait(in_flight, timeout=COLLECT_SECONDS, return_when=FIRST_COMPLETED)

        def abandon(in_flight: set) -> None:
            pass  # a thread's send cannot be cut short; its result is dropped

    pending_messages = list(reversed(messages))
    in_flight: set = set()
    not_started: list[Message] = []
    stopping = False
    try:
        while pending_messages or in_flight:
            if not stopping and should_stop():
                stopping = True
            # Keep `concurrency` sends in flight: starting more as others finish (rather
            # than all at once) means a stop leaves nothing queued.
            wave: list[Message] = []
            while not stopping and pending_messages and len(in_flight) + len(wave) < concurrency:
                message = pending_messages.pop()
                if skip(message):
                    unsent.skipped.append(message)
                    continue
                wave.append(message)
            if wave:
                # The recent opt-outs, for the whole wave in one round trip, right before it starts.
                opted_out = _recently_opted_out_among(wave)
                for message in wave:
                    in_flight.add(start(message, message.recipient_phone_number in opted_out))
            if not in_flight:
                break
            done, in_flight = wait_some(in_flight)
            results = [handle.result() for handle in done]
            not_started.extend(r.message for r in results if r.not_started)
            # Yields also when nothing finished, so the caller can flush and check on its lease.
            yield [r for r in results if not r.not_started]
    finally:
        if in_flight:
            abandon(in_flight)
    unsent.messages = not_started + list(reversed(pending_messages))


async def _settle() -> None:
    """Give the event loop a few turns before reusing its pooled connections, so that
    connections the provider closed since the last chunk are noticed and not reused."""
    for _ in range(3):
        await asyncio.sleep(0)
