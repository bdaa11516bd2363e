"""Prometheus metrics for the whole cluster, served by any web process at GET /metrics.

Messages are sent by workers in other processes, often on other hosts, than
the web process Prometheus scrapes, so counters in process memory would show
each web process its own zeros. Instead the dispatcher adds to integer
counters in the Django default cache (Redis in production, where `incr` is an
atomic INCRBY), once per batch and never per message, and a custom collector
reads them all in one `get_many` at scrape time. Queue depth is counted in the
database at scrape time, so it is right even when the cache is not.

The counters live as long as the cache keeps them: a Redis flush or restart
without persistence starts them again from zero, which Prometheus' rate()
and increase() treat as a counter reset.
"""

from __future__ import annotations

import bisect
import logging
import secrets
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from django.core.cache import caches
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from dispatcher.conf import dispatcher_settings
from messages_app.models import DeliveryAttempt
from messages_app.selectors import message_status_counts

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


def _counter_key(name: str) -> str:
    return f"{KEY_PREFIX}{name}"


ALL_KEYS = [*(_counter_key(name) for name, _ in OUTCOME_COUNTERS.values()), *PROVIDER_LATENCY.keys, *TICK_DURATION.keys]


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
        for key, delta in deltas.items():
            if delta:
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
            deltas[_counter_key(OUTCOME_COUNTERS[outcome][0])] += 1
    deltas.update(PROVIDER_LATENCY.increments(provider_latencies_ms))
    _add(deltas)


def metrics_record_tick(*, duration_seconds: float) -> None:
    _add(TICK_DURATION.increments([round(duration_seconds * 1000)]))


# --- reading (the web, at scrape time) -----------------------------------------------------


class MessagingCollector:
    """Reads the shared counters from the cache and the queue from the database, per scrape.

    Either source failing drops only its own metrics and sets its `*_up` gauge
    to 0, so a scrape always answers.
    """

    def collect(self) -> Iterator[Metric]:
        yield from self._queue()
        yield from self._shared()

    def _queue(self) -> Iterator[Metric]:
        try:
            counts = message_status_counts()
        except Exception as exc:
            logger.warning("metrics: could not count the queue in the database: %r", exc)
            yield _up("messaging_metrics_database_up", "Whether this scrape could count the queue.", False)
            return
        queue = GaugeMetricFamily(
            "messaging_queue_messages", "Messages in each status, counted in the database.", labels=["status"]
        )
        for status, count in counts.items():
            queue.add_metric([status], count)
        yield queue
        yield _up("messaging_metrics_database_up", "Whether this scrape could count the queue.", True)

    def _shared(self) -> Iterator[Metric]:
        help_text = "Whether this scrape could read the counters the dispatcher records in the cache."
        try:
            values = caches[CACHE_ALIAS].get_many(ALL_KEYS)
        except Exception as exc:
            # Zeros would read as a counter reset; leaving the series out reads as a gap.
            logger.warning("metrics: could not read the counters from the cache: %r", exc)
            yield _up("messaging_metrics_cache_up", help_text, False)
            return
        for name, documentation in OUTCOME_COUNTERS.values():
            yield CounterMetricFamily(name, documentation, value=values.get(_counter_key(name), 0))
        yield PROVIDER_LATENCY.metric(values)
        yield TICK_DURATION.metric(values)
        yield _up("messaging_metrics_cache_up", help_text, True)


def _up(name: str, documentation: str, up: bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=1 if up else 0)


# Our own registry, not prometheus_client's global one: its process and GC
# metrics would describe whichever web process answered, not the cluster.
REGISTRY = CollectorRegistry()
REGISTRY.register(MessagingCollector())


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics: Prometheus exposition; behind `Authorization: Bearer <METRICS_TOKEN>` if set."""
    token = dispatcher_settings().metrics_token
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            response = HttpResponse("Bearer token required.\n", status=401, content_type="text/plain")
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
        if not secrets.compare_digest(given.strip().encode(), token.encode()):
            return HttpResponse("Invalid token.\n", status=403, content_type="text/plain")
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(REGISTRY), content_type=content_type)
