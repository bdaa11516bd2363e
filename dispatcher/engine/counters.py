"""The dispatcher's counters and histograms, kept in the Django default cache so the
whole cluster adds to the same numbers (served by dispatcher.monitoring.metrics).

Messages are sent by workers in other processes, often on other hosts, than the
web process Prometheus scrapes, so counters in process memory would show each
web process its own zeros. Instead workers add to integer counters in the cache
(Redis in production, where `incr` is an atomic INCRBY), once per batch and
never per message.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from django.core.cache import caches
from django_redis.cache import RedisCache
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from messages_app.models import DeliveryAttempt

logger = logging.getLogger(__name__)

Outcome = DeliveryAttempt.Outcome
CACHE_ALIAS = "default"
KEY_PREFIX = "metrics:"

# Attempt outcome -> (counter name, help). Lease expiries and releases are not
# provider answers and are not counted here.
OUTCOME_COUNTERS = {
    Outcome.SENT: ("messaging_messages_sent", "Messages the provider accepted."),
    Outcome.FAILED: ("messaging_messages_failed", "Messages failed for good (permanent error or no attempts left)."),
    Outcome.RETRY: ("messaging_messages_retried", "Attempts that failed transiently and were put back to retry."),
}


@dataclass(frozen=True)
class CacheHistogram:
    """A histogram kept as one cache counter per bucket plus a sum in milliseconds.

    Buckets are stored non-cumulative, so recording a value touches only its
    own bucket; they are summed up into Prometheus' cumulative `le` buckets at
    scrape time, and their total is the `_count`. Keys name the bucket bound,
    not its position, so changing the bounds never mixes old and new counts.
    """

    name: str
    documentation: str
    bounds: tuple[float, ...]  # upper bounds in seconds, ascending; +Inf is implied

    @property
    def les(self) -> list[str]:
        return [floatToGoString(b) for b in self.bounds] + ["+Inf"]

    def bucket_key(self, le: str) -> str:
        return f"{KEY_PREFIX}{self.name}:bucket:{le}"

    @property
    def sum_key(self) -> str:
        return f"{KEY_PREFIX}{self.name}:sum_ms"

    @property
    def keys(self) -> list[str]:
        return [*(self.bucket_key(le) for le in self.les), self.sum_key]

    def increments(self, values_ms: Iterable[int]) -> Counter[str]:
        deltas: Counter[str] = Counter()
        les = self.les
        for ms in values_ms:
            # Prometheus buckets are "less than or equal to": the first bound >= the value.
            deltas[self.bucket_key(les[bisect.bisect_left(self.bounds, ms / 1000)])] += 1
            deltas[self.sum_key] += ms
        return deltas

    def metric(self, values: dict[str, int]) -> HistogramMetricFamily:
        buckets, cumulative = [], 0
        for le in self.les:
            cumulative += values.get(self.bucket_key(le), 0)
            buckets.append((le, cumulative))
        return HistogramMetricFamily(
            self.name, self.documentation, buckets=buckets, sum_value=values.get(self.sum_key, 0) / 1000
        )


PROVIDER_LATENCY = CacheHistogram(
    "messaging_provider_latency_seconds",
    "Time one call to the provider took, whatever its answer.",
    (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
TICK_DURATION = CacheHistogram(
    "messaging_tick_duration_seconds",
    "Time one tick (or one `dispatcher drain` batch) took: recover, claim, send and record.",
    (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)


SENT_TO_DELIVERY = CacheHistogram(
    "messaging_delivery_latency_seconds",
    "Time from a message's sending to the outcome its delivery receipt reports.",
    (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0),
)
# Receipts by what became of them: the delivery outcome applied, or why none was.
RECEIPT_OUTCOMES = ("delivered", "undelivered", "unmatched", "replayed")
RECEIPTS = "messaging_receipts"


def counter_key(name: str) -> str:
    return f"{KEY_PREFIX}{name}"


def receipt_key(outcome: str) -> str:
    return counter_key(f"{RECEIPTS}:{outcome}")


# Replies received, by what they were (a keyword, an ordinary reply) or a replay.
INBOUND_KINDS = ("opt_out", "opt_in", "help", "reply", "replayed")
INBOUND = "messaging_inbound_messages"


def inbound_key(kind: str) -> str:
    return counter_key(f"{INBOUND}:{kind}")


ALL_KEYS = [
    *(counter_key(name) for name, _ in OUTCOME_COUNTERS.values()),
    *PROVIDER_LATENCY.keys,
    *TICK_DURATION.keys,
    *SENT_TO_DELIVERY.keys,
    *(receipt_key(outcome) for outcome in RECEIPT_OUTCOMES),
    *(inbound_key(kind) for kind in INBOUND_KINDS),
]


# --- recording (workers) -----------------------------------------------------------------

# Whether the last recording failed, so an outage is logged once at warning, not per batch.
_recording_failed = False


def _incr(cache, key: str, delta: int) -> None:
    try:
        cache.incr(key, delta)
    except ValueError:  # no such key yet (first ever, or the cache was flushed)
        if not cache.add(key, delta, timeout=None):
            cache.incr(key, delta)  # another process created it in between


def _add(deltas: Counter[str]) -> None:
    """Add to the shared counters; never raises, since metrics must not break sending.

    Stops at the first failure, so an unreachable cache costs a batch one
    connection attempt, not one per counter.
    """
    global _recording_failed
    try:
        cache = caches[CACHE_ALIAS]
        deltas = {key: delta for key, delta in deltas.items() if delta}
        if isinstance(cache, RedisCache):
            # One round trip for the lot: INCRBY on the cache's own keys (django-redis
            # keeps integers unpickled, so `cache.get` reads them back as they are).
            pipe = cache.client.get_client(write=True).pipeline(transaction=False)
            for key, delta in deltas.items():
                pipe.incrby(cache.make_and_validate_key(key), delta)
            pipe.execute()
        else:
            for key, delta in deltas.items():
                _incr(cache, key, delta)
    except Exception as exc:
        if not _recording_failed:
            logger.warning("could not record metrics in the cache (logged once until it recovers): %r", exc)
        else:
            logger.debug("could not record metrics in the cache: %r", exc)
        _recording_failed = True
        return
    if _recording_failed:
        logger.info("recording metrics in the cache again")
    _recording_failed = False


def metrics_record_batch(*, outcomes: Iterable[str], provider_latencies_ms: Iterable[int]) -> None:
    """Count a batch's outcomes and provider call times: one cache call per outcome kind
    and per latency bucket touched, whatever the batch size."""
    deltas: Counter[str] = Counter()
    for outcome in outcomes:
        if outcome in OUTCOME_COUNTERS:
            deltas[counter_key(OUTCOME_COUNTERS[outcome][0])] += 1
    deltas.update(PROVIDER_LATENCY.increments(provider_latencies_ms))
    _add(deltas)


def metrics_record_tick(*, duration_seconds: float) -> None:
    _add(TICK_DURATION.increments([round(duration_seconds * 1000)]))


def metrics_record_receipts(outcomes: Iterable[tuple[str, float | None]]) -> None:
    """Count receipts by outcome, with the time from sent to outcome where known: one
    cache round trip for a provider's whole batch."""
    deltas: Counter[str] = Counter()
    sent_to_outcome_ms = []
    for outcome, sent_to_outcome_seconds in outcomes:
        deltas[receipt_key(outcome)] += 1
        if sent_to_outcome_seconds is not None:
            sent_to_outcome_ms.append(max(0, round(sent_to_outcome_seconds * 1000)))
    deltas.update(SENT_TO_DELIVERY.increments(sent_to_outcome_ms))
    _add(deltas)


def metrics_record_inbound(kinds: Iterable[str]) -> None:
    """Count replies received by kind (INBOUND_KINDS): one cache round trip per callback."""
    _add(Counter(inbound_key(kind) for kind in kinds if kind in INBOUND_KINDS))
