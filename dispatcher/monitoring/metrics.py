"""Prometheus metrics for the whole cluster, served by any web process at GET /metrics.

Workers add to counters in the Django default cache, once per batch
(dispatcher.engine.counters); a custom collector reads them all in one
`get_many` at scrape time. Queue depth and the pace's lag is counted in the
database at scrape time, so it is right even when the cache is not.

The counters live as long as the cache keeps them: a Redis flush or restart
without persistence starts them again from zero, which Prometheus' rate()
and increase() treat as a counter reset.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.core.cache import caches
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from callbacks.metrics import DELIVERIES, delivery_counter_key
from callbacks.metrics import OUTCOMES as CALLBACK_OUTCOMES
from callbacks.selectors import callback_summary
from consent.selectors import consent_summary
from dispatcher.engine.counters import (
    ALL_KEYS,
    CACHE_ALIAS,
    INBOUND,
    INBOUND_KINDS,
    OUTCOME_COUNTERS,
    PROVIDER_LATENCY,
    RECEIPT_OUTCOMES,
    RECEIPTS,
    SENT_TO_DELIVERY,
    TICK_DURATION,
    counter_key,
    inbound_key,
    receipt_key,
)
from dispatcher.engine.providers.status import provider_statuses
from dispatcher.monitoring.access import MonitoringAccess, monitoring_access
from dispatcher.state import dispatcher_behind_seconds
from messages_app.selectors import message_status_counts
from retention.selectors import retention_summary

logger = logging.getLogger(__name__)


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
        circuits = GaugeMetricFamily(
            "messaging_provider_circuit_open",
            "1 while a provider's circuit is open or half open (no requests, or only probes), 0 while closed.",
            labels=["provider"],
        )
        paused = GaugeMetricFamily(
            "messaging_provider_paused",
            "1 while a provider is paused after a 429 (no worker asks it), 0 otherwise.",
            labels=["provider"],
        )
        paused_until = GaugeMetricFamily(
            "messaging_provider_paused_until_seconds",
            "Unix time until which a provider is paused after a 429 (at most PROVIDER_MAX_PAUSE_SECONDS after it); "
            "0 while it is not paused.",
            labels=["provider"],
        )
        for provider in provider_statuses():
            circuits.add_metric([provider.name], 0 if provider.circuit == "closed" else 1)
            paused.add_metric([provider.name], 1 if provider.paused_until else 0)
            paused_until.add_metric([provider.name], provider.paused_until.timestamp() if provider.paused_until else 0)
        yield circuits
        yield paused
        yield paused_until
        yield GaugeMetricFamily(
            "messaging_dispatch_behind_seconds",
            "How long the cluster has not held the pace (a due tick waiting for a batch still being sent, "
            "or that no dispatch window has taken); 0 while it holds.",
            value=dispatcher_behind_seconds(),
        )
        summary = consent_summary(days=1)
        yield GaugeMetricFamily(
            "messaging_consent_opted_out_numbers", "Numbers opted out now.", value=summary.opted_out_numbers
        )
        changes = GaugeMetricFamily(
            "messaging_consent_changes_today",
            "Consent changes since midnight UTC, by the status they set (opted_out, opted_in).",
            labels=["status"],
        )
        changes.add_metric(["opted_out"], summary.days[-1].opted_out)
        changes.add_metric(["opted_in"], summary.days[-1].opted_in)
        yield changes
        yield GaugeMetricFamily(
            "messaging_quiet_hours_held_messages",
            "Marketing messages waiting for their recipient's quiet hours to end.",
            value=summary.held_for_quiet_hours,
        )
        retention = retention_summary()
        yield GaugeMetricFamily(
            "messaging_message_table_rows_estimate",
            "Rows in the messages table, as PostgreSQL estimates them (pg_class.reltuples).",
            value=retention.message_rows_estimate,
        )
        yield GaugeMetricFamily(
            "messaging_oldest_message_created_seconds",
            "Unix time the oldest message kept was created; 0 with no messages.",
            value=retention.oldest_message_at.timestamp() if retention.oldest_message_at else 0,
        )
        yield GaugeMetricFamily(
            "messaging_database_oldest_transaction_seconds",
            "How long the oldest open transaction on the database has held back vacuum (0: none open); "
            "alert well before minutes: the queue's dead rows stay until it ends.",
            value=retention.oldest_transaction_seconds or 0,
        )
        if retention.last_run is not None:
            yield GaugeMetricFamily(
                "messaging_retention_last_run_seconds",
                "Unix time the retention schedule's last run finished.",
                value=retention.last_run.finished_at.timestamp(),
            )
            yield GaugeMetricFamily(
                "messaging_retention_last_run_deleted_messages",
                "Messages the retention schedule's last run deleted.",
                value=retention.last_run.messages_total,
            )
        callbacks = callback_summary()
        yield GaugeMetricFamily(
            "messaging_callback_pending_events", "Callback events waiting to be delivered.", value=callbacks.pending
        )
        yield GaugeMetricFamily(
            "messaging_callback_oldest_pending_seconds",
            "Age of the oldest callback event waiting to be delivered (0: none waits).",
            value=callbacks.oldest_pending_seconds,
        )
        yield GaugeMetricFamily(
            "messaging_callback_endpoints_disabled", "Callback endpoints disabled.", value=len(callbacks.disabled)
        )
        yield _up("messaging_metrics_database_up", "Whether this scrape could count the queue.", True)

    def _shared(self) -> Iterator[Metric]:
        help_text = "Whether this scrape could read the counters the dispatcher records in the cache."
        try:
            values = caches[CACHE_ALIAS].get_many([*ALL_KEYS, *(delivery_counter_key(o) for o in CALLBACK_OUTCOMES)])
        except Exception as exc:
            # Zeros would read as a counter reset; leaving the series out reads as a gap.
            logger.warning("metrics: could not read the counters from the cache: %r", exc)
            yield _up("messaging_metrics_cache_up", help_text, False)
            return
        for name, documentation in OUTCOME_COUNTERS.values():
            yield CounterMetricFamily(name, documentation, value=values.get(counter_key(name), 0))
        yield PROVIDER_LATENCY.metric(values)
        yield TICK_DURATION.metric(values)
        yield SENT_TO_DELIVERY.metric(values)
        receipts = CounterMetricFamily(
            RECEIPTS,
            "Delivery receipts received, by outcome (delivered, undelivered; unmatched: no sent message with that "
            "messageId yet; replayed: a receipt id already seen).",
            labels=["outcome"],
        )
        for outcome in RECEIPT_OUTCOMES:
            receipts.add_metric([outcome], values.get(receipt_key(outcome), 0))
        yield receipts
        inbound = CounterMetricFamily(
            INBOUND,
            "Replies received (POST /api/inbound/, Twilio's inbound webhook), by kind: opt_out, opt_in, help "
            "(keywords), reply (an ordinary reply), replayed (an id already seen, ignored).",
            labels=["kind"],
        )
        for kind in INBOUND_KINDS:
            inbound.add_metric([kind], values.get(inbound_key(kind), 0))
        yield inbound
        deliveries = CounterMetricFamily(
            DELIVERIES,
            "Status callback deliveries, by outcome (delivered; retry: failed, will be tried again; failed: given up).",
            labels=["outcome"],
        )
        for outcome in CALLBACK_OUTCOMES:
            deliveries.add_metric([outcome], values.get(delivery_counter_key(outcome), 0))
        yield deliveries
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
    """GET /metrics: Prometheus exposition, for `Authorization: Bearer <METRICS_TOKEN>` or a staff session."""
    access = monitoring_access(request)
    if access is MonitoringAccess.NO_CREDENTIALS:
        response = HttpResponse(
            "Send Authorization: Bearer <METRICS_TOKEN>, or log in to the admin as staff.\n",
            status=401,
            content_type="text/plain",
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if access is MonitoringAccess.WRONG_TOKEN:
        return HttpResponse("Invalid token.\n", status=403, content_type="text/plain")
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(REGISTRY), content_type=content_type)
