"""What stands between a worker and a provider, shared by every worker of every qcluster
through Redis: the provider's circuit breaker and its rate limit.

Circuit: after PROVIDER_CIRCUIT_FAILURES provider-wide failures in a row
(connection refused, timeouts, 5xx) the circuit opens for
PROVIDER_CIRCUIT_COOLOFF_SECONDS: no request goes to the provider, messages fail
over or wait without spending their attempts. After the cool-off it is half open:
PROVIDER_CIRCUIT_PROBES requests per cool-off go through; a success closes it,
a failure opens it again.

Rate: at most RATE_PER_SECOND requests a second to the provider, spaced evenly:
each request takes the provider's next free slot, 1/RATE_PER_SECOND after the
previous one, reserved in Redis (GCRA), so the limit holds however many workers
send and the provider never sees a burst.

Pause: a 429 (with Retry-After, or a second) pauses the whole provider, not just
one message, for at most PROVIDER_MAX_PAUSE_SECONDS: one answer asking for years
must not halt sending for years. The pause, until when and why, is one record
in Redis (`ProviderPause`), read by the workers and by what operators look at.

Fallback when Redis is unreachable (documented in the README): each worker
process keeps its own circuit and limits itself to its share of the rate
(RATE_PER_SECOND / QCLUSTER_WORKERS), so sending goes on; several qclusters may
then exceed the rate together. Failures are logged once until Redis is back, and
after one a process keeps to its fallback for REDIS_RETRY_SECONDS before asking again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

from django.conf import settings
from django.core.cache import caches
from django_redis import get_redis_connection

from dispatcher.conf import dispatcher_settings

logger = logging.getLogger(__name__)
T = TypeVar("T")

CACHE_ALIAS = "default"
KEY_PREFIX = "provider:"
# Waiting for the rate never holds a send longer than this before giving up on it.
MAX_RATE_WAIT_SECONDS = 30.0


# After Redis failed, the gates keep to their per-process fallback this long before
# asking it again: an unreachable Redis can take SOCKET_TIMEOUT (2 s) to fail, and a
# chunk's event loop must not stall that long on every message's gate.
REDIS_RETRY_SECONDS = 1.0


class _SharedStateDown:
    """Whether the gates' Redis is reachable: its outage logged once (and its end), and
    `call` going straight to the fallback for REDIS_RETRY_SECONDS after a failure."""

    def __init__(self) -> None:
        self.down = False
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def call(self, ask_redis: Callable[[], T], fallback: Callable[[], T]) -> T:
        if self.down and time.monotonic() < self._retry_at:
            return fallback()
        try:
            answer = ask_redis()
        except Exception as exc:
            self.failed(exc)
            return fallback()
        self.ok()
        return answer

    def failed(self, exc: Exception) -> None:
        with self._lock:
            if not self.down:
                logger.warning(
                    "provider gates: Redis unreachable (%r); circuits and rate limits are per process until it is back",
                    exc,
                )
            self.down = True
            self._retry_at = time.monotonic() + REDIS_RETRY_SECONDS

    def ok(self) -> None:
        if not self.down:  # the common case, on every gate call: no lock
            return
        with self._lock:
            if self.down:
                logger.info("provider gates: Redis reachable again; circuits and rate limits are cluster-wide")
            self.down = False


_shared = _SharedStateDown()


# How often a process asks Redis its time again (one TIME round trip; clocks drift slowly).
SHARED_CLOCK_REFRESH_SECONDS = 10.0


class _SharedClock:
    """Unix time on Redis's clock, for the times the gates store in Redis and compare with now
    (a circuit's open_until, a pause's until): every host must read them on the same clock.
    On each host's own, a qcluster whose clock ran ten minutes fast opened a circuit (or paused
    a provider) until ten minutes past everybody else's now, and halted sending for all of them.
    Kept as this host's offset from Redis, asked again every SHARED_CLOCK_REFRESH_SECONDS; the
    local clock (offset 0, or the last one known) while Redis is unreachable, when the gates
    keep their state per process anyway."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._checked_at = float("-inf")

    def now(self) -> float:
        if time.monotonic() - self._checked_at >= SHARED_CLOCK_REFRESH_SECONDS:
            self._checked_at = time.monotonic()
            if getattr(settings, "REDIS_URL", None):
                self._offset = _shared.call(self._ask_offset, lambda: self._offset)
        return time.time() + self._offset

    @staticmethod
    def _ask_offset() -> float:
        before = time.time()
        seconds, microseconds = get_redis_connection(CACHE_ALIAS).time()
        after = time.time()
        return seconds + microseconds / 1_000_000 - (before + after) / 2


_clock = _SharedClock()


def shared_time() -> float:
    """Now, as Unix time on the clock every qcluster shares (Redis's), not this host's."""
    return _clock.now()


def shared_state_call(ask_redis: Callable[[], T], fallback: Callable[[], T]) -> T:
    """Ask Redis something a worker needs before each send (the gates, the recent opt-outs)
    with the gates' handling of its outage: `fallback()` while it is unreachable."""
    return _shared.call(ask_redis, fallback)


@dataclass(frozen=True)
class CircuitState:
    state: str  # closed, open or half_open
    failures: int
    open_until: float | None
    outage_since: float | None


# A worker reads a circuit's shared state at most this often (plus after each change
# it makes itself): a breaker opened by another worker is seen within this long,
# and a healthy provider costs no Redis round trip per message.
STATE_TTL_SECONDS = 0.5


class Circuit:
    """One provider's breaker; its state in the default cache (Redis), a local copy as fallback."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._local: dict[str, float] = {}
        self._lock = threading.Lock()
        self._cached: CircuitState | None = None
        self._cached_at = 0.0

    def _key(self, part: str) -> str:
        return f"{KEY_PREFIX}{self.name}:{part}"

    def _conf(self):
        return dispatcher_settings()

    def _get_many(self) -> dict[str, float]:
        keys = [self._key(p) for p in ("failures", "open_until", "outage_since")]

        def shared() -> dict[str, float]:
            return {k.rsplit(":", 1)[1]: v for k, v in caches[CACHE_ALIAS].get_many(keys).items()}

        def local() -> dict[str, float]:
            with self._lock:
                return dict(self._local)

        return _shared.call(shared, local)

    def state(self) -> CircuitState:
        cached = self._cached
        if cached is not None and time.monotonic() - self._cached_at < STATE_TTL_SECONDS:
            return self._as_of_now(cached)
        state = self._read()
        self._cached, self._cached_at = state, time.monotonic()
        return state

    @staticmethod
    def _as_of_now(state: CircuitState) -> CircuitState:
        if state.state == "open" and state.open_until is not None and shared_time() >= state.open_until:
            return CircuitState("half_open", state.failures, state.open_until, state.outage_since)
        return state

    def _read(self) -> CircuitState:
        values = self._get_many()
        open_until = values.get("open_until")
        if open_until is None:
            state = "closed"
        elif shared_time() < open_until:
            state = "open"
        else:
            state = "half_open"
        return CircuitState(state, int(values.get("failures") or 0), open_until, values.get("outage_since"))

    def allows(self) -> bool:
        """Whether a request may go now (closed, or one of the half-open circuit's probes)."""
        current = self.state()
        if current.state == "closed":
            return True
        if current.state == "open":
            return False
        # Half open by a view up to STATE_TTL_SECONDS old: ask Redis itself before probing,
        # as a failed probe may have opened the circuit again meanwhile.
        current = self._read()
        self._cached, self._cached_at = current, time.monotonic()
        if current.state != "half_open":
            return current.state == "closed"
        conf = self._conf()
        # Counted per half-open period (its open_until), never reset: a worker whose view
        # of the circuit is a moment old cannot start a fresh count after a failed probe.
        key = self._key(f"probes:{int((current.open_until or 0) * 1000)}")
        ttl = max(1, math.ceil(2 * conf.provider_circuit_cooloff_seconds))

        def shared() -> int:
            cache = caches[CACHE_ALIAS]
            cache.add(key, 0, timeout=ttl)
            return cache.incr(key)

        def local() -> int:
            with self._lock:
                self._local["probes"] = self._local.get("probes", 0) + 1
                return self._local["probes"]

        return _shared.call(shared, local) <= conf.provider_circuit_probes

    def success(self) -> None:
        current = self.state()
        if current.failures == 0 and current.open_until is None:
            return
        self._set({"failures": None, "open_until": None, "outage_since": None})
        if current.open_until is not None:
            logger.warning("provider %s: circuit closed, the provider answers again", self.name)

    def failure(self) -> None:
        """A provider-wide failure (not one message's fault)."""
        conf = self._conf()
        current = self._read()
        failures = current.failures + 1
        updates: dict[str, float | None] = {"failures": failures}
        if current.state == "half_open" or failures >= conf.provider_circuit_failures:
            now = shared_time()
            updates["open_until"] = now + conf.provider_circuit_cooloff_seconds
            if current.outage_since is None:
                updates["outage_since"] = now
            if current.state != "open":
                logger.warning(
                    "provider %s: circuit opened after %d failures in a row; no requests for %g s",
                    self.name,
                    failures,
                    conf.provider_circuit_cooloff_seconds,
                )
        self._set(updates)

    def outage_seconds(self) -> float:
        since = self.state().outage_since
        return 0.0 if since is None else max(0.0, shared_time() - since)

    def _set(self, values: dict[str, float | None]) -> None:
        # An outage is remembered for a day at most; state older than that is stale.
        self._cached = None
        with self._lock:
            for part, value in values.items():
                if value is None:
                    self._local.pop(part, None)
                else:
                    self._local[part] = value

        def shared() -> None:
            cache = caches[CACHE_ALIAS]
            cache.set_many({self._key(p): v for p, v in values.items() if v is not None}, timeout=86_400)
            gone = [self._key(p) for p, v in values.items() if v is None]
            if gone:
                cache.delete_many(gone)

        _shared.call(shared, lambda: None)  # the local copy above is the fallback


# The provider's next free sending slot, reserved atomically on Redis's own clock
# (every host agrees on it). GCRA: slots are 1/rate apart; a caller may reserve one
# up to ARGV[2] seconds ahead and waits for it. Returns {reserved, seconds to wait}.
_RESERVE_SLOT = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local interval, ahead = tonumber(ARGV[1]), tonumber(ARGV[2])
local slot = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), t)
if slot - t > ahead then
    return {0, tostring(slot - t)}
end
redis.call('SET', KEYS[1], tostring(slot + interval), 'PX', math.ceil((slot - t + interval) * 1000) + 1000)
return {1, tostring(slot - t)}
"""
# How far ahead a worker may reserve a slot: enough for every thread to keep one,
# short enough that a stopping worker wastes little of the rate.
RESERVE_AHEAD_SECONDS = 0.25


class _LocalSlots:
    """The same slot rule in one process, for when Redis is unreachable."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = 0.0
        self._lock = threading.Lock()

    def reserve(self, ahead: float) -> tuple[bool, float]:
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now)
            if slot - now > ahead:
                return False, slot - now
            self._next = slot + self.interval
            return True, slot - now


@dataclass(frozen=True)
class Pause:
    """A provider's pause after a 429: no worker asks it before `until` (Unix time); `reason` says why."""

    until: float
    reason: str

    def seconds_left(self) -> float:
        return max(0.0, self.until - shared_time())


class ProviderPause:
    """One provider's pause: one record in the default cache (Redis) for every worker of every
    qcluster and for the status pages, with this process's copy of the last pause it set for
    when Redis is unreachable (never read while Redis answers, so it cannot outlive the shared one)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._key = f"{KEY_PREFIX}{name}:pause"
        self._local: Pause | None = None
        self._seen: Pause | None = None
        self._seen_at = float("-inf")

    def set(self, seconds: float, *, reason: str) -> Pause:
        """Pause the provider for `seconds`, at most PROVIDER_MAX_PAUSE_SECONDS (the reason then
        says so); the newest pause replaces the one before. Return the pause set."""
        most = dispatcher_settings().provider_max_pause_seconds
        if not seconds <= most:  # NaN included
            seconds, reason = most, f"{reason}; paused {most:g} s, the most PROVIDER_MAX_PAUSE_SECONDS allows"
        pause = Pause(until=shared_time() + max(0.0, seconds), reason=reason)
        self._local = pause
        self._seen, self._seen_at = pause, time.monotonic()
        _shared.call(
            lambda: caches[CACHE_ALIAS].set(
                self._key, {"until": pause.until, "reason": pause.reason}, timeout=max(1, math.ceil(seconds))
            ),
            lambda: None,  # the local copy above is the fallback
        )
        return pause

    def current(self) -> Pause | None:
        """The pause in force now, if any (asked of Redis each time)."""

        def shared() -> Pause | None:
            stored = caches[CACHE_ALIAS].get(self._key)
            return Pause(until=stored["until"], reason=stored["reason"]) if stored else None

        pause = _shared.call(shared, lambda: self._local)
        return pause if pause is not None and pause.until > shared_time() else None

    def seen(self) -> Pause | None:
        """`current()` as read at most STATE_TTL_SECONDS ago (or as set here): asked before every
        request, so that an unpaused provider costs no Redis round trip per message."""
        now = time.monotonic()
        if now - self._seen_at >= STATE_TTL_SECONDS:
            self._seen, self._seen_at = self.current(), now
        pause = self._seen
        return pause if pause is not None and pause.until > shared_time() else None


class RateGate:
    """The provider's cluster-wide rate and its 429 pause.

    Requests are spaced evenly, 1/RATE_PER_SECOND apart, by reserving slots in
    Redis (GCRA), rather than counted per window: a window admits its whole
    allowance at once after any stall, and the provider would see that burst."""

    def __init__(self, name: str, rate_per_second: float) -> None:
        self.name = name
        self.rate = rate_per_second
        self.interval = 1.0 / rate_per_second if rate_per_second > 0 else None
        workers = max(1, settings.Q_CLUSTER.get("workers", 1))
        self._local = _LocalSlots(self.interval * workers) if self.interval else None
        self._script = None
        self._pause = ProviderPause(name)

    def pause(self, seconds: float, *, reason: str) -> float:
        """A 429: the whole provider waits `seconds`, at most PROVIDER_MAX_PAUSE_SECONDS (every
        worker, through Redis). Return the seconds it waits."""
        pause = self._pause.set(seconds, reason=reason)
        waits = pause.seconds_left()
        logger.warning("provider %s: throttled (%s); every worker waits %.1f s", self.name, pause.reason, waits)
        return waits

    def paused_for(self) -> float:
        """Seconds the provider's pause has left (asked of Redis)."""
        pause = self._pause.current()
        return pause.seconds_left() if pause is not None else 0.0

    def acquire(self, *, should_stop: Callable[[], bool], max_wait: float = MAX_RATE_WAIT_SECONDS) -> bool:
        """Wait for the provider's pause and for a slot of its rate; False if told to stop or it took too long."""
        steps = self.acquire_steps(should_stop=should_stop, max_wait=max_wait)
        try:
            while True:
                time.sleep(next(steps))
        except StopIteration as done:
            return done.value

    def acquire_steps(
        self, *, should_stop: Callable[[], bool], max_wait: float = MAX_RATE_WAIT_SECONDS
    ) -> Generator[float, None, bool]:
        """`acquire` as a generator that yields the seconds to wait instead of sleeping them,
        so that a thread sleeps them and an event loop awaits them; returns the outcome."""
        if self.interval is None and self._pause.seen() is None:
            return True  # no limit and no pause: no waiting, nothing to ask
        deadline = time.monotonic() + max_wait
        while True:
            seen = self._pause.seen()
            pause = seen.seconds_left() if seen is not None else 0.0
            if pause <= 0:
                if self.interval is None:
                    return True
                reserved, wait = self._reserve()
                if reserved:
                    if wait > 0:
                        yield wait
                    return True
                pause = wait - RESERVE_AHEAD_SECONDS
            if should_stop() or time.monotonic() > deadline:
                return False
            yield min(max(pause, 0.001), 0.25)

    def _reserve(self) -> tuple[bool, float]:
        def local() -> tuple[bool, float]:
            return self._local.reserve(RESERVE_AHEAD_SECONDS)

        if not getattr(settings, "REDIS_URL", None):
            return local()

        def shared() -> tuple[bool, float]:
            if self._script is None:
                self._script = get_redis_connection(CACHE_ALIAS).register_script(_RESERVE_SLOT)
            reserved, wait = self._script(
                keys=[f"{KEY_PREFIX}{self.name}:next_slot"], args=[self.interval, RESERVE_AHEAD_SECONDS]
            )
            return bool(reserved), float(wait)

        return _shared.call(shared, local)


class ProviderGate:
    def __init__(self, name: str, rate_per_second: float) -> None:
        self.circuit = Circuit(name)
        self.rate = RateGate(name, rate_per_second)
