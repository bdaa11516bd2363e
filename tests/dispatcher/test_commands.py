"""`manage.py dispatcher ...` and `manage.py fakeprovider` (option checks only: serving is in test_providers)."""

from __future__ import annotations

import socket
import threading
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from dispatcher.engine.providers import ProviderError, locmem
from dispatcher.models import DispatcherState
from messages_app.models import Message
from tests.factories import make_message
from tests.processes import child_env, free_port, manage

Status = Message.Status


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def get_state() -> DispatcherState:
    return DispatcherState.objects.get(pk=DispatcherState.SINGLETON_PK)


@pytest.fixture
def running_dispatcher(db):
    DispatcherState.objects.update(running=True, batch_size=2, interval_seconds=60, next_tick_at=timezone.now())


@pytest.fixture
def stopped_dispatcher(db):
    DispatcherState.objects.update(running=False, next_tick_at=None, batch_size=2, interval_seconds=60)


# --- dispatcher status / start / stop ------------------------------------------------


@pytest.mark.django_db
def test_status_shows_state_pace_and_counts(running_dispatcher):
    make_message()
    make_message()
    make_message(status=Status.SENT)
    make_message(status=Status.FAILED)

    out = run("dispatcher", "status")

    assert "running:          yes" in out
    assert "batch size:       2" in out
    assert "interval:         60 s" in out
    assert "last tick:        -" in out
    assert "messages:         unsent 2, processing 0, sent 1, failed 1" in out


def test_status_when_stopped_shows_no_next_tick(stopped_dispatcher):
    out = run("dispatcher", "status")
    assert "running:          no" in out
    assert "next tick:        -" in out


def test_stop_then_start(running_dispatcher):
    out = run("dispatcher", "stop")
    assert "running:          no" in out
    assert get_state().running is False
    assert run("dispatcher", "stop").count("running:          no") == 1  # idempotent

    out = run("dispatcher", "start")
    assert "running:          yes" in out
    state = get_state()
    assert state.running is True
    assert state.next_tick_at is not None and state.next_tick_at <= timezone.now()


# --- dispatcher configure ---------------------------------------------------------------


def test_configure_changes_the_pace(running_dispatcher):
    out = run("dispatcher", "configure", "--batch-size", "25", "--interval-seconds", "5")
    assert "batch size:       25" in out
    assert "interval:         5 s" in out
    state = get_state()
    assert (state.batch_size, state.interval_seconds) == (25, 5)


def test_configure_one_value_keeps_the_other(running_dispatcher):
    run("dispatcher", "configure", "--interval-seconds", "9")
    assert (get_state().batch_size, get_state().interval_seconds) == (2, 9)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --batch-size, --interval-seconds or both"),
        (["--batch-size", "0"], "Batch size must be between 1 and 10000"),
        (["--batch-size", "10001"], "Batch size must be between 1 and 10000"),
        (["--interval-seconds", "0"], "Interval must be between 1 and 86400"),
        (["--batch-size", "3", "--interval-seconds", "100000"], "Interval must be between 1 and 86400"),
    ],
)
def test_configure_rejects_bad_values(running_dispatcher, args, message):
    with pytest.raises(CommandError, match=message):
        run("dispatcher", "configure", *args)
    assert (get_state().batch_size, get_state().interval_seconds) == (2, 60)


def test_configure_rejects_non_numbers(running_dispatcher):
    with pytest.raises(CommandError, match="invalid int value"):
        run("dispatcher", "configure", "--batch-size", "lots")


def test_unknown_operation_is_an_error(db):
    with pytest.raises(CommandError):
        run("dispatcher", "explode")


# --- dispatcher tick ------------------------------------------------------------------


def test_tick_sends_one_batch_and_prints_it(running_dispatcher, settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "CONCURRENCY": 1}  # one at a time: sent and printed in order
    messages = [make_message(content=f"m{i}") for i in range(3)]

    out = run("dispatcher", "tick")

    assert [e.message_pk for e in locmem.outbox] == [messages[0].pk, messages[1].pk]
    for entry, message in zip(locmem.outbox, messages, strict=False):
        assert f"sent   message {message.pk} ({message.uuid}) messageId={entry.message_id}" in out
    assert "2 sent, 0 to retry, 0 failed." in out
    assert "cache write failed" not in out
    assert Message.objects.get(pk=messages[2].pk).status == Status.UNSENT


def test_tick_prints_failures(running_dispatcher):
    message = make_message()
    locmem.failures.append(ProviderError("provider answered HTTP 500: oops", permanent=True))

    out = run("dispatcher", "tick")

    assert f"failed message {message.pk} ({message.uuid}): provider answered HTTP 500: oops" in out
    assert "0 sent, 0 to retry, 1 failed." in out
    assert Message.objects.get(pk=message.pk).status == Status.FAILED


def test_tick_with_nothing_to_send(running_dispatcher):
    assert run("dispatcher", "tick").strip() == "No unsent messages."


def test_tick_when_stopped_is_an_error(stopped_dispatcher):
    message = make_message()
    with pytest.raises(CommandError, match="stopped"):
        run("dispatcher", "tick")
    assert Message.objects.get(pk=message.pk).status == Status.UNSENT
    assert locmem.outbox == []


def test_forced_tick_when_stopped_sends_and_stays_stopped(stopped_dispatcher):
    message = make_message()
    out = run("dispatcher", "tick", "--force")
    assert f"sent   message {message.pk}" in out
    assert Message.objects.get(pk=message.pk).status == Status.SENT
    assert get_state().running is False


def test_tick_says_when_the_delivery_cache_is_down(running_dispatcher, settings):
    settings.CACHES = {
        **settings.CACHES,
        "deliveries": {
            **settings.CACHES["deliveries"],
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
            "OPTIONS": {
                **settings.CACHES["deliveries"]["OPTIONS"],
                "SOCKET_CONNECT_TIMEOUT": 0.5,
                "SOCKET_TIMEOUT": 0.5,
            },
        },
    }
    message = make_message()
    out = run("dispatcher", "tick")
    assert f"sent   message {message.pk}" in out
    assert "(delivery cache write failed; will be written later)" in out
    assert Message.objects.get(pk=message.pk).status == Status.SENT


# --- fakeprovider option checks --------------------------------------------------------


def fakeprovider_error(*args: str) -> CommandError:
    """Run `fakeprovider` expecting it to refuse to start; fail (not hang) if it serves instead."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call_command("fakeprovider", *args, stdout=StringIO())
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(10)
    assert outcome, "fakeprovider started serving instead of refusing"
    assert isinstance(outcome[0], CommandError), outcome[0]
    return outcome[0]


def test_fakeprovider_on_a_busy_port_is_an_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        error = fakeprovider_error("--port", str(port))
        assert f"cannot listen on 127.0.0.1:{port}" in str(error)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--error-rate", "1.5"], "error_rate must be between 0 and 1"),
        (["--error-rate", "-0.1"], "error_rate must be between 0 and 1"),
        (["--error-rate", "often"], "invalid float value"),
        (["--latency-ms", "-5"], "latency_ms must not be negative"),
        (["--error-status", "700"], "HTTP status"),
        (["--status-code", "42"], "HTTP status"),
        (["--undelivered-rate", "2"], "undelivered_rate must be between 0 and 1"),
        (["--receipt-delay-ms", "-1"], "receipt_delay_ms must not be negative"),
        (["--receipt-batch-size", "0"], "receipt_batch_size must be between 1 and 1000"),
        (["--receipt-batch-wait-ms", "-1"], "receipt_batch_wait_ms must not be negative"),
        (["--receipts-url", "ftp://example.com/"], "receipts_url must be an http:// or https:// URL"),
        (["--receipts-url", "http://127.0.0.1:9/"], "receipts need a secret"),
        (["--receipt-secret", "not-a-secret"], "whsec_"),
        (["--receipt-secret", "whsec_***"], "whsec_"),
    ],
)
def test_fakeprovider_rejects_bad_options(args, message, monkeypatch):
    monkeypatch.delenv("FAKE_PROVIDER_RECEIPT_SECRET", raising=False)
    # The port is free: a bad option must stop it before it starts serving.
    assert message in str(fakeprovider_error("--port", str(free_port()), *args))


@pytest.mark.process
@pytest.mark.parametrize(
    ("args", "error"),
    [
        # Issue 20: "OverflowError: bind(): port must be 0-65535." with a traceback.
        (["fakeprovider", "--port", "99999"], "--port: must be a whole number from 1 to 65,535, got 99999"),
        (["fakeprovider", "--port", "0"], "--port: must be a whole number from 1 to 65,535, got 0"),
        # Accepted, then asyncio.sleep(nan) or a 429 saying Retry-After: inf.
        (["fakeprovider", "--port", "{port}", "--latency-ms", "nan"], "latency_ms must be a finite number"),
        (["fakeprovider", "--port", "{port}", "--retry-after", "inf"], "retry_after must be a finite number"),
        # A drain told to stop after nan seconds never stopped; "bigint out of range" from the database.
        (["dispatcher", "drain", "--max-seconds", "nan"], "--max-seconds: 'nan' is not a finite number"),
        (["dispatcher", "drain", "--max-seconds", "-1"], "--max-seconds: must be a number from 0 to 604,800"),
        (["dispatcher", "drain", "--batch-size", "0"], "--batch-size: must be a whole number from 1 to 10,000"),
        (["dispatcher", "recache", "--since", "2020-01-01", "--batch-size", "1" + "0" * 20], "--batch-size: must be"),
    ],
    ids=[
        "port-too-high",
        "port-zero",
        "latency-nan",
        "retry-after-inf",
        "drain-nan",
        "drain-negative",
        "drain-batch",
        "recache-batch",
    ],
)
def test_a_number_out_of_range_is_a_one_line_error_not_a_traceback(args, error):
    done = manage([arg.format(port=free_port()) for arg in args], env=child_env(), timeout=30)

    assert done.returncode != 0
    assert "Traceback" not in done.stdout, done.stdout
    assert error in done.stdout.strip().splitlines()[-1], done.stdout


# --- dispatcher drain / recache ---------------------------------------------------------


@pytest.mark.django_db
def test_drain_sends_everything_claimable_in_batches_and_reports_progress(running_dispatcher):
    messages = [make_message() for _ in range(7)]
    later = make_message(next_attempt_at=timezone.now() + timezone.timedelta(hours=1))

    out = run("dispatcher", "drain", "--batch-size", "3")

    assert sorted(e.message_pk for e in locmem.outbox) == sorted(m.pk for m in messages)
    assert out.count("drain: ") == 3  # one progress line per batch
    assert "drain done: 7 sent, 0 to retry, 0 failed" in out
    assert Message.objects.get(pk=later.pk).status == Status.UNSENT


@pytest.mark.django_db
def test_drain_refuses_while_stopped_and_bad_batch_sizes(stopped_dispatcher):
    make_message()
    with pytest.raises(CommandError, match="stopped"):
        run("dispatcher", "drain")
    with pytest.raises(CommandError, match="--batch-size"):
        run("dispatcher", "drain", "--batch-size", "0")
    assert locmem.outbox == []


@pytest.mark.django_db
def test_recache_writes_pending_records(running_dispatcher):
    from dispatcher.engine.delivery_cache import delivery_cache_get

    message = make_message(status=Status.SENT, delivery_cache_pending=True)

    out = run("dispatcher", "recache")

    assert "Wrote 1 pending delivery cache record(s)." in out
    assert delivery_cache_get(message.provider_message_id)["messageId"] == message.provider_message_id
    assert not Message.objects.get(pk=message.pk).delivery_cache_pending


def sent_at(text: str) -> timezone.datetime:
    return timezone.datetime.fromisoformat(text)


@pytest.mark.django_db
def test_recache_rebuilds_the_records_of_a_time_range_after_redis_lost_them(settings):
    from django.core.cache import caches

    from dispatcher.engine.delivery_cache import delivery_cache_get

    before = make_message(status=Status.SENT, provider_message_id="p-before", sent_at=sent_at("2026-01-31T23:59:59Z"))
    inside = [
        make_message(status=Status.SENT, provider_message_id=f"p-{i}", sent_at=sent_at(f"2026-02-0{1 + i}T10:00:00Z"))
        for i in range(5)
    ]
    at_until = make_message(status=Status.SENT, provider_message_id="p-until", sent_at=sent_at("2026-02-10T00:00:00Z"))
    make_message(status=Status.FAILED)  # never sent: no record to make
    caches[settings.DELIVERY_CACHE_ALIAS].clear()  # Redis lost its data

    out, err = StringIO(), StringIO()
    call_command(
        "dispatcher",
        "recache",
        "--since",
        "2026-02-01",
        "--until",
        "2026-02-10",
        "--batch-size",
        "2",
        stdout=out,
        stderr=err,
    )

    assert "Rebuilt 5 delivery cache record(s) of messages sent since 2026-02-01T00:00:00+00:00" in out.getvalue()
    assert "5/5" in err.getvalue()  # the progress bar, three batches of at most two
    for message in inside:
        assert delivery_cache_get(message.provider_message_id) == {
            "messageId": message.provider_message_id,
            "timestamp": int(message.sent_at.timestamp()),  # when it was sent, not now
        }
    assert delivery_cache_get(before.provider_message_id) is None
    assert delivery_cache_get(at_until.provider_message_id) is None  # --until is exclusive


@pytest.mark.django_db
def test_recache_with_only_since_rebuilds_everything_sent_after_it_and_clears_pending_flags():
    from dispatcher.engine.delivery_cache import delivery_cache_get

    old = make_message(status=Status.SENT, provider_message_id="p-old", sent_at=sent_at("2025-06-01T00:00:00Z"))
    pending = make_message(
        status=Status.SENT, provider_message_id="p-new", sent_at=timezone.now(), delivery_cache_pending=True
    )

    out = run("dispatcher", "recache", "--since", "2026-01-01T00:00:00+03:00")

    assert "Rebuilt 1 delivery cache record(s)" in out
    assert delivery_cache_get("p-new")["messageId"] == "p-new"
    assert delivery_cache_get(old.provider_message_id) is None
    assert not Message.objects.get(pk=pending.pk).delivery_cache_pending


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--since", "yesterday"], "--since/--until"),
        (["--since", "2026-02-02", "--until", "2026-02-01"], "--since must be before --until"),
        (["--until", "2026-02-01", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_recache_refuses_bad_ranges(args, error):
    with pytest.raises(CommandError, match=error):
        run("dispatcher", "recache", *args)


@pytest.mark.django_db
def test_recache_of_a_range_fails_clearly_while_redis_is_down(settings):
    make_message(status=Status.SENT, provider_message_id="p-1", sent_at=sent_at("2026-02-01T10:00:00Z"))
    settings.CACHES = {
        **settings.CACHES,
        settings.DELIVERY_CACHE_ALIAS: {
            **settings.CACHES[settings.DELIVERY_CACHE_ALIAS],
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
        },
    }
    from django.core.cache import caches

    caches[settings.DELIVERY_CACHE_ALIAS].close()
    with pytest.raises(CommandError, match="is Redis up"):
        run("dispatcher", "recache", "--since", "2026-02-01")


@pytest.mark.django_db
def test_cluster_check_fails_without_a_running_qcluster_on_this_host():
    with pytest.raises(CommandError, match="no running qcluster"):
        run("dispatcher", "cluster-check")
