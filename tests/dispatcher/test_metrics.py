"""GET /metrics: counters and histograms the dispatcher records in the cache, the queue from the database."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
import redis
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.engine import counters
from dispatcher.engine.counters import PROVIDER_LATENCY, metrics_record_batch, metrics_record_tick
from dispatcher.engine.pipeline import drain, run_tick_here
from dispatcher.engine.providers import ProviderError, locmem
from dispatcher.models import DispatcherState
from dispatcher.state import dispatcher_state_ensure
from messages_app.models import DeliveryAttempt, Message
from retention.services import retention_apply
from tests.factories import make_message, make_user
from tests.processes import free_port

Status = Message.Status
Outcome = DeliveryAttempt.Outcome

pytestmark = pytest.mark.django_db


@pytest.fixture
def client() -> Client:
    """An operator's browser: the session of a staff user (Prometheus sends the token instead)."""
    client = Client()
    client.force_login(make_user(username="ops", staff=True))
    return client


@pytest.fixture(autouse=True)
def running_dispatcher():
    dispatcher_state_ensure()
    DispatcherState.objects.filter(pk=DispatcherState.SINGLETON_PK).update(
        running=True, batch_size=10, interval_seconds=60, next_tick_at=timezone.now()
    )


@pytest.fixture
def redis_down(settings):
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{free_port()}/0"},
    }


def scrape(client: Client, **headers) -> dict[tuple[str, tuple], float]:
    """GET /metrics and return {(sample name, sorted labels): value}."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def send_one_batch_with_a_retry_and_a_failure() -> None:
    for _ in range(3):
        make_message()
    later = timezone.now() + timezone.timedelta(hours=1)
    make_message(send_after=later, next_attempt_at=later)  # scheduled: stays queued
    make_message(status=Status.SENT)  # sent earlier, not by this dispatcher
    locmem.failures.extend(
        [ProviderError("HTTP 503", http_status=503), ProviderError("HTTP 400", permanent=True, http_status=400)]
    )
    run_tick_here()


def test_counters_queue_and_histograms_after_a_batch(client):
    send_one_batch_with_a_retry_and_a_failure()

    samples = scrape(client)

    assert value(samples, "messaging_messages_sent_total") == 1
    assert value(samples, "messaging_messages_retried_total") == 1
    assert value(samples, "messaging_messages_failed_total") == 1
    # The queue comes from the database: the retry is unsent again, plus the scheduled one.
    assert value(samples, "messaging_queue_messages", status="unsent") == 2
    assert value(samples, "messaging_queue_messages", status="processing") == 0
    assert value(samples, "messaging_queue_messages", status="sent") == 2
    assert value(samples, "messaging_queue_messages", status="failed") == 1
    # Three provider calls, each well under a quarter of a second with locmem (even on a busy
    # machine), so in every bucket from there up.
    assert value(samples, "messaging_provider_latency_seconds_count") == 3
    for le in PROVIDER_LATENCY.les[PROVIDER_LATENCY.les.index("0.25") :]:
        assert value(samples, "messaging_provider_latency_seconds_bucket", le=le) == 3
    assert value(samples, "messaging_provider_latency_seconds_sum") < 0.75
    assert value(samples, "messaging_tick_duration_seconds_count") == 1
    assert value(samples, "messaging_tick_duration_seconds_bucket", le="+Inf") == 1
    assert value(samples, "messaging_tick_duration_seconds_sum") > 0
    assert value(samples, "messaging_metrics_cache_up") == 1
    assert value(samples, "messaging_metrics_database_up") == 1


def test_counters_add_up_across_batches_and_drain_batches(client):
    for _ in range(3):
        make_message()
    run_tick_here()
    for _ in range(5):
        make_message()
    drain(batch_size=2)  # three batches: 2, 2, 1

    samples = scrape(client)

    assert value(samples, "messaging_messages_sent_total") == 8
    assert value(samples, "messaging_messages_failed_total") == 0
    assert value(samples, "messaging_provider_latency_seconds_count") == 8
    assert value(samples, "messaging_tick_duration_seconds_count") == 4


def test_histogram_buckets_are_cumulative(client):
    metrics_record_batch(outcomes=[Outcome.SENT] * 4, provider_latencies_ms=[20, 20, 300, 45_000])
    metrics_record_batch(outcomes=[Outcome.RETRY], provider_latencies_ms=[1000])  # exactly on a bound
    metrics_record_tick(duration_seconds=0.07)

    samples = scrape(client)

    def bucket(le: str) -> float:
        return value(samples, "messaging_provider_latency_seconds_bucket", le=le)

    assert bucket("0.01") == 0
    assert bucket("0.025") == 2
    assert bucket("0.25") == 2
    assert bucket("0.5") == 3
    assert bucket("1.0") == 4  # le means "less than or equal"
    assert bucket("30.0") == 4
    assert bucket("+Inf") == 5
    assert value(samples, "messaging_provider_latency_seconds_count") == 5
    assert value(samples, "messaging_provider_latency_seconds_sum") == pytest.approx(46.34)
    assert value(samples, "messaging_messages_sent_total") == 4
    assert value(samples, "messaging_messages_retried_total") == 1
    assert value(samples, "messaging_tick_duration_seconds_bucket", le="0.05") == 0
    assert value(samples, "messaging_tick_duration_seconds_bucket", le="0.1") == 1


def test_a_batch_costs_one_cache_round_trip_whatever_its_size(monkeypatch, client):
    round_trips = []
    real_command, real_execute = redis.Redis.execute_command, redis.client.Pipeline.execute

    def command(self, *args, **options):
        if not isinstance(self, redis.client.Pipeline):  # a pipeline only queues its commands
            round_trips.append(args[0])
        return real_command(self, *args, **options)

    def execute(self, *args, **options):
        round_trips.append(f"pipeline of {len(self.command_stack)}")
        return real_execute(self, *args, **options)

    monkeypatch.setattr(redis.Redis, "execute_command", command)
    monkeypatch.setattr(redis.client.Pipeline, "execute", execute)

    metrics_record_batch(outcomes=[Outcome.SENT] * 500, provider_latencies_ms=[3] * 500)

    # sent, one latency bucket, the latency sum: three INCRBYs in one round trip
    assert round_trips == ["pipeline of 3"]
    samples = scrape(client)
    assert value(samples, "messaging_messages_sent_total") == 500
    assert value(samples, "messaging_provider_latency_seconds_count") == 500


def test_recording_with_the_cache_down_never_breaks_sending_and_warns_once(redis_down, monkeypatch, caplog):
    monkeypatch.setattr(counters, "_recording_failed", False)
    messages = [make_message() for _ in range(2)]

    with caplog.at_level(logging.DEBUG, logger="dispatcher.engine.counters"):
        run_tick_here()
        make_message()
        run_tick_here()

    assert Message.objects.filter(status=Status.SENT).count() == 3
    assert all(Message.objects.get(pk=m.pk).status == Status.SENT for m in messages)
    warnings = [r for r in caplog.records if r.name == "dispatcher.engine.counters" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "could not record metrics" in warnings[0].getMessage()


def test_scrape_with_the_cache_down_still_answers_with_the_queue(client, redis_down):
    make_message()
    make_message(status=Status.FAILED)

    samples = scrape(client)

    assert value(samples, "messaging_metrics_cache_up") == 0
    assert value(samples, "messaging_queue_messages", status="unsent") == 1
    assert value(samples, "messaging_queue_messages", status="failed") == 1
    # Left out rather than reported as zero, which would read as a counter reset.
    assert not any(name.startswith("messaging_messages_") for name, _ in samples)
    assert not any(name.startswith("messaging_provider_latency") for name, _ in samples)


def test_works_on_a_cache_without_redis(client, settings):
    # The local setup's file cache and django's locmem speak the same incr/add.
    settings.CACHES = {
        **settings.CACHES,
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "metrics-test"},
    }
    make_message()
    run_tick_here()
    make_message()
    run_tick_here()

    samples = scrape(client)

    assert value(samples, "messaging_messages_sent_total") == 2
    assert value(samples, "messaging_tick_duration_seconds_count") == 2


@pytest.mark.parametrize("token", ["", "s3cret-token"], ids=["no-token-set", "token-set"])
def test_metrics_are_not_anonymous(settings, token):
    settings.DISPATCHER = {**settings.DISPATCHER, "METRICS_TOKEN": token}
    anonymous = Client()

    missing = anonymous.get("/metrics")
    assert missing.status_code == 401
    assert missing["WWW-Authenticate"].startswith("Bearer")
    assert b"messaging_" not in missing.content
    assert anonymous.get("/metrics", headers={"Authorization": "Token s3cret-token"}).status_code == 401
    assert anonymous.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403


def test_metrics_token_is_accepted_when_set(settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "METRICS_TOKEN": "s3cret-token"}
    samples = scrape(Client(), Authorization="Bearer s3cret-token")
    assert value(samples, "messaging_metrics_cache_up") == 1


def test_metrics_need_a_staff_session_not_just_any_login():
    user = Client()
    user.force_login(make_user(username="client-app"))
    assert user.get("/metrics").status_code == 401

    inactive = make_user(username="gone", staff=True)
    former = Client()
    former.force_login(inactive)
    inactive.is_active = False
    inactive.save()
    assert former.get("/metrics").status_code == 401


def test_staff_session_reads_the_metrics(client):
    assert value(scrape(client), "messaging_metrics_database_up") == 1


def test_openmetrics_is_served_when_asked_for(client):
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().rstrip().endswith("# EOF")


def test_metrics_show_how_far_behind_the_pace_the_cluster_is(client):
    DispatcherState.objects.update(behind_since=timezone.now() - timezone.timedelta(seconds=30))
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").content.decode())}
    [sample] = families["messaging_dispatch_behind_seconds"].samples
    assert 29 <= sample.value <= 60

    DispatcherState.objects.update(behind_since=None, next_tick_at=timezone.now() + timezone.timedelta(seconds=30))
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").content.decode())}
    assert families["messaging_dispatch_behind_seconds"].samples[0].value == 0


def test_metrics_show_a_due_tick_no_window_has_taken_as_behind_the_pace(client):
    # No qcluster is pacing: the tick four minutes overdue is what the alert on this gauge is for.
    DispatcherState.objects.update(behind_since=None, next_tick_at=timezone.now() - timezone.timedelta(minutes=4))
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").content.decode())}
    [sample] = families["messaging_dispatch_behind_seconds"].samples
    assert 240 <= sample.value <= 300


def test_the_history_and_the_last_retention_run_are_scraped(client, settings):
    old = make_message(status=Message.Status.SENT)
    Message.objects.filter(pk=old.pk).update(created_at=timezone.now() - dt.timedelta(days=40))
    kept = make_message(status=Message.Status.SENT)
    settings.MESSAGE_RETENTION = {"DAYS_BY_STATUS": {"sent": 30}, "INBOUND_DAYS": 0, "BATCH_SIZE": 10, "RUN_SECONDS": 5}

    assert "messaging_retention_last_run_seconds" not in {name for name, _ in scrape(client)}
    run = retention_apply()
    samples = scrape(client)

    assert value(samples, "messaging_retention_last_run_deleted_messages") == 1
    assert value(samples, "messaging_retention_last_run_seconds") == pytest.approx(run.finished_at.timestamp())
    kept.refresh_from_db()
    assert value(samples, "messaging_oldest_message_created_seconds") == pytest.approx(kept.created_at.timestamp())
    assert value(samples, "messaging_message_table_rows_estimate") >= 0
