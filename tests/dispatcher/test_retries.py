"""Retry policy, the attempt log, idempotency keys and the delivery cache catch-up."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import redis
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from dispatcher.conf import dispatcher_settings
from dispatcher.engine.claiming import claim_batch
from dispatcher.engine.providers import ProviderError, locmem
from dispatcher.engine.providers.webhook import WebhookProvider, parse_retry_after
from dispatcher.engine.recording import delivery_cache_catch_up
from dispatcher.engine.sending import retry_delay
from messages_app.models import DeliveryAttempt, Message
from messages_app.transitions import database_now
from tests.factories import claimed_message, deliver, make_message
from tests.processes import fake_provider_in_thread, free_port

Status = Message.Status
pytestmark = pytest.mark.django_db


@pytest.fixture
def policy(settings):
    settings.DISPATCHER = {
        **settings.DISPATCHER,
        "MAX_ATTEMPTS": 3,
        "RETRY_BASE_SECONDS": 10,
        "RETRY_MAX_SECONDS": 25,
    }
    return dispatcher_settings()


def claim_one() -> list[int]:
    with transaction.atomic():
        return claim_batch(batch_size=1).message_ids


def let_time_pass(message: Message, seconds: float) -> Message:
    """Move the message's due time `seconds` into the past, as if that long had gone by; return it reloaded."""
    Message.objects.filter(pk=message.pk).update(next_attempt_at=F("next_attempt_at") - dt.timedelta(seconds=seconds))
    return Message.objects.get(pk=message.pk)


def test_backoff_doubles_with_jitter_and_is_capped(policy):
    for attempt, ceiling in [(1, 10), (2, 20), (3, 25), (10, 25)]:
        delays = [retry_delay(attempt=attempt, conf=policy) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 100  # jittered, not one fixed delay
    assert retry_delay(attempt=1, conf=policy, retry_after=42) == 42


def test_a_transient_failure_is_retried_later_then_fails_when_attempts_run_out(policy):
    message = claimed_message()
    for attempt in (1, 2):
        locmem.failures.append(ProviderError("provider answered HTTP 503: busy", http_status=503))
        before = database_now()
        outcome = deliver(message, locmem.LocmemProvider())
        after = database_now()
        assert outcome.outcome == "retry"
        message.refresh_from_db()
        assert message.status == Status.UNSENT and message.attempts == attempt
        assert (message.claim_token, message.lease_expires_at, message.sending_started_at) == (None, None, None)
        # Due again after the backoff, by the database's clock.
        low, high = (5 * 2 ** (attempt - 1), 10 * 2 ** (attempt - 1))
        assert before + dt.timedelta(seconds=low) <= message.next_attempt_at <= after + dt.timedelta(seconds=high)
        # Not claimable before its time; claimable after.
        assert claim_one() == []
        let_time_pass(message, high)
        assert claim_one() == [message.pk]
        message.refresh_from_db()

    locmem.failures.append(ProviderError("provider answered HTTP 503: busy", http_status=503))
    assert deliver(message, locmem.LocmemProvider()).outcome == "failed"
    message.refresh_from_db()
    assert (message.status, message.attempts) == (Status.FAILED, 3)
    assert message.last_error == "provider answered HTTP 503: busy"
    assert message.next_attempt_at is None  # nothing more is due
    log = list(DeliveryAttempt.objects.filter(message=message).values_list("number", "outcome", "http_status"))
    assert log == [(1, "retry", 503), (2, "retry", 503), (3, "failed", 503)]


def test_retry_after_from_the_provider_is_honoured(policy):
    message = claimed_message()
    locmem.failures.append(ProviderError("provider answered HTTP 429", http_status=429, retry_after=120))
    before = database_now()
    deliver(message, locmem.LocmemProvider())
    after = database_now()
    message.refresh_from_db()
    assert before + dt.timedelta(seconds=120) <= message.next_attempt_at <= after + dt.timedelta(seconds=120)


def test_a_permanent_failure_fails_at_once(policy):
    message = claimed_message()
    locmem.failures.append(ProviderError("provider answered HTTP 400: bad number", permanent=True, http_status=400))
    assert deliver(message, locmem.LocmemProvider()).outcome == "failed"
    message.refresh_from_db()
    assert (message.status, message.attempts, message.next_attempt_at) == (Status.FAILED, 1, None)
    log = list(DeliveryAttempt.objects.filter(message=message).values_list("number", "outcome", "http_status"))
    assert log == [(1, "failed", 400)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("999999999", 999_999_999.0),  # honoured here; what a pause or a delay takes of it is capped
        (None, None),
        ("", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        # Nothing a clock can hold, or not delta-seconds at all: refused, as if absent.
        ("1e999", None),
        ("inf", None),
        ("Infinity", None),
        ("nan", None),
        ("-5", None),
        ("+5", None),
        ("1e3", None),
        ("9" * 400, None),  # beyond any float
        ("\uff15", None),  # a fullwidth 5: a digit to str.isdigit(), not to HTTP
    ],
)
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value) == expected


def test_a_retry_after_date_far_ahead_is_a_finite_number_of_seconds():
    assert 2.4e11 < parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT") < 2.6e11


@pytest.mark.parametrize("retry_after", [float("inf"), float("-inf"), float("nan"), -1.0])
def test_a_provider_error_keeps_no_retry_after_a_clock_cannot_hold(retry_after):
    # Whatever a backend (ours or one configured by dotted path) puts there.
    assert ProviderError("throttled", http_status=429, retry_after=retry_after).retry_after is None


def test_a_messages_own_delay_is_at_most_a_day(policy):
    assert retry_delay(attempt=1, conf=policy, retry_after=999_999_999) == 86_400
    message = claimed_message()
    locmem.failures.append(ProviderError("provider answered HTTP 503", http_status=503, retry_after=999_999_999))
    deliver(message, locmem.LocmemProvider())
    message.refresh_from_db()
    assert message.status == Status.UNSENT
    assert message.next_attempt_at <= database_now() + dt.timedelta(days=1)


def test_retry_after_as_an_http_date_in_the_future():
    when = (timezone.now() + dt.timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 80 <= parse_retry_after(when) <= 91


def test_the_webhook_sends_the_same_idempotency_key_on_every_attempt(settings):
    with fake_provider_in_thread() as fake:
        settings.DISPATCHER = {**settings.DISPATCHER, "WEBHOOK_URL": fake.url, "MAX_ATTEMPTS": 5}
        message = claimed_message()
        fake.server.state.faults.update({"script": [500, 202]})
        provider = WebhookProvider()
        assert deliver(message, provider).outcome == "retry"
        message = let_time_pass(message, 3600)
        assert claim_one() == [message.pk]
        message.refresh_from_db()
        assert deliver(message, provider).outcome == "sent"
        # A repeat of an accepted key: the provider drops it and answers with the first id.
        first_id = Message.objects.get(pk=message.pk).provider_message_id
        assert provider.send(message).message_id == first_id
        requests = fake.requests()
    assert [r.idempotency_key for r in requests] == [str(message.uuid)] * 3
    assert [r.status for r in requests] == [500, 202, 202]
    assert [r.duplicate for r in requests] == [False, False, True]
    assert fake.server.state.stats()["duplicates_dropped"] == 1


def test_the_webhook_reads_retry_after_on_429(settings):
    with fake_provider_in_thread() as fake:
        settings.DISPATCHER = {**settings.DISPATCHER, "WEBHOOK_URL": fake.url}
        fake.server.state.faults.update({"script": [429], "retry_after": 7})
        with pytest.raises(ProviderError) as caught:
            WebhookProvider().send(make_message())
    assert (caught.value.http_status, caught.value.retry_after, caught.value.permanent) == (429, 7.0, False)


def test_delivery_cache_records_that_failed_are_written_later(settings):
    good_cache = settings.CACHES[settings.DELIVERY_CACHE_ALIAS]
    down = {**good_cache, "LOCATION": f"redis://127.0.0.1:{free_port()}/0"}
    down["OPTIONS"] = {**good_cache["OPTIONS"], "SOCKET_CONNECT_TIMEOUT": 0.3, "SOCKET_TIMEOUT": 0.3}
    settings.CACHES = {**settings.CACHES, settings.DELIVERY_CACHE_ALIAS: down}
    message = claimed_message()

    outcome = deliver(message, locmem.LocmemProvider())

    assert outcome.sent and not outcome.cached
    message.refresh_from_db()
    assert message.status == Status.SENT and message.delivery_cache_pending
    assert delivery_cache_catch_up() == 0  # still down: nothing written, nothing cleared

    settings.CACHES = {**settings.CACHES, settings.DELIVERY_CACHE_ALIAS: good_cache}
    assert delivery_cache_catch_up() == 1
    message.refresh_from_db()
    assert not message.delivery_cache_pending
    raw = redis.Redis.from_url(settings.REDIS_URL).get(f"messages:{message.provider_message_id}")
    assert json.loads(raw) == {"messageId": message.provider_message_id, "timestamp": int(message.sent_at.timestamp())}
