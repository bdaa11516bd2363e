"""Sending claimed messages through a provider and recording the outcome (real PostgreSQL and Redis)."""

from __future__ import annotations

import json
import logging
import time

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from dispatcher.engine.delivery_cache import delivery_cache_get
from dispatcher.engine.pipeline import hand_out_tick, run_tick_here
from dispatcher.engine.providers import BaseProvider, ProviderError, ProviderResult, locmem
from dispatcher.errors import DispatcherStoppedError
from dispatcher.models import DispatcherState
from messages_app.models import Message
from messages_app.transitions import MAX_ERROR_LENGTH
from tests.factories import claimed_message, deliver, make_message
from tests.processes import free_port

Status = Message.Status

pytestmark = pytest.mark.django_db


@pytest.fixture
def raw_redis():
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def running_dispatcher():
    DispatcherState.objects.filter(pk=DispatcherState.SINGLETON_PK).update(
        running=True, batch_size=10, interval_seconds=60, next_tick_at=timezone.now()
    )


class CrashingProvider(BaseProvider):
    def send(self, message):
        raise RuntimeError("backend bug")


class CountingProvider(BaseProvider):
    def __init__(self) -> None:
        self.sent: list[int] = []
        self.closed = 0

    def send(self, message):
        self.sent.append(message.pk)
        return ProviderResult(message_id=f"counted-{message.pk}")

    def close(self) -> None:
        self.closed += 1


# --- success -------------------------------------------------------------------------


def test_success_marks_sent_and_records_the_delivery_in_redis(raw_redis):
    message = claimed_message(content="your code is 1234")
    before = timezone.now()

    outcome = deliver(message, locmem.LocmemProvider())

    assert outcome.sent and outcome.cached
    assert len(locmem.outbox) == 1
    entry = locmem.outbox[0]
    assert (entry.message_pk, entry.to, entry.content) == (message.pk, message.recipient_phone_number, message.content)
    assert outcome.provider_message_id == entry.message_id

    message.refresh_from_db()
    assert message.status == Status.SENT
    assert message.provider_message_id == entry.message_id
    assert before <= message.sent_at <= timezone.now()
    assert message.attempts == 1
    assert message.last_error == ""

    # Other systems read the bare key and plain JSON, not a Django-prefixed pickle.
    raw = raw_redis.get(f"messages:{entry.message_id}")
    assert raw is not None, raw_redis.keys("*")
    assert json.loads(raw) == {"messageId": entry.message_id, "timestamp": int(message.sent_at.timestamp())}
    assert raw_redis.ttl(f"messages:{entry.message_id}") == -1  # kept forever by default
    assert delivery_cache_get(entry.message_id) == json.loads(raw)


def test_delivery_record_gets_the_configured_ttl(settings, raw_redis):
    settings.DISPATCHER = {**settings.DISPATCHER, "DELIVERY_CACHE_TTL_SECONDS": 90}
    message = claimed_message()
    outcome = deliver(message, locmem.LocmemProvider())
    assert 0 < raw_redis.ttl(f"messages:{outcome.provider_message_id}") <= 90


def test_success_clears_the_error_of_an_earlier_attempt(raw_redis):
    message = claimed_message(attempts=2, last_error="provider answered HTTP 500")
    deliver(message, locmem.LocmemProvider())
    message.refresh_from_db()
    assert (message.status, message.attempts, message.last_error) == (Status.SENT, 3, "")


# --- failure -------------------------------------------------------------------------


def test_a_permanent_provider_error_marks_failed_with_the_reason(raw_redis):
    message = claimed_message(attempts=1)
    locmem.failures.append(ProviderError("provider answered HTTP 503: busy", permanent=True, http_status=503))

    outcome = deliver(message, locmem.LocmemProvider())

    assert not outcome.sent
    assert outcome.error == "provider answered HTTP 503: busy"
    message.refresh_from_db()
    assert message.status == Status.FAILED
    assert message.attempts == 2
    assert message.last_error == "provider answered HTTP 503: busy"
    assert message.sent_at is None
    assert message.provider_message_id == ""
    assert locmem.outbox == []
    assert raw_redis.keys("messages:*") == []


def test_a_very_long_error_is_truncated():
    message = claimed_message()
    locmem.failures.append(ProviderError("x" * (MAX_ERROR_LENGTH + 500), permanent=True))
    deliver(message, locmem.LocmemProvider())
    message.refresh_from_db()
    assert message.status == Status.FAILED
    assert len(message.last_error) == MAX_ERROR_LENGTH


def test_a_crashing_backend_is_retried_not_stuck_in_processing(caplog):
    message = claimed_message()

    outcome = deliver(message, CrashingProvider())

    assert not outcome.sent
    message.refresh_from_db()
    assert message.status == Status.UNSENT
    assert message.next_attempt_at is not None
    assert message.attempts == 1
    assert "RuntimeError" in message.last_error and "backend bug" in message.last_error
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)


def test_a_failure_does_not_stop_the_rest_of_the_batch(running_dispatcher, settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "CONCURRENCY": 1}  # sent in order: the first one fails
    messages = [make_message() for _ in range(3)]
    locmem.failures.append(ProviderError("first one fails", permanent=True))

    outcomes = run_tick_here()

    assert [o.sent for o in outcomes] == [False, True, True]
    statuses = dict(Message.objects.values_list("pk", "status"))
    assert statuses == {messages[0].pk: Status.FAILED, messages[1].pk: Status.SENT, messages[2].pk: Status.SENT}


# --- the delivery cache is down ------------------------------------------------------


@pytest.fixture
def unreachable_delivery_cache(settings):
    # Changing CACHES makes Django drop its cached connections (setting_changed).
    settings.CACHES = {
        **settings.CACHES,
        settings.DELIVERY_CACHE_ALIAS: {
            **settings.CACHES[settings.DELIVERY_CACHE_ALIAS],
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
            "OPTIONS": {
                **settings.CACHES[settings.DELIVERY_CACHE_ALIAS]["OPTIONS"],
                "SOCKET_CONNECT_TIMEOUT": 0.5,
                "SOCKET_TIMEOUT": 0.5,
            },
        },
    }


def test_an_unreachable_cache_does_not_undo_a_delivery(unreachable_delivery_cache, raw_redis, caplog):
    message = claimed_message()
    started = time.monotonic()

    outcome = deliver(message, locmem.LocmemProvider())

    assert time.monotonic() - started < 5
    assert outcome.sent
    assert outcome.cached is False
    message.refresh_from_db()
    assert message.status == Status.SENT
    assert message.provider_message_id == locmem.outbox[0].message_id
    assert message.attempts == 1
    assert raw_redis.keys("messages:*") == []  # nothing went to the real Redis either
    assert any("could not cache" in r.getMessage() for r in caplog.records)


# --- one tick --------------------------------------------------------------------------


def test_dispatch_tick_sends_one_batch_oldest_first(running_dispatcher, raw_redis):
    DispatcherState.objects.update(batch_size=2)
    messages = [make_message(content=f"m{i}") for i in range(3)]

    sent = [o for o in run_tick_here() if o.sent]

    # The two oldest (sent at once, so in either order); the third waits.
    assert sorted(o.message_id for o in sent) == [messages[0].pk, messages[1].pk]
    assert sorted(e.message_pk for e in locmem.outbox) == [messages[0].pk, messages[1].pk]
    assert Message.objects.get(pk=messages[2].pk).status == Status.UNSENT
    for outcome in sent:
        assert raw_redis.exists(f"messages:{outcome.provider_message_id}")


def test_dispatch_tick_closes_only_the_provider_it_made(running_dispatcher, settings):
    make_message()
    provider = CountingProvider()
    run_tick_here(provider=provider)
    assert provider.closed == 0
    assert len(provider.sent) == 1


def test_due_only_tick_not_due_does_nothing(running_dispatcher):
    DispatcherState.objects.update(next_tick_at=timezone.now() + timezone.timedelta(minutes=1))
    make_message()
    assert hand_out_tick() is False
    assert locmem.outbox == []


def test_due_only_tick_when_stopped_returns_not_ticked():
    DispatcherState.objects.update(running=False, next_tick_at=None)
    make_message()
    assert hand_out_tick() is False
    assert locmem.outbox == []


def test_manual_tick_on_a_stopped_dispatcher_raises():
    DispatcherState.objects.update(running=False, next_tick_at=None)
    message = make_message()

    with pytest.raises(DispatcherStoppedError):
        run_tick_here()

    assert Message.objects.get(pk=message.pk).status == Status.UNSENT
    assert locmem.outbox == []


def test_forced_manual_tick_sends_while_stopped_and_stays_stopped(raw_redis):
    DispatcherState.objects.update(running=False, next_tick_at=None, batch_size=5)
    message = make_message()

    outcomes = run_tick_here(force=True)

    assert [o.message_id for o in outcomes if o.sent] == [message.pk]
    assert Message.objects.get(pk=message.pk).status == Status.SENT
    state = DispatcherState.objects.get()
    assert state.running is False and state.next_tick_at is None


def test_manual_tick_creates_a_missing_state_row():
    DispatcherState.objects.all().delete()
    make_message()
    outcomes = run_tick_here()  # deploy = start: a fresh state row runs
    assert [o.sent for o in outcomes] == [True]


def test_tick_with_nothing_to_send(running_dispatcher):
    assert run_tick_here() == []


def test_a_due_tick_hands_its_batch_out_as_chunk_tasks_that_workers_send(
    running_dispatcher, settings, tasks_run_inline
):
    settings.DISPATCHER = {**settings.DISPATCHER, "CHUNK_SIZE": 2}
    messages = [make_message(content=f"m{i}") for i in range(5)]

    assert hand_out_tick() is True

    assert sorted(e.message_pk for e in locmem.outbox) == [m.pk for m in messages]
    assert set(Message.objects.values_list("status", flat=True)) == {Status.SENT}
    assert hand_out_tick() is False  # the next tick is a minute away


@pytest.mark.parametrize("size", [16])
def test_a_chunk_reads_its_messages_once_not_once_each(size, raw_redis):
    """A chunk sends from the fields messages_start_sending returns; a field sending reads
    that it leaves out would be loaded by a query per message."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from dispatcher.engine.pipeline import drain

    def queries_to_send(n: int) -> int:
        for i in range(n):
            make_message(content=f"q{n}-{i}")
        with CaptureQueriesContext(connection) as captured:
            drain(batch_size=n)
        assert Message.objects.filter(status=Status.SENT).count() >= n
        return len(captured)

    queries_to_send(1)  # the first drain of a process also reads what it then keeps
    few, many = queries_to_send(2), queries_to_send(size)
    # The claim's own queries vary a little with what it finds; a query per message would add 14.
    assert many - few < (size - 2) // 2, (few, many)
