"""Several providers under faults, with real processes: qclusters configured through PROVIDERS and
PROVIDER_<NAME>_*, real fake-provider processes (and a closed port), PostgreSQL, Redis.

1. the primary refuses connections: everything goes through the secondary, no duplicates;
2. the primary times out: no failover for those messages, retries to the primary with the same key;
3. a flapping primary: its circuit opens and closes, and no request reaches it while open;
4. a rate limit on one provider held by several qclusters together;
5. the only provider down for a while: nothing fails, a few probes per cool-off, all sent after;
6. Redis (circuits, rate limits) stopped mid-run: sending goes on within the documented fallback.

Each prints its figures on a `FAULT-FIGURES` line.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
from django.db.models import Count, Max

from dispatcher.engine.providers.gate import Circuit
from dispatcher.state import dispatcher_configure, dispatcher_start, dispatcher_stop
from messages_app.models import DeliveryAttempt, Message
from tests.factories import phone_number
from tests.processes import (
    fake_provider,
    free_port,
    logs_of,
    provider_faults,
    provider_requests,
    provider_stats,
    qcluster_running,
    redis_server,
    wait_for,
)

Status = Message.Status

pytestmark = [pytest.mark.process, pytest.mark.django_db(transaction=True)]

COOLOFF_SECONDS = 3.0


def providers_env(primary_url: str, secondary_url: str | None = None, **overrides: str) -> dict[str, str]:
    """The environment of a qcluster sending through `primary` (and `secondary`), in that order."""
    env = {
        "PROVIDERS": "primary,secondary" if secondary_url else "primary",
        "PROVIDER_PRIMARY_URL": primary_url,
        "PROVIDER_PRIMARY_TIMEOUT_SECONDS": "2",
        "PROVIDER_CIRCUIT_FAILURES": "5",
        "PROVIDER_CIRCUIT_COOLOFF_SECONDS": str(COOLOFF_SECONDS),
        "PROVIDER_CIRCUIT_PROBES": "2",
        "DISPATCH_LEASE_SECONDS": "5",
        "DISPATCH_CONCURRENCY": "4",
        "DISPATCH_MAX_ATTEMPTS": "5",
        "DISPATCH_RETRY_BASE_SECONDS": "0.5",
        "DISPATCH_RETRY_MAX_SECONDS": "2",
        "DISPATCH_WINDOW_SECONDS": "150",
        "QCLUSTER_WORKERS": "2",
    }
    if secondary_url:
        env.update(PROVIDER_SECONDARY_URL=secondary_url, PROVIDER_SECONDARY_TIMEOUT_SECONDS="2")
    env.update(overrides)
    return env


@pytest.fixture
def stopped_dispatcher():
    """Every test starts stopped, so nothing is sent before it starts the dispatcher."""
    dispatcher_stop()
    yield
    dispatcher_stop()


@pytest.fixture
def figures(capsys):
    def report(name: str, **values: object) -> None:
        line = "FAULT-FIGURES " + name + " " + " ".join(f"{key}={value}" for key, value in values.items())
        with capsys.disabled():
            print(f"\n{line}")

    return report


@pytest.fixture
def dirs(tmp_path):
    """dirs(name) -> a directory of its own under tmp_path (each fake provider logs to its own)."""

    def make(name: str):
        path = tmp_path / name
        path.mkdir(exist_ok=True)
        return path

    return make


def make_messages(n: int, label: str) -> list[Message]:
    Message.objects.bulk_create(
        [Message(recipient_phone_number=phone_number(), content=f"{label} {i}") for i in range(n)], batch_size=1000
    )
    return list(Message.objects.order_by("id"))


def count(*statuses: str) -> int:
    return Message.objects.filter(status__in=statuses).count()


def status_counts() -> dict[str, int]:
    return dict(Message.objects.order_by().values_list("status").annotate(n=Count("id")))


def wait_or_fail(predicate, *, timeout: float, what: str, processes=(), interval: float = 0.2) -> None:
    try:
        wait_for(predicate, timeout=timeout, interval=interval, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; messages: {status_counts()}\n{logs_of(*processes)}") from None


def accepted(received: list[dict]) -> Counter:
    """Idempotency-Key -> how many times the provider delivered it (a dropped repeat does not count)."""
    return Counter(r["idempotency_key"] for r in received if 200 <= r["status"] < 300 and not r["duplicate"])


def check_every_message_sent_once(messages: list[Message], *providers_received: list[dict], logs: str = "") -> None:
    """Every message sent, each delivered by exactly one provider exactly once, with the id it keeps."""
    final = {m.pk: m for m in Message.objects.filter(pk__in=[m.pk for m in messages])}
    assert all(m.status == Status.SENT for m in final.values()), f"{status_counts()}\n{logs}"
    totals = Counter()
    for received in providers_received:
        totals.update(accepted(received))
    uuids = {str(m.uuid) for m in final.values()}
    assert set(totals) == uuids, f"{len(uuids - set(totals))} never delivered, {len(set(totals) - uuids)} unknown"
    twice = [key for key, n in totals.items() if n > 1]
    assert not twice, f"{len(twice)} messages delivered twice: {twice[:5]}\n{logs}"


@dataclass(frozen=True)
class Sample:
    at: float  # time.time()
    state: str
    open_until: float | None


class CircuitWatch:
    """Reads a provider's circuit from Redis (what every worker shares) every `every` seconds."""

    def __init__(self, name: str, every: float = 0.05) -> None:
        self.circuit = Circuit(name)
        self.every = every
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            state = self.circuit._read()  # fresh, not the per-process cached copy
            self.samples.append(Sample(time.time(), state.state, state.open_until))
            self._stop.wait(self.every)

    def __enter__(self) -> CircuitWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def open_periods(self) -> list[tuple[float, float]]:
        """(first, last) sample time of each run of samples that saw the circuit open until
        the same time. A failed half-open probe opens it again with a new `open_until`,
        often between two samples: that is a new period (the probes before it are allowed)."""
        periods, start, last, until = [], None, None, None
        for sample in self.samples:
            if start is not None and (sample.state != "open" or sample.open_until != until):
                periods.append((start, last))
                start = None
            if sample.state == "open":
                start = sample.at if start is None else start
                last, until = sample.at, sample.open_until
        if start is not None:
            periods.append((start, last))
        return periods

    def closes(self) -> int:
        """How many times it was seen closed again after being seen open or half open."""
        closes, was_open = 0, False
        for sample in self.samples:
            if sample.state != "closed":
                was_open = True
            elif was_open:
                closes, was_open = closes + 1, False
        return closes


def per_second(times: list[float], start: float, seconds: int) -> list[int]:
    """How many of `times` fall in each second [start + i, start + i + 1), for `seconds` seconds."""
    bins = [0] * seconds
    for at in times:
        index = math.floor(at - start)
        if 0 <= index < seconds:
            bins[index] += 1
    return bins


def busiest(times: list[float], window: float = 1.0) -> int:
    """The most of `times` in any window of `window` seconds (sliding, not aligned to the clock)."""
    ordered, best, start = sorted(times), 0, 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


# --- 1. the primary refuses connections ------------------------------------------------------------


def test_primary_refusing_every_message_goes_through_the_secondary_once(dirs, stopped_dispatcher, figures):
    total = 60
    messages = make_messages(total, "refused")
    dispatcher_configure(batch_size=10, interval_seconds=1)
    refusing = f"http://127.0.0.1:{free_port()}/"  # nothing listens there

    with (
        fake_provider(dirs("secondary")) as secondary,
        qcluster_running(dirs("cluster"), **providers_env(refusing, secondary.url)) as cluster,
    ):
        processes = (cluster, secondary)
        started = time.monotonic()
        dispatcher_start()
        wait_or_fail(lambda: count(Status.SENT) == total, timeout=60, what="every message sent", processes=processes)
        took = time.monotonic() - started
        received = provider_requests(secondary.url)
        stats = provider_stats(secondary.url)
        logs = logs_of(*processes)

    final = list(Message.objects.order_by("id"))
    check_every_message_sent_once(messages, received, logs=logs)
    per_key = Counter(r["idempotency_key"] for r in received)
    assert set(per_key.values()) == {1}, "the secondary was asked twice for a message"
    assert stats["duplicates_dropped"] == 0
    assert all(m.provider == "secondary" and m.attempts == 1 for m in final), logs
    assert set(DeliveryAttempt.objects.values_list("provider", "outcome")) == {("secondary", "sent")}
    assert "provider primary: circuit opened" in cluster.log(), logs

    figures(
        "provider_primary_refusing",
        messages=total,
        lost=total - count(Status.SENT),
        sent_by_secondary=len(per_key),
        duplicates=sum(per_key.values()) - len(per_key),
        attempts_max=max(m.attempts for m in final),
        seconds=f"{took:.1f}",
    )


# --- 2. the primary times out --------------------------------------------------------------------


def test_primary_timing_out_its_messages_stay_with_it_and_keep_their_key(dirs, stopped_dispatcher, figures):
    total = 30
    messages = make_messages(total, "timeout")
    dispatcher_configure(batch_size=10, interval_seconds=1)

    # The primary answers (and takes the message) after 3 s; we wait 1 s.
    with (
        fake_provider(dirs("primary"), "--latency-ms", "3000") as primary,
        fake_provider(dirs("secondary")) as secondary,
    ):
        # Eight sends in flight: the ones that time out after the circuit opened meet the open circuit.
        env = providers_env(
            primary.url,
            secondary.url,
            PROVIDER_PRIMARY_TIMEOUT_SECONDS="1",
            PROVIDER_CIRCUIT_PROBES="1",
            DISPATCH_CONCURRENCY="8",
            DISPATCH_MAX_ATTEMPTS="10",
        )
        with qcluster_running(dirs("cluster"), **env) as cluster:
            processes = (cluster, primary, secondary)
            dispatcher_start()
            wait_or_fail(
                lambda: "provider primary: circuit opened" in cluster.log(),
                timeout=40,
                what="the primary's circuit to open",
                processes=processes,
            )
            time.sleep(2 * COOLOFF_SECONDS)  # half-open probes time out too
            provider_faults(primary.url, latency_ms=0)  # the primary recovers
            wait_or_fail(
                lambda: count(Status.SENT) == total, timeout=60, what="every message sent", processes=processes
            )
            time.sleep(3.5)  # requests still held by the slow primary are answered and logged
            at_primary = provider_requests(primary.url)
            at_secondary = provider_requests(secondary.url)
            logs = logs_of(*processes)

    final = list(Message.objects.order_by("id"))
    assert count(Status.FAILED) == 0, logs
    uuids = {str(m.uuid) for m in final}
    assert all(r["idempotency_key"] in uuids for r in at_primary + at_secondary)
    timed_out = {
        pk
        for pk, status in DeliveryAttempt.objects.filter(provider="primary", outcome="retry").values_list(
            "message_id", "http_status"
        )
        if status is None
    }
    assert timed_out, f"no attempt timed out at the primary\n{logs}"
    # A message whose attempt timed out (counted, retried) went back to the primary only.
    secondary_keys = {r["idempotency_key"] for r in at_secondary}
    for message in final:
        if message.pk in timed_out:
            assert message.provider == "primary", (message.pk, message.provider)
            assert str(message.uuid) not in secondary_keys, f"message {message.pk} failed over after a timeout"
    primary_accepted, secondary_accepted = accepted(at_primary), accepted(at_secondary)
    both = set(primary_accepted) & set(secondary_accepted)
    figures(
        "provider_primary_timing_out",
        messages=total,
        lost=total - count(Status.SENT),
        timed_out_at_primary=len(timed_out),
        requests_at_primary=len(at_primary),
        repeats_dropped_by_primary=sum(1 for r in at_primary if r["duplicate"]),
        sent_by_secondary=len(secondary_accepted),
        accepted_by_both=len(both),
    )
    assert not both, f"{len(both)} messages accepted by both providers"
    check_every_message_sent_once(messages, at_primary, at_secondary, logs=logs)


# --- 3. a flapping primary -------------------------------------------------------------------------

FLAP_SECONDS = 4.0
FLAPS = 2
# A worker reads the shared circuit at most every 0.5 s (gate.STATE_TTL_SECONDS); what it sent just
# before the circuit opened arrives at once, later on a busy machine. A request later than this into an
# open period is a breach.
OPEN_MARGIN_SECONDS = 1.5


def test_flapping_primary_circuit_opens_and_closes_and_holds_requests_while_open(dirs, stopped_dispatcher, figures):
    total = 150
    messages = make_messages(total, "flapping")
    dispatcher_configure(batch_size=5, interval_seconds=1)

    with fake_provider(dirs("primary")) as primary, fake_provider(dirs("secondary")) as secondary:
        env = providers_env(primary.url, secondary.url, PROVIDER_CIRCUIT_FAILURES="3", DISPATCH_MAX_ATTEMPTS="10")
        with qcluster_running(dirs("cluster"), **env) as cluster, CircuitWatch("primary") as watch:
            processes = (cluster, primary, secondary)
            dispatcher_start()
            wait_or_fail(lambda: count(Status.SENT) >= 5, timeout=30, what="sending to begin", processes=processes)
            outages = []
            for _ in range(FLAPS):
                outages.append(time.time())
                provider_faults(primary.url, error_rate=1.0, error_status=503)
                time.sleep(FLAP_SECONDS)
                provider_faults(primary.url, error_rate=0.0)
                time.sleep(FLAP_SECONDS)
            wait_or_fail(
                lambda: count(Status.SENT) == total, timeout=60, what="every message sent", processes=processes
            )
            at_primary = provider_requests(primary.url)
            at_secondary = provider_requests(secondary.url)
            logs = logs_of(*processes)

    periods = watch.open_periods()
    breaches = [
        r for r in at_primary for start, end in periods if start + OPEN_MARGIN_SECONDS <= r["received_at"] <= end
    ]
    figures(
        "provider_flapping",
        messages=total,
        lost=total - count(Status.SENT),
        outages=FLAPS,
        circuit_opened=len(periods),
        circuit_closed=watch.closes(),
        open_seconds=f"{sum(end - start for start, end in periods):.1f}",
        requests_while_open=len(breaches),
        requests_at_primary=len(at_primary),
        answered_503=sum(1 for r in at_primary if r["status"] == 503),
        sent_by_secondary=len(accepted(at_secondary)),
    )
    assert len(periods) >= FLAPS, f"open periods {periods}\n{logs}"
    assert watch.closes() >= FLAPS, logs
    assert not breaches, f"{len(breaches)} requests reached the primary while its circuit was open: {breaches[:3]}"
    assert count(Status.FAILED) == 0
    check_every_message_sent_once(messages, at_primary, at_secondary, logs=logs)


# --- 4. the rate limit, held by several qclusters ----------------------------------------------------

RATE = 100
QCLUSTERS = 3
MEASURED_SECONDS = 12
WARMUP_SECONDS = 3


def test_rate_limit_holds_across_qclusters(dirs, stopped_dispatcher, figures):
    total = RATE * (MEASURED_SECONDS + WARMUP_SECONDS + 15)
    make_messages(total, "rate")
    # Claims outpace the limit, so the limit is what the provider sees.
    dispatcher_configure(batch_size=3 * RATE, interval_seconds=1)

    with fake_provider(dirs("primary")) as primary:
        env = providers_env(
            primary.url,
            PROVIDER_PRIMARY_RATE_PER_SECOND=str(RATE),
            DISPATCH_CHUNK_SIZE="50",
            DISPATCH_LEASE_SECONDS="30",
        )
        with ExitStack() as stack:
            clusters = [
                stack.enter_context(qcluster_running(dirs(f"cluster-{i}"), log_name=f"qcluster-{i}.log", **env))
                for i in range(QCLUSTERS)
            ]
            processes = (*clusters, primary)
            dispatcher_start()
            wait_or_fail(lambda: count(Status.SENT) >= 1, timeout=30, what="a first send", processes=processes)
            time.sleep(MEASURED_SECONDS + WARMUP_SECONDS + 1)
            dispatcher_stop()
            received = provider_requests(primary.url)
            logs = logs_of(*processes)

    times = sorted(r["received_at"] for r in received)
    start = math.ceil(times[0]) + WARMUP_SECONDS  # whole seconds of the clock, as a provider counts them
    bins = per_second(times, start, MEASURED_SECONDS)
    measured = [t for t in times if start <= t < start + MEASURED_SECONDS]
    mean = sum(bins) / MEASURED_SECONDS
    within = sum(1 for n in bins if abs(n - RATE) <= RATE * 0.05)
    figures(
        "provider_rate_limit",
        rate=RATE,
        qclusters=QCLUSTERS,
        seconds=MEASURED_SECONDS,
        mean_per_s=f"{mean:.1f}",
        max_second=max(bins),
        min_second=min(bins),
        seconds_within_5pct=f"{within}/{MEASURED_SECONDS}",
        # Not asserted: any sliding second (it catches the edges of two bursts, each shifted by a few
        # ms between the limiter's clock and the provider's), and the busiest tenth of a second.
        busiest_sliding_second=busiest(measured),
        busiest_100ms=busiest(measured, 0.1),
    )
    assert abs(mean - RATE) <= RATE * 0.05, f"mean {mean:.1f}/s, per second {bins}\n{logs[-5000:]}"
    assert max(bins) <= RATE * 1.1, f"per second {bins}"
    assert Message.objects.filter(status=Status.FAILED).count() == 0
    assert sum(1 for r in received if r["duplicate"]) == 0


# --- 5. the only provider down for a while ---------------------------------------------------------

OUTAGE_SECONDS = 20
PROBES = 2


def test_outage_of_the_only_provider_fails_nothing_and_sends_everything_after(dirs, stopped_dispatcher, figures):
    total = 60
    messages = make_messages(total, "outage")
    dispatcher_configure(batch_size=10, interval_seconds=1)

    with fake_provider(dirs("primary"), "--error-rate", "1.0", "--error-status", "503") as primary:
        env = providers_env(
            primary.url,
            PROVIDER_CIRCUIT_PROBES=str(PROBES),
            DISPATCH_MAX_ATTEMPTS="2",
            DISPATCH_RETRY_BASE_SECONDS="1",
        )
        with qcluster_running(dirs("cluster"), **env) as cluster, CircuitWatch("primary") as watch:
            processes = (cluster, primary)
            dispatcher_start()
            outage_started = time.time()
            time.sleep(OUTAGE_SECONDS)
            failed_during_outage = count(Status.FAILED)
            provider_faults(primary.url, error_rate=0.0)
            recovered = time.time()
            wait_or_fail(
                lambda: count(Status.SENT) + count(Status.FAILED) == total,
                timeout=40,
                what="every message settled after the outage",
                processes=processes,
            )
            all_sent_after = time.time() - recovered
            received = provider_requests(primary.url)
            logs = logs_of(*processes)

    periods = watch.open_periods()
    assert periods, f"the circuit never opened\n{logs}"
    first_open = periods[0][0]
    during = [r for r in received if outage_started <= r["received_at"] < recovered]
    before_open = [r for r in during if r["received_at"] < first_open]
    probes = [r["received_at"] for r in during if r["received_at"] >= first_open]
    cooloffs = max(1, int((recovered - first_open) // COOLOFF_SECONDS))
    per_cooloff = per_second([(t - first_open) / COOLOFF_SECONDS for t in probes], 0.0, cooloffs)
    attempts_max = Message.objects.aggregate(m=Max("attempts"))["m"]
    deferred = DeliveryAttempt.objects.filter(outcome="deferred").count()
    figures(
        "provider_outage",
        messages=total,
        lost=count(Status.FAILED) + count(Status.UNSENT, Status.PROCESSING),
        failed=count(Status.FAILED),
        outage_s=OUTAGE_SECONDS,
        cooloff_s=COOLOFF_SECONDS,
        requests_during_outage=len(during),
        before_circuit_opened=len(before_open),
        probes_after=len(probes),
        probes_per_cooloff_mean=f"{len(probes) / cooloffs:.2f}",
        probes_per_cooloff_max=max(per_cooloff),
        deferrals=deferred,
        attempts_max=attempts_max,
        all_sent_s_after_recovery=f"{all_sent_after:.1f}",
    )
    assert failed_during_outage == 0 and count(Status.FAILED) == 0, logs
    check_every_message_sent_once(messages, received, logs=logs)
    assert attempts_max <= 2
    # A few probe requests a cool-off. Not exactly PROVIDER_CIRCUIT_PROBES: a window of one cool-off
    # can hold two half-open moments (test_gate.py pins the count within one half-open period).
    assert len(probes) / cooloffs <= 2 * PROBES, per_cooloff
    assert max(per_cooloff) <= 3 * PROBES, per_cooloff
    assert all_sent_after <= 30


# --- 6. Redis stopped mid-run ----------------------------------------------------------------------

REDIS_RATE = 30
REDIS_QCLUSTERS = 2
REDIS_DOWN_SECONDS = 8


def test_redis_stopped_mid_run_sending_goes_on_within_the_fallback(dirs, stopped_dispatcher, figures):
    total = 600
    messages = make_messages(total, "redis")
    dispatcher_configure(batch_size=2 * REDIS_RATE, interval_seconds=1)

    with redis_server(dirs("redis")) as redis_srv, fake_provider(dirs("primary")) as primary:
        env = providers_env(
            primary.url,
            REDIS_URL=redis_srv.url(),
            PROVIDER_PRIMARY_RATE_PER_SECOND=str(REDIS_RATE),
            DISPATCH_CHUNK_SIZE="20",
            DISPATCH_LEASE_SECONDS="30",
        )
        with ExitStack() as stack:
            clusters = [
                stack.enter_context(qcluster_running(dirs(f"cluster-{i}"), log_name=f"qcluster-{i}.log", **env))
                for i in range(REDIS_QCLUSTERS)
            ]
            processes = (*clusters, primary)
            dispatcher_start()
            wait_or_fail(lambda: count(Status.SENT) >= 60, timeout=40, what="sending with Redis", processes=processes)
            time.sleep(2)
            redis_srv.stop()
            down_at, sent_at_stop = time.time(), count(Status.SENT)
            time.sleep(REDIS_DOWN_SECONDS)
            up_at, sent_while_down = time.time(), count(Status.SENT) - sent_at_stop
            failed_while_down = count(Status.FAILED)
            redis_srv.start()
            wait_or_fail(
                lambda: count(Status.SENT) + count(Status.FAILED) == total,
                timeout=60,
                what="every message settled",
                processes=processes,
            )
            received = provider_requests(primary.url)
            logs = logs_of(*processes)

    times = sorted(r["received_at"] for r in received)
    # Whole seconds of the clock: before the stop, while down (from a second after the stop), and after
    # Redis is back (from two seconds after, while the queue lasts).
    before = per_second(times, math.ceil(times[0]), math.floor(down_at) - math.ceil(times[0]))
    down = per_second(times, math.ceil(down_at + 1), math.floor(up_at) - math.ceil(down_at + 1))
    after = per_second(times, math.ceil(up_at + 2), math.floor(times[-1]) - math.ceil(up_at + 2))
    # The documented fallback: each worker process sends at most RATE / QCLUSTER_WORKERS a second, so
    # the cluster at most QCLUSTERS x RATE (QCLUSTER_WORKERS=2 here).
    fallback_bound = REDIS_QCLUSTERS * REDIS_RATE
    figures(
        "provider_redis_down",
        messages=total,
        lost=total - count(Status.SENT),
        failed=count(Status.FAILED),
        rate=REDIS_RATE,
        qclusters=REDIS_QCLUSTERS,
        redis_down_s=REDIS_DOWN_SECONDS,
        sent_while_down=sent_while_down,
        rate_while_down=f"{sum(down) / len(down):.1f}",
        max_second_while_down=max(down),
        fallback_bound=fallback_bound,
        max_second_redis_up=f"{max(before)}/{max(after)}",
        per_second_before=before,
        per_second_down=down,
        per_second_after=after,
    )
    assert failed_while_down == 0 and count(Status.FAILED) == 0, logs
    assert sent_while_down >= REDIS_RATE * REDIS_DOWN_SECONDS * 0.3, f"sending stalled: {sent_while_down}\n{logs}"
    assert max(down) <= fallback_bound * 1.1, down
    assert max(before) <= REDIS_RATE * 1.1 and max(after) <= REDIS_RATE * 1.1, (before, after)
    assert "Redis unreachable" in logs
    check_every_message_sent_once(messages, received, logs=logs)
