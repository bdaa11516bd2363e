"""`python -m bench latency`: how long a lone message takes from its creation to the
provider at light load, and whether the pace held while it did.

One message at a time is created through `POST /api/messages/` (gunicorn) every
`--every` seconds, as a one-time code would be, while K qclusters run at the pace
`--batch-size` every `--interval` s against the real fake provider. The latency is
the fake provider's `received_at` (its clock) minus the message's `created_at` (the
web worker's clock: the same machine's), matched by the Idempotency-Key (the message's
uuid); `from_post_*` counts from just before the client sent its POST instead. The
pace is checked twice: the most claims in any sliding window of `--interval`
seconds (by the messages' `claimed_at`, every message of the run) and the most
requests the provider accepted in any such window (the lone messages) must each be
at most the batch size. `--burst B` then creates B messages at once (one bulk
request): the claims hold the pace; at the provider the sends of one claim spread
over time and may meet the next claim's in one window (reported, not judged: the
pace is a budget of claims; a provider's own rate limit, DISPATCH_PROVIDERS'
rate_per_second, is what holds sends to a rate).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack, suppress
from pathlib import Path

from bench.cluster import Api, _api_token, _wait_for_api, _wait_for_log, _wait_qclusters_ready
from bench.common import (
    BenchError,
    connect,
    empty_tables,
    flush_redis,
    free_port,
    http_json,
    percentile,
    prepare_database,
    process,
    refuse_if_in_use,
    service_env,
    start_command,
    start_process,
    stop_process,
    stop_processes,
)
from bench.throughput import wait_for_provider

TARGET_P50_MS = 50
TARGET_P99_MS = 250


def most_in_any_window(times: list[float], window: float) -> int:
    """The largest number of `times` inside any half-open window [t, t + window)."""
    times = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most


def _wait_sent(conn, count: int, procs: list, logs: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise BenchError(f"a qcluster exited; see {logs}")
        sent = conn.execute("SELECT count(*) FROM messages_app_message WHERE status = 'sent'").fetchone()[0]
        if sent >= count:
            return
        time.sleep(0.2)
    raise BenchError(f"not all {count} messages were sent within {timeout:g} s; see {logs}")


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def latency(options: argparse.Namespace) -> dict:
    if options.messages < 1 or options.qclusters < 1 or options.batch_size < 1 or options.interval < 1:
        raise BenchError("--messages, --qclusters, --batch-size and --interval must be at least 1")
    port = free_port()
    provider_url = f"http://127.0.0.1:{port}/"
    env = service_env(
        WEBHOOK_URL=provider_url,
        DISPATCH_PROVIDER_BACKEND="webhook",
        LOG_LEVEL=options.log_level,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        THROTTLE_USER_RATE="1000000/min",
    )
    if options.workers is not None:
        env["QCLUSTER_WORKERS"] = str(options.workers)
    prepare_database(env)
    with connect() as conn:
        refuse_if_in_use(conn)
        empty_tables(conn)
    flush_redis()
    token = _api_token(env)
    logs = Path(options.log_dir)
    logs.mkdir(parents=True, exist_ok=True)

    with ExitStack() as stack:
        provider = stack.enter_context(
            process(["fakeprovider", "--port", str(port)], env, logs / "latency-fakeprovider.log")
        )
        wait_for_provider(provider_url, provider)
        web_port = free_port()
        web_log = logs / "latency-gunicorn.log"
        web = start_command(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "messaging_site.wsgi:application",
                "--bind",
                f"127.0.0.1:{web_port}",
                "--workers",
                str(options.web_workers),
                "--no-control-socket",
            ],
            env,
            web_log,
        )
        stack.callback(stop_process, web)
        _wait_for_log(web, web_log, r"Booting worker", timeout=60, what="gunicorn")
        api = Api(f"http://127.0.0.1:{web_port}", token)
        _wait_for_api(api, web)
        api.call("POST", "/api/dispatcher/stop/")
        api.call("PATCH", "/api/dispatcher/", {"batch_size": options.batch_size, "interval_seconds": options.interval})
        procs = [start_process(["qcluster"], env, logs / f"latency-qcluster-{i}.log") for i in range(options.qclusters)]
        stack.callback(stop_processes, procs)
        workers = int(env.get("QCLUSTER_WORKERS") or 0) or _service_workers(env)
        _wait_qclusters_ready(procs, workers, logs)
        api.call("POST", "/api/dispatcher/start/")
        with connect() as conn:
            # The window opened by the start listens from its first poll on.
            _wait_window(conn, procs, logs)
            time.sleep(1)
            warmup = 5
            post_times: dict[str, float] = {}
            for index in range(warmup + options.messages):
                print(f"\r  message {index + 1} of {warmup + options.messages}", end="", file=sys.stderr, flush=True)
                posted = time.time()
                answer = api.call(
                    "POST",
                    "/api/messages/",
                    {"recipient_phone_number": f"+9055501{index % 100_000:05d}", "content": f"code {index:06d}"},
                    expect=201,
                )
                if index >= warmup:
                    post_times[answer["uuid"]] = posted
                time.sleep(max(0.0, posted + options.every - time.time()))
            print(file=sys.stderr)
            _wait_sent(conn, warmup + options.messages, procs, logs, timeout=60 + options.interval * 2)
            created = {
                str(uuid): created_at
                for uuid, created_at in conn.execute(
                    "SELECT uuid, extract(epoch FROM created_at)::float8 FROM messages_app_message"
                ).fetchall()
            }
            burst, burst_keys = None, set()
            if options.burst:
                burst = _burst(api, conn, options, procs, logs, provider_url)
                burst_keys = set(burst.pop("keys"))
            # Every paced claim stamps its messages with one claimed_at (the database's clock).
            claims = [
                float(at)
                for (at,) in conn.execute(
                    "SELECT extract(epoch FROM claimed_at)::float8 FROM messages_app_message WHERE status = 'sent'"
                ).fetchall()
            ]
            most_claimed = most_in_any_window(claims, options.interval)
        api.call("POST", "/api/dispatcher/stop/")
        received = http_json("GET", provider_url + "_fake/requests", timeout=30)
        stats = http_json("GET", provider_url + "_fake/stats", timeout=30)

    requests = received["requests"] if isinstance(received, dict) else received
    arrival = {r["idempotency_key"]: r["received_at"] for r in requests if r["status"] < 300 and not r["duplicate"]}
    from_created = [arrival[key] - created[key] for key in post_times if key in arrival]
    from_post = [arrival[key] - post_times[key] for key in post_times if key in arrival]
    if len(from_created) != options.messages:
        raise BenchError(f"the provider received {len(from_created)} of the {options.messages} measured messages")
    light = [at for key, at in arrival.items() if key not in burst_keys]
    most = most_in_any_window(light, options.interval)
    p50, p99 = percentile(from_created, 50), percentile(from_created, 99)
    duplicates = stats["duplicates_dropped"]
    ok = (
        p50 is not None
        and p50 * 1000 <= TARGET_P50_MS
        and p99 * 1000 <= TARGET_P99_MS
        and most <= options.batch_size
        and most_claimed <= options.batch_size
        and duplicates == 0
    )
    return {
        "summary": (
            f"latency: {options.messages} lone messages, one every {options.every:g} s, {options.qclusters} qclusters "
            f"at {options.batch_size} every {options.interval} s: created to provider p50 {_ms(p50)} ms, "
            f"p99 {_ms(p99)} ms (targets {TARGET_P50_MS}/{TARGET_P99_MS}); most sends in any {options.interval} s "
            f"at the provider {most} (pace {options.batch_size})"
            + f", most claimed in any {options.interval} s {most_claimed}"
            + (
                f"; a burst of {burst['messages']}: most at the provider in any {options.interval} s "
                f"{burst['most_in_any_window']}"
                if burst
                else ""
            )
            + f"; duplicates {duplicates}: {'PASS' if ok else 'FAIL'}"
        ),
        "ok": ok,
        "messages": options.messages,
        "every_s": options.every,
        "qclusters": options.qclusters,
        "batch_size": options.batch_size,
        "interval_seconds": options.interval,
        "latency_ms": {
            "p50": _ms(p50),
            "p90": _ms(percentile(from_created, 90)),
            "p99": _ms(p99),
            "max": _ms(max(from_created)),
            "from_post_p50": _ms(percentile(from_post, 50)),
            "from_post_p99": _ms(percentile(from_post, 99)),
        },
        # At the provider, the lone messages' requests; the claims, every message of the run.
        "most_sends_in_any_window": most,
        "most_claimed_in_any_window": most_claimed,
        "burst": burst,
        "duplicates": duplicates,
        "targets": {"p50_ms": TARGET_P50_MS, "p99_ms": TARGET_P99_MS, "most_in_window_at_most": options.batch_size},
    }


def _burst(api: Api, conn, options: argparse.Namespace, procs: list, logs: Path, provider_url: str) -> dict:
    """B messages at once: the budget lets N per window through, the rest as it frees."""
    already = conn.execute("SELECT count(*) FROM messages_app_message").fetchone()[0]
    time.sleep(options.interval + 0.5)  # the light load's claims leave the window
    started = time.time()
    body = {
        "messages": [
            {"recipient_phone_number": f"+9055502{i % 100_000:05d}", "content": f"burst {i}"}
            for i in range(options.burst)
        ]
    }
    api.call("POST", "/api/messages/bulk/", body, expect=201, timeout=120)
    timeout = 60 + options.interval * (options.burst / options.batch_size + 2)
    _wait_sent(conn, already + options.burst, procs, logs, timeout=timeout)
    received = http_json("GET", provider_url + "_fake/requests", timeout=30)
    requests = received["requests"] if isinstance(received, dict) else received
    accepted = [r for r in requests if r["status"] < 300 and not r["duplicate"] and r["received_at"] >= started]
    times = [r["received_at"] for r in accepted]
    return {
        "keys": [r["idempotency_key"] for r in accepted],
        "messages": options.burst,
        "received": len(times),
        "seconds_to_last": round(max(times) - started, 3) if times else None,
        "most_in_any_window": most_in_any_window(times, options.interval),
    }


def _service_workers(env: dict[str, str]) -> int:
    from bench.common import manage

    out = manage(
        env, "shell", "-c", "from django.conf import settings; print('WORKERS', settings.Q_CLUSTER['workers'])"
    )
    for line in out.splitlines():
        if line.startswith("WORKERS "):
            return int(line.split()[1])
    raise BenchError("could not read the qcluster's worker count")


def _wait_window(conn, procs: list, logs: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise BenchError(f"a qcluster exited; see {logs}")
        with suppress(Exception):
            if conn.execute("SELECT window_id IS NOT NULL FROM dispatcher_dispatcherstate").fetchone()[0]:
                return
        time.sleep(0.2)
    raise BenchError(f"no dispatch window opened within {timeout:g} s; see {logs}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=200, help="lone messages measured (after 5 for warm-up)")
    parser.add_argument("--every", type=float, default=0.37, help="seconds between two messages")
    parser.add_argument("--batch-size", type=int, default=100, help="the pace: N ...")
    parser.add_argument("--interval", type=int, default=1, help="... every T seconds")
    parser.add_argument("--qclusters", type=int, default=2, help="qcluster processes")
    parser.add_argument("--workers", type=int, default=None, help="QCLUSTER_WORKERS (default: the service's)")
    parser.add_argument("--web-workers", type=int, default=1, help="gunicorn sync workers")
    parser.add_argument("--burst", type=int, default=0, help="then B messages at once, to check the pace holds")
    parser.add_argument("--log-level", default="INFO", help="LOG_LEVEL of the service's processes")
