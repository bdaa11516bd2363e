"""`python -m bench providers rate|failover`: several providers, measured with real qclusters and
real fake-provider processes on the benchmark's database and Redis.

rate      K qclusters send through one provider limited to R messages/s (PROVIDER_PRIMARY_RATE_PER_SECOND,
          evenly spaced slots in Redis) for S seconds, with claims outpacing the limit; per whole second of
          the clock, what the provider received: mean, min, max, the share of seconds within 5% of R,
          and (not a pass criterion) the busiest sliding second and tenth of a second.
failover  two runs, one after the other:
          1. primary and secondary; after --refuse-after seconds of sending the primary refuses
             connections (a TCP proxy in front of it stops listening and cuts its connections) for
             --refuse-seconds, then comes back: who sent what before, during and after, how soon the
             secondary took over, and no message delivered twice or by both;
          2. the only provider answers 503 for --outage-minutes, then recovers: nothing failed, the
             requests it received during the outage per cool-off (probes), and how soon everything
             was sent after it.

The qclusters use the service's settings (PROVIDERS, PROVIDER_<NAME>_*), with the circuit breaker's
defaults unless --cooloff is given. Child-process logs go to --log-dir.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
import threading
import time
import urllib.request
from collections import Counter
from contextlib import ExitStack, suppress
from pathlib import Path

from bench.common import (
    MESSAGE_TABLES,
    BenchError,
    connect,
    flush_redis,
    free_port,
    http_json,
    manage,
    percentile,
    prepare_database,
    process,
    refuse_if_in_use,
    service_env,
    start_process,
    stop_processes,
)

POLL_SECONDS = 5.0
# Messages due one after the other, `arrival` a second from now (as if clients queued them at that
# rate), or all at once (arrival 0). Through the ORM in a child process, so every column gets the
# model's default whatever the migrations have added since bench.loading's COPY was written.
LOAD_SCRIPT = (
    "from datetime import timedelta; from django.utils import timezone; from messages_app.models import Message;"
    "t0 = timezone.now(); due = lambda i: t0 + timedelta(seconds=i / {arrival}) if {arrival} else t0;"
    "Message.objects.bulk_create([Message(recipient_phone_number='+90555%07d' % i, content='providers %d' % i,"
    " send_after=due(i), next_attempt_at=due(i)) for i in range({messages})], batch_size=2000)"
)


# --- the fake providers and what they received ---------------------------------------------------


def _post_json(url: str, body: dict) -> None:
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"not our fake provider: {url}")
    request = urllib.request.Request(  # noqa: S310 (checked above)
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        response.read()


def _wait_listening(url: str, popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise BenchError(f"the fake provider at {url} exited ({popen.returncode}); see its log")
        try:
            http_json("GET", url + "_fake/stats", timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise BenchError(f"the fake provider did not listen on {url} within {timeout} s")


class Received:
    """Everything a fake provider received. It keeps only its last 10,000 requests, so this polls it
    every few seconds from a thread and keeps the union."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._seen: dict[tuple, dict] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def poll(self) -> None:
        entries = http_json("GET", self.url + "_fake/requests", timeout=60)
        with self._lock:
            for r in entries:
                self._seen[(r["received_at"], r["idempotency_key"], r["status"])] = {
                    "at": r["received_at"],
                    "key": r["idempotency_key"],
                    "status": r["status"],
                    "duplicate": r["duplicate"],
                }

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            with suppress(OSError, ValueError):
                self.poll()

    def __enter__(self) -> Received:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(POLL_SECONDS + 60)

    def all(self) -> list[dict]:
        with self._lock:
            return sorted(self._seen.values(), key=lambda r: r["at"])


def delivered(received: list[dict]) -> Counter:
    """Idempotency-Key -> times delivered (2xx, not a repeat the provider recognised and dropped)."""
    return Counter(r["key"] for r in received if 200 <= r["status"] < 300 and not r["duplicate"])


def per_second(times: list[float], start: int, seconds: int) -> list[int]:
    bins = [0] * max(seconds, 0)
    for at in times:
        index = math.floor(at - start)
        if 0 <= index < len(bins):
            bins[index] += 1
    return bins


def busiest(times: list[float], window: float) -> int:
    ordered, best, first = sorted(times), 0, 0
    for last, at in enumerate(ordered):
        while at - ordered[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


# --- a primary that refuses connections on demand -----------------------------------------------


class RefusingProxy:
    """A TCP proxy on a port of its own to `target_port`. `refuse()` stops listening and cuts every
    connection through it (a provider gone down: new connections are refused, requests in flight
    end without an answer); `listen()` takes connections again, on the same port."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._server: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def listen(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(1024)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def refuse(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            server.close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._connections.discard(source)
            self._connections.discard(sink)


# --- running the service ------------------------------------------------------------------------


def _fresh(env: dict[str, str], messages: int, *, batch_size: int, arrival: float = 0) -> dict:
    """Empty tables and Redis, queue `messages` (due at `arrival` a second from now, or all now),
    set the pace (stopped)."""
    prepare_database(env)
    with connect() as conn:
        refuse_if_in_use(conn)
        # CASCADE: delivery receipts refer to messages (common.empty_tables predates them).
        conn.execute(f"TRUNCATE {', '.join(MESSAGE_TABLES)}, django_q_ormq, django_q_task RESTART IDENTITY CASCADE")
        flush_redis()
        manage(env, "dispatcher", "stop")
        manage(env, "dispatcher", "configure", "--batch-size", str(batch_size), "--interval-seconds", "1")
    started = time.perf_counter()
    manage(env, "shell", "-c", LOAD_SCRIPT.format(messages=messages, arrival=arrival))
    seconds = time.perf_counter() - started
    return {"rows": messages, "seconds": round(seconds, 3)}


def _status_counts() -> dict[str, int]:
    with connect() as conn:
        return dict(conn.execute("SELECT status, count(*) FROM messages_app_message GROUP BY status").fetchall())


def _attempt_counts() -> dict[str, int]:
    with connect() as conn:
        rows = conn.execute(
            "SELECT provider || ':' || outcome, count(*) FROM messages_app_deliveryattempt GROUP BY 1"
        ).fetchall()
    return dict(rows)


def _max_attempts() -> int:
    with connect() as conn:
        return conn.execute("SELECT coalesce(max(attempts), 0) FROM messages_app_message").fetchone()[0]


def _wait_settled(total: int, *, timeout: float, what: str) -> float:
    """Wait until no message is unsent or processing; return when that was (time.time())."""
    deadline = time.monotonic() + timeout
    next_progress = 0.0
    while time.monotonic() < deadline:
        counts = _status_counts()
        if counts.get("unsent", 0) + counts.get("processing", 0) == 0:
            return time.time()
        if time.monotonic() > next_progress:
            print(f"  {what}: {counts}", file=sys.stderr, flush=True)
            next_progress = time.monotonic() + 10
        time.sleep(0.5)
    raise BenchError(f"{what}: not every message was sent or failed within {timeout:.0f} s: {_status_counts()}")


def _wait_first_request(received: Received, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        received.poll()
        if entries := received.all():
            return entries[0]["at"]
        time.sleep(0.5)
    raise BenchError(f"the provider received nothing within {timeout} s; see the logs")


def _start_qclusters(stack: ExitStack, env: dict[str, str], count: int, logs: Path, name: str) -> list:
    popens = [start_process(["qcluster"], env, logs / f"providers-{name}-qcluster-{i}.log") for i in range(count)]
    stack.callback(stop_processes, popens)
    return popens


def _base_env(options: argparse.Namespace, **more: str) -> dict[str, str]:
    env = service_env(
        LOG_LEVEL=options.log_level,
        QCLUSTER_WORKERS=str(options.workers),
        DISPATCH_CONCURRENCY=str(options.concurrency),
        DISPATCH_WINDOW_SECONDS="100",
        **more,
    )
    if options.cooloff is not None:
        env["PROVIDER_CIRCUIT_COOLOFF_SECONDS"] = str(options.cooloff)
    return env


def _cooloff(options: argparse.Namespace) -> float:
    return options.cooloff if options.cooloff is not None else 30.0


# --- (a) rate-limit accuracy --------------------------------------------------------------------


def rate(options: argparse.Namespace) -> dict:
    r, seconds = options.rate, options.seconds
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = _base_env(
        options,
        PROVIDERS="primary",
        PROVIDER_PRIMARY_URL=url,
        PROVIDER_PRIMARY_RATE_PER_SECOND=str(r),
        DISPATCH_CHUNK_SIZE=str(max(10, r // 4)),
        DISPATCH_LEASE_SECONDS="60",
    )
    total = int(r * (seconds + options.warmup + 30))
    load = _fresh(env, total, batch_size=3 * r)  # claims outpace the limit: the limit is what is measured
    logs = Path(options.log_dir)
    with ExitStack() as stack:
        provider = stack.enter_context(
            process(["fakeprovider", "--port", str(port)], env, logs / "providers-rate-fake.log")
        )
        _wait_listening(url, provider)
        _start_qclusters(stack, env, options.qclusters, logs, "rate")
        with Received(url) as received:
            manage(env, "dispatcher", "start")
            first = _wait_first_request(received)
            start = math.ceil(first) + options.warmup
            end = start + seconds
            while time.time() < end + 1:
                print(f"\r  measuring: {end + 1 - time.time():5.0f} s left", end="", file=sys.stderr, flush=True)
                time.sleep(min(5, max(end + 1 - time.time(), 0)))
            print(file=sys.stderr)
            manage(env, "dispatcher", "stop")
            received.poll()
        everything = received.all()
    counts = _status_counts()
    times = [e["at"] for e in everything]
    bins = per_second(times, start, seconds)
    measured = [t for t in times if start <= t < end]
    mean = sum(bins) / seconds
    within = sum(1 for n in bins if abs(n - r) <= 0.05 * r)
    twice = [k for k, n in delivered(everything).items() if n > 1]
    ok = abs(mean - r) <= 0.05 * r and max(bins) <= 1.1 * r and not twice and counts.get("failed", 0) == 0
    return {
        "summary": (
            f"providers rate: {options.qclusters} qclusters x {options.workers} workers, one provider limited to "
            f"{r}/s, {seconds} s: mean {mean:.1f}/s, min {min(bins)}, max {max(bins)} per second, "
            f"{100 * within / seconds:.0f}% of seconds within 5%; busiest sliding second {busiest(measured, 1.0)}, "
            f"busiest 100 ms {busiest(measured, 0.1)}; failed {counts.get('failed', 0)}, delivered twice {len(twice)}"
        ),
        "ok": ok,
        "qclusters": options.qclusters,
        "workers_per_qcluster": options.workers,
        "concurrency": options.concurrency,
        "rate_per_s": r,
        "seconds": seconds,
        "warmup_s": options.warmup,
        "mean_per_s": round(mean, 2),
        "min_per_s": min(bins),
        "max_per_s": max(bins),
        "max_over_rate": round(max(bins) / r, 3),
        "seconds_within_5pct": within,
        "share_within_5pct": round(within / seconds, 3),
        "p50_per_s": percentile(bins, 50),
        "busiest_sliding_second": busiest(measured, 1.0),
        "busiest_100ms": busiest(measured, 0.1),
        "per_second": bins,
        "messages_queued": total,
        "statuses_after": counts,
        "delivered_twice": len(twice),
        "load": load,
    }


# --- (b) failover, then an outage ----------------------------------------------------------------


def failover(options: argparse.Namespace) -> dict:
    first = _failover_run(options)
    second = _outage_run(options)
    ok = first["ok"] and second["ok"]
    return {
        "summary": f"{first['summary']}. {second['summary']}",
        "ok": ok,
        "failover": first,
        "outage": second,
    }


def _failover_run(options: argparse.Namespace) -> dict:
    pace = options.pace
    primary_port, secondary_port = free_port(), free_port()
    proxy = RefusingProxy(primary_port)
    primary_url, secondary_url = f"http://127.0.0.1:{primary_port}/", f"http://127.0.0.1:{secondary_port}/"
    env = _base_env(
        options,
        PROVIDERS="primary,secondary",
        PROVIDER_PRIMARY_URL=proxy.url,
        PROVIDER_SECONDARY_URL=secondary_url,
        PROVIDER_PRIMARY_TIMEOUT_SECONDS="5",
        PROVIDER_SECONDARY_TIMEOUT_SECONDS="5",
    )
    total = pace * (options.refuse_after + options.refuse_seconds + options.refuse_after)
    # Queued at `pace` a second; the dispatcher could take twice that.
    _fresh(env, total, batch_size=2 * pace, arrival=pace)
    logs = Path(options.log_dir)
    print(f"providers failover: {total} messages at {pace}/s", file=sys.stderr, flush=True)
    with ExitStack() as stack:
        primary = stack.enter_context(
            process(["fakeprovider", "--port", str(primary_port)], env, logs / "providers-failover-primary.log")
        )
        secondary = stack.enter_context(
            process(["fakeprovider", "--port", str(secondary_port)], env, logs / "providers-failover-secondary.log")
        )
        _wait_listening(primary_url, primary)
        _wait_listening(secondary_url, secondary)
        proxy.listen()
        stack.callback(proxy.refuse)
        popens = _start_qclusters(stack, env, options.qclusters, logs, "failover")
        with Received(primary_url) as at_primary, Received(secondary_url) as at_secondary:
            manage(env, "dispatcher", "start")
            first = _wait_first_request(at_primary)
            time.sleep(max(0.0, first + options.refuse_after - time.time()))
            refused_at = time.time()
            proxy.refuse()
            print("  the primary refuses connections", file=sys.stderr, flush=True)
            time.sleep(options.refuse_seconds)
            back_at = time.time()
            proxy.listen()
            print("  the primary is back", file=sys.stderr, flush=True)
            settled = _wait_settled(total, timeout=600, what="failover")
            time.sleep(2)
            at_primary.poll()
            at_secondary.poll()
        cluster_logs = "".join(
            (logs / f"providers-failover-qcluster-{i}.log").read_text(errors="replace") for i in range(len(popens))
        )
        received_primary, received_secondary = at_primary.all(), at_secondary.all()
    counts = _status_counts()
    by_primary, by_secondary = delivered(received_primary), delivered(received_secondary)
    both = set(by_primary) & set(by_secondary)
    twice = [k for k, n in (by_primary + by_secondary).items() if n > 1]

    def phase(received: list[dict], start: float, end: float) -> int:
        return sum(1 for r in received if start <= r["at"] < end and 200 <= r["status"] < 300 and not r["duplicate"])

    takeover = [r["at"] for r in received_secondary if r["at"] >= refused_at]
    during = phase(received_primary, refused_at + 1, back_at)
    ok = counts == {"sent": total} and not both and not twice and during == 0
    took_over = f"{takeover[0] - refused_at:.2f} s" if takeover else "never"
    result = {
        "summary": (
            f"failover: {total} messages at {pace}/s, the primary refusing connections for {options.refuse_seconds} s "
            f"from {options.refuse_after} s in: sent {counts.get('sent', 0)}, failed {counts.get('failed', 0)}; "
            f"delivered by the primary {len(by_primary)}, by the secondary {len(by_secondary)}, by both {len(both)}, "
            f"twice {len(twice)}; the secondary's first request after the refusal: {took_over}"
        ),
        "ok": ok,
        "messages": total,
        "queued_per_s": pace,
        "dispatcher_batch_per_s": 2 * pace,
        "qclusters": options.qclusters,
        "statuses_after": counts,
        "delivered_by_primary": len(by_primary),
        "delivered_by_secondary": len(by_secondary),
        "delivered_by_both": len(both),
        "delivered_twice": len(twice),
        "repeats_dropped_by_primary": sum(1 for r in received_primary if r["duplicate"]),
        "repeats_dropped_by_secondary": sum(1 for r in received_secondary if r["duplicate"]),
        "secondary_first_request_after_refusal_s": round(takeover[0] - refused_at, 3) if takeover else None,
        "delivered": {
            "before": {
                "primary": phase(received_primary, 0, refused_at),
                "secondary": phase(received_secondary, 0, refused_at),
            },
            "while_refusing": {
                "primary": phase(received_primary, refused_at, back_at),
                "secondary": phase(received_secondary, refused_at, back_at),
            },
            "after": {
                "primary": phase(received_primary, back_at, math.inf),
                "secondary": phase(received_secondary, back_at, math.inf),
            },
        },
        "attempts_by_provider_and_outcome": _attempt_counts(),
        "max_attempts": _max_attempts(),
        "circuit_opened_lines": cluster_logs.count("provider primary: circuit opened"),
        "circuit_closed_lines": cluster_logs.count("provider primary: circuit closed"),
        "all_sent_s_after_primary_back": round(settled - back_at, 1),
    }
    return result


def _outage_run(options: argparse.Namespace) -> dict:
    pace, outage = options.outage_pace, options.outage_minutes * 60
    cooloff = _cooloff(options)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = _base_env(options, PROVIDERS="primary", PROVIDER_PRIMARY_URL=url, PROVIDER_PRIMARY_TIMEOUT_SECONDS="5")
    before = 20
    total = int(pace * (before + outage + 20))
    # Queued at `pace` a second; the dispatcher could take five times that, so the backlog the outage
    # leaves goes out quickly once the provider is back.
    _fresh(env, total, batch_size=5 * pace, arrival=pace)
    logs = Path(options.log_dir)
    print(f"providers outage: {total} messages at {pace}/s, {outage:.0f} s of 503", file=sys.stderr, flush=True)
    with ExitStack() as stack:
        provider = stack.enter_context(
            process(["fakeprovider", "--port", str(port)], env, logs / "providers-outage-fake.log")
        )
        _wait_listening(url, provider)
        _start_qclusters(stack, env, options.qclusters, logs, "outage")
        with Received(url) as received:
            manage(env, "dispatcher", "start")
            first = _wait_first_request(received)
            time.sleep(max(0.0, first + before - time.time()))
            _post_json(url + "_fake/faults", {"error_rate": 1.0, "error_status": 503})
            outage_started = time.time()
            sent_at_start = _status_counts().get("sent", 0)
            while time.time() < outage_started + outage:
                left = outage_started + outage - time.time()
                print(f"\r  outage: {left:5.0f} s left", end="", file=sys.stderr, flush=True)
                time.sleep(min(10, max(left, 0)))
            print(file=sys.stderr)
            during_counts = _status_counts()
            _post_json(url + "_fake/faults", {"error_rate": 0.0})
            recovered = time.time()
            settled = _wait_settled(total, timeout=900, what="after the outage")
            time.sleep(1)
            received.poll()
        everything = received.all()
    counts = _status_counts()
    during = [r for r in everything if outage_started <= r["at"] < recovered]
    # Cool-off windows from the outage's start: the first holds the failures that opened the circuit.
    windows = per_second([(r["at"] - outage_started) / cooloff for r in during], 0, math.ceil(outage / cooloff))
    later = windows[1:] or [0]
    attempts = _attempt_counts()
    ok = (
        counts.get("failed", 0) == 0
        and counts.get("sent", 0) == total
        and not [k for k, n in delivered(everything).items() if n > 1]
    )
    return {
        "summary": (
            f"outage: the only provider answering 503 for {outage / 60:g} min ({total} messages at {pace}/s, "
            f"cool-off {cooloff:g} s): failed {counts.get('failed', 0)}, sent {counts.get('sent', 0)}; "
            f"{len(during)} requests during the outage, {windows[0]} in the first cool-off, then "
            f"{sum(later) / len(later):.2f} per cool-off (max {max(later)}); everything sent "
            f"{settled - recovered:.1f} s after it recovered"
        ),
        "ok": ok,
        "messages": total,
        "queued_per_s": pace,
        "dispatcher_batch_per_s": 5 * pace,
        "outage_s": outage,
        "cooloff_s": cooloff,
        "qclusters": options.qclusters,
        "statuses_after": counts,
        "statuses_at_outage_end": during_counts,
        "sent_during_outage": during_counts.get("sent", 0) - sent_at_start,
        "requests_during_outage": len(during),
        "requests_first_cooloff": windows[0],
        "requests_per_cooloff_after": later,
        "requests_per_cooloff_after_mean": round(sum(later) / len(later), 2),
        "requests_per_cooloff_after_max": max(later),
        "deferrals": sum(n for key, n in attempts.items() if key.endswith(":deferred")),
        "attempts_by_provider_and_outcome": attempts,
        "max_attempts": _max_attempts(),
        "all_sent_s_after_recovery": round(settled - recovered, 1),
    }


# --- the command ------------------------------------------------------------------------------------


def providers(options: argparse.Namespace) -> dict:
    if options.qclusters is None:
        options.qclusters = 4 if options.run == "rate" else 2
    return {"rate": rate, "failover": failover}[options.run](options)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run",
        choices=["rate", "failover"],
        help="rate: the limit's accuracy; failover: a primary refusing, then the only provider down",
    )
    parser.add_argument("--qclusters", type=int, default=None, help="qcluster processes (rate: 4, failover: 2)")
    parser.add_argument("--workers", type=int, default=2, help="QCLUSTER_WORKERS of each qcluster")
    parser.add_argument("--concurrency", type=int, default=8, help="DISPATCH_CONCURRENCY")
    parser.add_argument("--log-level", default="WARNING", help="LOG_LEVEL of the qclusters")
    parser.add_argument("--cooloff", type=float, default=None, help="PROVIDER_CIRCUIT_COOLOFF_SECONDS (default 30)")
    rate_group = parser.add_argument_group("rate")
    rate_group.add_argument("--rate", type=int, default=200, help="the provider's limit, messages/s")
    rate_group.add_argument("--seconds", type=int, default=60, help="how long to measure")
    rate_group.add_argument("--warmup", type=int, default=5, help="seconds after the first request not measured")
    failover_group = parser.add_argument_group("failover")
    failover_group.add_argument("--pace", type=int, default=50, help="messages/s queued in the failover run")
    failover_group.add_argument("--refuse-after", type=int, default=20, help="seconds of sending before it refuses")
    failover_group.add_argument("--refuse-seconds", type=int, default=20, help="how long the primary refuses")
    failover_group.add_argument("--outage-minutes", type=float, default=5, help="how long the only provider is down")
    failover_group.add_argument("--outage-pace", type=int, default=10, help="messages/s queued in the outage run")
