"""Delivery guarantees under faults, with real processes: qcluster, `dispatcher drain`, the fake provider,
PostgreSQL and a private Redis.

Each test injects one fault (a killed worker, competing dispatchers, provider errors, Redis down, the
database connection cut, a stop during a batch, a graceful shutdown) and checks that no message is lost,
none is stuck in `processing`, and every repeated request carries the Idempotency-Key the provider had
already seen. Each prints its figures on a `FAULT-FIGURES` line; docs/RELIABILITY.md quotes them.

Figures:
  messages             messages the test queued
  lost                 messages that did not end as the test expects (sent, or failed with the reason)
  duplicate_requests   provider requests repeating an Idempotency-Key already sent (retries, re-sends)
  dropped_by_provider  repeats of an already accepted key, which the provider answered without delivering again
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from collections import Counter, defaultdict
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db.models import Count, Max
from django.utils import timezone

from dispatcher.schedule import enqueue_dispatch_window
from dispatcher.state import dispatcher_configure, dispatcher_start, dispatcher_stop
from messages_app.models import DeliveryAttempt, Message
from tests.factories import phone_number
from tests.processes import (
    child_env,
    drain,
    fake_provider,
    logs_of,
    manage,
    provider_faults,
    provider_requests,
    provider_stats,
    qcluster_running,
    redis_server,
    terminate_database_backends,
    wait_for,
)

Status = Message.Status

pytestmark = [pytest.mark.process, pytest.mark.django_db(transaction=True)]

# Every dispatcher process the tests start: the fake provider, short leases and fast retries, and a
# dispatch window longer than any test (windows are started by the tests, not by the minute schedule).
WEBHOOK_TIMEOUT_SECONDS = 2
LEASE_SECONDS = 1
# Two sends at a time, so a batch of five has sends in flight and sends not yet started.
CONCURRENCY = 2


def dispatcher_env(provider_url: str, **overrides: str) -> dict[str, str]:
    env = {
        "DISPATCH_PROVIDER_BACKEND": "webhook",
        "WEBHOOK_URL": provider_url,
        "WEBHOOK_TIMEOUT_SECONDS": str(WEBHOOK_TIMEOUT_SECONDS),
        "DISPATCH_LEASE_SECONDS": str(LEASE_SECONDS),
        "DISPATCH_CONCURRENCY": str(CONCURRENCY),
        "DISPATCH_MAX_ATTEMPTS": "5",
        "DISPATCH_RETRY_BASE_SECONDS": "0.2",
        "DISPATCH_RETRY_MAX_SECONDS": "2",
        "DISPATCH_WINDOW_SECONDS": "150",
        "QCLUSTER_WORKERS": "2",
    }
    env.update(overrides)
    return env


@pytest.fixture
def stopped_dispatcher():
    """Every test starts stopped, so nothing is sent before it starts the dispatcher."""
    dispatcher_stop()
    yield
    dispatcher_stop()  # a stopped dispatcher ends any window at once, so clusters stop quickly


@pytest.fixture
def figures(capsys):
    """figures(name, messages=..., lost=..., duplicate_requests=..., dropped_by_provider=..., **more): print them."""

    def report(name: str, **values: object) -> None:
        line = "FAULT-FIGURES " + name + " " + " ".join(f"{key}={value}" for key, value in values.items())
        with capsys.disabled():
            print(f"\n{line}")

    return report


def make_messages(n: int, label: str = "fault") -> list[Message]:
    Message.objects.bulk_create(
        [Message(recipient_phone_number=phone_number(), content=f"{label} message {i}") for i in range(n)],
        batch_size=1000,
    )
    return list(Message.objects.order_by("id"))


def count(*statuses: str) -> int:
    return Message.objects.filter(status__in=statuses).count()


def status_counts() -> dict[str, int]:
    return dict(Message.objects.order_by().values_list("status").annotate(n=Count("id")))


def wait_or_fail(predicate, *, timeout: float, what: str, processes=(), interval: float = 0.1) -> None:
    try:
        wait_for(predicate, timeout=timeout, interval=interval, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; messages: {status_counts()}\n{logs_of(*processes)}") from None


def repeats(received: list[dict]) -> int:
    """Requests beyond the first for each Idempotency-Key."""
    keys = Counter(r["idempotency_key"] for r in received)
    return sum(keys.values()) - len(keys)


def check_idempotency(received: list[dict], messages: list[Message], logs: str = "") -> None:
    """Every request names its message by uuid, and each message was accepted once with the id it keeps."""
    uuids = {str(m.uuid) for m in messages}
    assert all(r["idempotency_key"] in uuids for r in received), f"a request without its message's key\n{logs}"
    accepted: dict[str, list[str]] = defaultdict(list)  # key -> messageIds of requests it delivered
    answered: dict[str, set[str]] = defaultdict(set)  # key -> every messageId it was answered with
    for r in received:
        if 200 <= r["status"] < 300 and r["message_id"]:
            answered[r["idempotency_key"]].add(r["message_id"])
            if not r["duplicate"]:
                accepted[r["idempotency_key"]].append(r["message_id"])
    assert all(len(ids) == 1 for ids in accepted.values()), f"a key delivered twice: {dict(accepted)}\n{logs}"
    assert all(len(ids) == 1 for ids in answered.values()), f"one key, several messageIds: {dict(answered)}\n{logs}"
    for message in messages:
        if message.status == Status.SENT:
            assert answered[str(message.uuid)] == {message.provider_message_id}, (
                f"message {message.pk} keeps {message.provider_message_id!r}, "
                f"provider answered {answered[str(message.uuid)]}\n{logs}"
            )


def check_attempt_log(messages: list[Message], logs: str = "") -> None:
    """Each counted attempt has its DeliveryAttempt row, numbered 1..attempts, and a sent message's last
    row is its `sent` one, with the messageId it keeps. (A `released` row does not count as an attempt.)"""
    rows: dict[int, list[DeliveryAttempt]] = defaultdict(list)
    for attempt in DeliveryAttempt.objects.exclude(outcome="released").order_by("message_id", "id"):
        rows[attempt.message_id].append(attempt)
    for message in messages:
        tries = rows[message.pk]
        summary = [(a.number, a.outcome) for a in tries]
        assert [a.number for a in tries] == list(range(1, message.attempts + 1)), (
            f"message {message.pk} ({message.status}, attempts={message.attempts}) has attempt rows {summary}\n{logs}"
        )
        if message.status == Status.SENT:
            assert tries[-1].outcome == "sent", (message.pk, summary)
            assert tries[-1].provider_message_id == message.provider_message_id, (message.pk, summary)


# --- 1. a worker killed in mid-batch ---------------------------------------------------------------


def test_sigkill_mid_batch_loses_nothing_and_repeats_only_what_was_in_flight(tmp_path, stopped_dispatcher, figures):
    messages = make_messages(12, "sigkill")
    dispatcher_configure(batch_size=5, interval_seconds=1)

    with fake_provider(tmp_path, "--latency-ms", "1000") as provider:
        env = dispatcher_env(provider.url)
        with qcluster_running(tmp_path, log_name="qcluster-killed.log", **env) as first:
            dispatcher_start()
            wait_or_fail(
                lambda: count(Status.SENT) >= 2 and count(Status.PROCESSING) >= 1,
                timeout=40,
                what="a batch in mid-send",
                processes=(first, provider),
            )
            processing_before_kill = count(Status.PROCESSING)
            os.killpg(first.popen.pid, signal.SIGKILL)  # the main process and all its workers, no goodbyes
            first.popen.wait(10)
            killed_at = timezone.now()
        time.sleep(0.5)  # PostgreSQL rolls back whatever the dead connections had open
        held = {
            pk: (claimed_at, lease)
            for pk, claimed_at, lease in Message.objects.filter(status=Status.PROCESSING).values_list(
                "pk", "claimed_at", "lease_expires_at"
            )
        }
        in_flight = list(held)
        sent_at_kill = count(Status.SENT)
        assert in_flight, "nothing was in flight when the worker died"
        for pk, (claimed_at, lease) in held.items():
            # One claim stamps its whole batch with the same claimed_at; its lease covers sending them all.
            batch = Message.objects.filter(claimed_at=claimed_at).count()
            rounds = -(-batch // CONCURRENCY)
            lease_length = timedelta(seconds=LEASE_SECONDS + rounds * WEBHOOK_TIMEOUT_SECONDS)
            assert abs(lease - claimed_at - lease_length) < timedelta(seconds=1), (pk, batch, claimed_at, lease)

        with qcluster_running(tmp_path, log_name="qcluster-restarted.log", **env) as second:
            enqueue_dispatch_window()  # what the minute schedule would do, without waiting for it
            wait_or_fail(
                lambda: count(Status.SENT) == len(messages),
                timeout=60,
                what="every message sent after the restart",
                processes=(first, second, provider),
            )
            received = provider_requests(provider.url)
            stats = provider_stats(provider.url)
            logs = logs_of(first, second, provider)

    final = list(Message.objects.order_by("id"))
    assert count(Status.PROCESSING) == 0, logs
    assert all(m.status == Status.SENT for m in final), logs
    check_idempotency(received, final, logs)
    check_attempt_log(final, logs)
    repeated = repeats(received)
    assert repeated <= len(in_flight), f"{repeated} repeats, {len(in_flight)} in flight\n{logs}"
    # A repeat only happens when the first request reached the provider, which then accepted it: the provider
    # recognised every repeat by its key and answered it without delivering the message again.
    assert stats["duplicates_dropped"] == repeated, stats
    # The messages the dead worker held came back through their lease, and were not re-sent before it ran out.
    expired = DeliveryAttempt.objects.filter(message_id__in=in_flight, outcome="lease_expired")
    assert set(expired.values_list("message_id", flat=True)) == set(in_flight), logs
    for message in Message.objects.filter(pk__in=in_flight):
        assert message.attempts >= 2, (message.pk, message.attempts)
    resends = DeliveryAttempt.objects.filter(message_id__in=in_flight, outcome__in=["sent", "retry", "failed"])
    for attempt in resends.filter(started_at__gt=killed_at):
        lease = held[attempt.message_id][1]
        assert attempt.started_at >= lease, f"message {attempt.message_id} re-sent before its lease ran out\n{logs}"

    figures(
        "sigkill_mid_batch",
        messages=len(messages),
        lost=len(messages) - count(Status.SENT),
        duplicate_requests=repeated,
        dropped_by_provider=stats["duplicates_dropped"],
        in_flight_at_kill=len(in_flight),
        processing_just_before_kill=processing_before_kill,
        sent_before_kill=sent_at_kill,
    )


# --- 2. three dispatchers at once ------------------------------------------------------------------


def test_three_drain_processes_send_each_message_exactly_once(tmp_path, stopped_dispatcher, figures):
    total = 3000
    messages = make_messages(total, "drain")
    dispatcher_start()  # drain obeys the cluster-wide switch; no qcluster runs here to take the window

    with fake_provider(tmp_path) as provider:
        env = dispatcher_env(provider.url)
        started = time.monotonic()
        with (
            drain(tmp_path, "drain-a", "--batch-size", "50", "--max-seconds", "120", **env) as a,
            drain(tmp_path, "drain-b", "--batch-size", "50", "--max-seconds", "120", **env) as b,
            drain(tmp_path, "drain-c", "--batch-size", "50", "--max-seconds", "120", **env) as c,
        ):
            drains = (a, b, c)
            for process in drains:
                try:
                    process.popen.wait(150)
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"drain still running\n{logs_of(*drains)}") from None
            took = time.monotonic() - started
            logs = logs_of(*drains)
            assert [p.popen.returncode for p in drains] == [0, 0, 0], logs
        received = provider_requests(provider.url)
        stats = provider_stats(provider.url)

    final = list(Message.objects.order_by("id"))
    assert status_counts() == {"sent": total}, logs
    per_key = Counter(r["idempotency_key"] for r in received)
    assert len(per_key) == total
    assert set(per_key) == {str(m.uuid) for m in messages}
    assert set(per_key.values()) == {1}, [k for k, n in per_key.items() if n > 1][:10]
    assert stats["requests"] == total and stats["duplicates_dropped"] == 0, stats
    check_idempotency(received, final)
    check_attempt_log(final)
    assert all(m.attempts == 1 for m in final)
    assert DeliveryAttempt.objects.filter(outcome="sent").count() == total
    assert DeliveryAttempt.objects.exclude(outcome="sent").count() == 0

    figures(
        "three_drains",
        messages=total,
        lost=total - count(Status.SENT),
        duplicate_requests=repeats(received),
        dropped_by_provider=stats["duplicates_dropped"],
        seconds=f"{took:.1f}",
    )


# --- 3. what the provider answers: retries and permanent failures ----------------------------------


def tick_until_settled(message: Message, *, timeout: float) -> Message:
    """Run manual ticks (in this process) until `message` is sent or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        call_command("dispatcher", "tick", "--force", stdout=io.StringIO())
        message.refresh_from_db()
        if message.status in (Status.SENT, Status.FAILED):
            return message
        time.sleep(0.05)
    raise AssertionError(f"message {message.pk} still {message.status} after {timeout}s: {message.last_error}")


def attempts_of(message: Message) -> list[DeliveryAttempt]:
    return list(DeliveryAttempt.objects.filter(message=message).order_by("number"))


def test_provider_answers_are_retried_or_fail_as_they_should(tmp_path, stopped_dispatcher, settings, figures):
    dispatcher_configure(batch_size=1, interval_seconds=1)
    with fake_provider(tmp_path) as provider:
        settings.DISPATCHER = {
            **settings.DISPATCHER,
            "PROVIDER_BACKEND": "webhook",
            "WEBHOOK_URL": provider.url,
            "WEBHOOK_TIMEOUT_SECONDS": 1,
            "MAX_ATTEMPTS": 5,
            "RETRY_BASE_SECONDS": 0.2,
            "RETRY_MAX_SECONDS": 5,
            "LEASE_SECONDS": 5,
        }

        def run(script: list, **faults) -> Message:
            message = Message.objects.create(recipient_phone_number=phone_number(), content=f"script {script}")
            provider_faults(provider.url, script=script, **faults)
            return tick_until_settled(message, timeout=20)

        # Two server errors, then accepted.
        five_hundreds = run([500, 500, 202])
        assert five_hundreds.status == Status.SENT and five_hundreds.attempts == 3
        tries = attempts_of(five_hundreds)
        assert [(a.number, a.outcome, a.http_status) for a in tries] == [
            (1, "retry", 500),
            (2, "retry", 500),
            (3, "sent", 202),
        ]
        assert tries[-1].provider_message_id == five_hundreds.provider_message_id

        # No answer within WEBHOOK_TIMEOUT_SECONDS, then accepted.
        timed_out = run(["timeout", 202], timeout_ms=2500)
        assert timed_out.status == Status.SENT and timed_out.attempts == 2
        tries = attempts_of(timed_out)
        assert [a.outcome for a in tries] == ["retry", "sent"]
        assert tries[0].http_status is None and "time" in tries[0].error.lower(), tries[0].error

        # Too many requests, come back in 2 s: the retry waits that long.
        throttled = run([429, 202], retry_after=2)
        assert throttled.status == Status.SENT and throttled.attempts == 2
        tries = attempts_of(throttled)
        assert [(a.outcome, a.http_status) for a in tries] == [("retry", 429), ("sent", 202)]
        retry_gap = (tries[1].started_at - tries[0].started_at).total_seconds()
        assert retry_gap >= 2.0, f"retried {retry_gap:.2f}s after a 429 with Retry-After: 2"

        # Server errors until the attempts run out: failed, with the reason.
        settings.DISPATCHER = {**settings.DISPATCHER, "MAX_ATTEMPTS": 3}
        exhausted = run([500] * 5, retry_after=0)
        provider_faults(provider.url, script=[])
        assert exhausted.status == Status.FAILED and exhausted.attempts == 3
        assert "500" in exhausted.last_error, exhausted.last_error
        tries = attempts_of(exhausted)
        assert [(a.outcome, a.http_status) for a in tries] == [("retry", 500), ("retry", 500), ("failed", 500)]

        # The provider logs the timed-out request when its 2.5 s are up.
        expected_requests = 3 + 2 + 2 + 3
        wait_for(lambda: provider_stats(provider.url)["requests"] >= expected_requests, timeout=10, what="requests")
        received = provider_requests(provider.url)
        stats = provider_stats(provider.url)

    messages = [five_hundreds, timed_out, throttled, exhausted]
    by_key = Counter(r["idempotency_key"] for r in received)
    # Every attempt at a message carried the same key: the message's uuid.
    assert by_key == {str(m.uuid): m.attempts for m in messages}, by_key
    check_idempotency(received, messages)
    check_attempt_log(messages)

    expected = {five_hundreds.pk: Status.SENT, timed_out.pk: Status.SENT, throttled.pk: Status.SENT}
    expected[exhausted.pk] = Status.FAILED
    figures(
        "provider_scripts",
        messages=len(messages),
        lost=sum(1 for m in messages if m.status != expected[m.pk]),
        duplicate_requests=repeats(received),
        dropped_by_provider=stats["duplicates_dropped"],
        retry_after_gap_s=f"{retry_gap:.2f}",
    )


# --- 4. Redis down while sending -------------------------------------------------------------------


def cached_ids(client, provider_message_ids) -> set[str]:
    ids = list(provider_message_ids)
    values = client.mget([f"messages:{i}" for i in ids]) if ids else []
    return {i for i, value in zip(ids, values, strict=True) if value is not None}


def test_redis_down_loses_no_delivery_and_the_cache_catches_up(tmp_path, stopped_dispatcher, figures):
    total = 30
    make_messages(total, "redis")
    dispatcher_configure(batch_size=3, interval_seconds=1)

    with redis_server(tmp_path) as redis_srv, fake_provider(tmp_path, "--latency-ms", "100") as provider:
        env = dispatcher_env(provider.url, REDIS_URL=redis_srv.url())
        with qcluster_running(tmp_path, **env) as cluster:
            processes = (cluster, provider)
            dispatcher_start()
            wait_or_fail(lambda: count(Status.SENT) >= 6, timeout=30, what="six sends", processes=processes)

            redis_srv.stop()  # saves its data, as a Redis with persistence would, and refuses connections
            sent_before_outage = count(Status.SENT)
            wait_or_fail(
                lambda: count(Status.SENT) >= sent_before_outage + 9,
                timeout=30,
                what="nine sends with Redis down",
                processes=processes,
            )
            pending_while_down = Message.objects.filter(status=Status.SENT, delivery_cache_pending=True).count()
            failed_while_down = count(Status.FAILED)

            redis_srv.start()  # same port, same data
            wait_or_fail(
                lambda: (
                    count(Status.SENT) == total and not Message.objects.filter(delivery_cache_pending=True).exists()
                ),
                timeout=60,
                what="every message sent and every delivery cached",
                processes=processes,
            )
            dispatcher_stop()
            logs = logs_of(*processes)

        # Sent with Redis down and no dispatcher to catch up: `dispatcher recache` writes the records.
        redis_srv.stop()
        late = Message.objects.create(recipient_phone_number=phone_number(), content="sent during the outage")
        ticked = manage(["dispatcher", "tick", "--force"], env=child_env(**env))
        assert ticked.returncode == 0, ticked.stdout
        late.refresh_from_db()
        assert late.status == Status.SENT and late.delivery_cache_pending, (late.status, ticked.stdout)
        redis_srv.start()
        recached = manage(["dispatcher", "recache"], env=child_env(**env))
        assert recached.returncode == 0, recached.stdout
        assert "Wrote 1 pending" in recached.stdout, recached.stdout
        again = manage(["dispatcher", "recache"], env=child_env(**env))
        assert again.returncode == 0 and "Wrote 0 pending" in again.stdout, again.stdout

        received = provider_requests(provider.url)
        stats = provider_stats(provider.url)
        client = redis_srv.client()
        try:
            final = list(Message.objects.order_by("id"))
            sent_ids = {m.provider_message_id for m in final if m.status == Status.SENT}
            in_redis = cached_ids(client, sent_ids)
        finally:
            client.close()

    assert failed_while_down == 0, logs
    assert pending_while_down >= 1, f"no message was pending a cache write while Redis was down\n{logs}"
    assert all(m.status == Status.SENT for m in final), logs
    assert not any(m.delivery_cache_pending for m in final)
    assert in_redis == sent_ids, f"{len(sent_ids - in_redis)} deliveries missing from Redis\n{logs}"
    check_idempotency(received, final, logs)
    check_attempt_log(final, logs)

    figures(
        "redis_down",
        messages=total + 1,
        lost=sum(1 for m in final if m.status != Status.SENT),
        duplicate_requests=repeats(received),
        dropped_by_provider=stats["duplicates_dropped"],
        pending_while_down=pending_while_down,
        missing_from_cache=len(sent_ids - in_redis),
    )


# --- 5. the database connection cut in mid-tick ----------------------------------------------------


def processing_uuids() -> set[str]:
    return {str(u) for u in Message.objects.filter(status=Status.PROCESSING).values_list("uuid", flat=True)}


def test_database_connections_terminated_mid_tick_the_next_ticks_finish_the_job(tmp_path, stopped_dispatcher, figures):
    total = 24
    make_messages(total, "pgkill")
    dispatcher_configure(batch_size=4, interval_seconds=1)
    cuts, gap = 8, 0.25

    with fake_provider(tmp_path, "--latency-ms", "200") as provider:
        # A lease of 1 + 4 x 1 = 5 s brings back what a cut tick leaves behind quickly.
        env = dispatcher_env(provider.url, WEBHOOK_TIMEOUT_SECONDS="1")
        with qcluster_running(tmp_path, **env) as cluster:
            processes = (cluster, provider)
            dispatcher_start()
            wait_or_fail(
                lambda: count(Status.SENT) >= 2 and count(Status.PROCESSING) >= 1,
                timeout=30,
                what="a batch in mid-send",
                processes=processes,
            )
            # Cut every connection of the qcluster (worker, pusher, monitor) again and again for two
            # seconds, so that some cuts land between a send and the write of its outcome.
            exposed: set[str] = set()  # messages in flight at some cut
            terminated = 0
            for _ in range(cuts):
                exposed |= processing_uuids()
                terminated += terminate_database_backends()
                exposed |= processing_uuids()
                time.sleep(gap)
            cut_until = timezone.now()
            wait_or_fail(
                lambda: count(Status.SENT) == total,
                timeout=60,
                what="every message sent after the connections were cut",
                processes=processes,
            )
            assert cluster.popen.poll() is None, f"qcluster died\n{logs_of(*processes)}"
            received = provider_requests(provider.url)
            stats = provider_stats(provider.url)
            logs = logs_of(*processes)

    final = list(Message.objects.order_by("id"))
    assert terminated >= cuts, f"only {terminated} connections terminated in {cuts} cuts"
    assert count(Status.PROCESSING) == 0 and count(Status.FAILED) == 0, logs
    # Later ticks ran: messages were claimed after the last cut.
    assert Message.objects.filter(claimed_at__gt=cut_until).exists(), logs
    check_idempotency(received, final, logs)
    check_attempt_log(final, logs)
    repeated_keys = {key for key, n in Counter(r["idempotency_key"] for r in received).items() if n > 1}
    assert repeated_keys <= exposed, f"re-sent though not in flight at a cut: {repeated_keys - exposed}\n{logs}"
    assert stats["duplicates_dropped"] == repeats(received), stats
    cluster_log = cluster.log()
    failed_writes = cluster_log.count("could not record the outcome")
    failed_ticks = cluster_log.count("tick failed")

    figures(
        "db_connections_terminated",
        messages=total,
        lost=total - count(Status.SENT),
        duplicate_requests=repeats(received),
        dropped_by_provider=stats["duplicates_dropped"],
        backends_terminated=terminated,
        in_flight_at_cuts=len(exposed),
        outcome_writes_failed=failed_writes,
        ticks_failed=failed_ticks,
    )


# --- 6. stop during a batch ------------------------------------------------------------------------


def test_nothing_is_claimed_once_stop_returns_during_a_batch(tmp_path, stopped_dispatcher, figures):
    total = 20
    make_messages(total, "stop")
    dispatcher_configure(batch_size=5, interval_seconds=1)

    with fake_provider(tmp_path, "--latency-ms", "1000") as provider:
        env = dispatcher_env(provider.url)
        with qcluster_running(tmp_path, **env) as cluster:
            processes = (cluster, provider)
            dispatcher_start()
            wait_or_fail(
                lambda: count(Status.SENT) >= 1 and count(Status.PROCESSING) >= 1,
                timeout=30,
                what="a batch in mid-send",
                processes=processes,
            )
            dispatcher_stop()
            stop_returned = timezone.now()
            claimed_at_stop = count(Status.PROCESSING, Status.SENT, Status.FAILED)

            wait_or_fail(
                lambda: count(Status.PROCESSING) == 0,
                timeout=20,
                what="the claimed batch to settle",
                processes=processes,
            )
            time.sleep(3)  # three would-be ticks at one a second
            received = provider_requests(provider.url)
            stats = provider_stats(provider.url)
            logs = logs_of(*processes)

    last_claim = Message.objects.aggregate(last=Max("claimed_at"))["last"]
    settled = count(Status.PROCESSING, Status.SENT, Status.FAILED)
    assert last_claim is not None and last_claim <= stop_returned, (last_claim, stop_returned, logs)
    assert settled <= claimed_at_stop, f"{settled} claimed or done now, {claimed_at_stop} at the stop\n{logs}"
    assert count(Status.PROCESSING) == 0 and count(Status.FAILED) == 0, logs
    assert count(Status.UNSENT) == total - count(Status.SENT)
    final = list(Message.objects.order_by("id"))
    check_idempotency(received, final, logs)
    check_attempt_log(final, logs)

    figures(
        "stop_mid_batch",
        messages=total,
        lost=count(Status.PROCESSING, Status.FAILED),
        duplicate_requests=repeats(received),
        dropped_by_provider=stats["duplicates_dropped"],
        claimed_at_stop=claimed_at_stop,
        sent=count(Status.SENT),
    )


# --- 7. graceful shutdown of the worker ------------------------------------------------------------


def test_sigterm_mid_batch_finishes_the_send_in_flight_and_releases_the_rest(tmp_path, stopped_dispatcher, figures):
    total = 12
    make_messages(total, "sigterm")
    dispatcher_configure(batch_size=5, interval_seconds=1)

    with fake_provider(tmp_path, "--latency-ms", "1000") as provider:
        env = dispatcher_env(provider.url)
        with qcluster_running(tmp_path, **env) as cluster:
            processes = (cluster, provider)
            dispatcher_start()
            wait_or_fail(
                lambda: count(Status.SENT) >= 1 and count(Status.PROCESSING) >= 2,
                timeout=30,
                what="a batch in mid-send",
                processes=processes,
            )
            claimed_at_term = count(Status.PROCESSING, Status.SENT)
            started = time.monotonic()
            returncode = cluster.stop(signal.SIGTERM, timeout=30)
            took = time.monotonic() - started
            received = provider_requests(provider.url)
            stats = provider_stats(provider.url)
            logs = logs_of(*processes)

    assert returncode == 0, logs
    assert count(Status.PROCESSING) == 0 and count(Status.FAILED) == 0, logs
    released = DeliveryAttempt.objects.filter(outcome="released")
    assert released.exists(), f"nothing released\n{logs}"
    # Released messages are back in the queue and the release does not count as an attempt.
    released_messages = Message.objects.filter(delivery_attempts__in=released).distinct()
    assert all(m.status == Status.UNSENT and m.attempts == 0 for m in released_messages), logs
    assert count(Status.SENT) + released_messages.count() == claimed_at_term, logs
    final = list(Message.objects.order_by("id"))
    check_idempotency(received, final, logs)
    check_attempt_log(final, logs)
    assert repeats(received) == 0

    figures(
        "sigterm_mid_batch",
        messages=total,
        lost=count(Status.PROCESSING, Status.FAILED),
        duplicate_requests=repeats(received),
        dropped_by_provider=stats["duplicates_dropped"],
        released=released.count(),
        stop_seconds=f"{took:.1f}",
    )
