"""`python -m bench throughput`: how fast `dispatcher drain` empties a queue of N
messages through the real fake provider, with P drain processes at once."""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
from contextlib import ExitStack
from pathlib import Path

from bench.common import (
    REPO_ROOT,
    BenchError,
    RssSampler,
    connect,
    empty_tables,
    flush_redis,
    free_port,
    http_json,
    manage,
    median,
    prepare_database,
    process,
    service_env,
    start_process,
    stop_process,
)
from bench.loading import copy_unsent

POLL_SECONDS = 0.2


def _concurrency_setting_known() -> bool:
    """Whether the service reads DISPATCH_CONCURRENCY yet (else the value is passed but ignored)."""
    return "DISPATCH_CONCURRENCY" in (REPO_ROOT / "messaging_site" / "settings.py").read_text()


def throughput(options: argparse.Namespace) -> dict:
    if options.messages < 1 or options.processes < 1:
        raise BenchError("--messages and --processes must be at least 1")
    env = service_env(DISPATCH_PROVIDER_BACKEND="webhook", LOG_LEVEL=options.log_level)
    if options.concurrency is not None:
        env["DISPATCH_CONCURRENCY"] = str(options.concurrency)
    prepare_database(env)
    logs = Path(options.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    runs = []
    for index in range(options.runs):
        print(f"throughput: run {index + 1} of {options.runs}", file=sys.stderr, flush=True)
        runs.append(_run(options, env, logs))
    ok = all(run["ok"] for run in runs)
    duplicates_total = sum(run["duplicates"] for run in runs)
    keys = ("messages_per_s", "wall_s", "latency_p50_ms", "latency_p99_ms", "drain_peak_rss_mib")
    summary_median = {key: median([run[key] for run in runs]) for key in keys}
    summary_median["load_rows_per_s"] = median([run["load"]["rows_per_s"] for run in runs])
    summary_median["fakeprovider_peak_rss_mib"] = median([run["fakeprovider_peak_rss_mib"] for run in runs])
    result = {
        "summary": (
            f"throughput: {options.messages} messages, {options.processes} drain process(es), "
            f"batch {options.batch_size}, concurrency {options.concurrency or 'service default'}, "
            f"provider latency {options.latency_ms:g} ms: median {summary_median['messages_per_s']} messages/s, "
            f"latency p50 {summary_median['latency_p50_ms']} ms / p99 {summary_median['latency_p99_ms']} ms, "
            f"drain peak RSS {summary_median['drain_peak_rss_mib']} MiB, duplicates {duplicates_total}"
            f" ({len(runs)} run(s){'' if ok else '; SOME RUNS FAILED'})"
        ),
        "ok": ok,
        "messages": options.messages,
        "processes": options.processes,
        "batch_size": options.batch_size,
        "concurrency": options.concurrency,
        "concurrency_setting_known": _concurrency_setting_known(),
        "provider_latency_ms": options.latency_ms,
        "log_level": options.log_level,
        "median": summary_median,
        "duplicates_total": duplicates_total,
        "runs": runs,
    }
    return result


def _run(options: argparse.Namespace, env: dict[str, str], logs: Path) -> dict:
    n = options.messages
    with connect() as conn:
        empty_tables(conn)
        flush_redis()
        load = copy_unsent(conn, n)
        started = time.perf_counter()
        conn.execute("ANALYZE messages_app_message")
        load["analyze_s"] = round(time.perf_counter() - started, 3)
    print(f"  loaded {n} messages at {load['rows_per_s']} rows/s", file=sys.stderr, flush=True)

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(env, WEBHOOK_URL=url)
    sampler = RssSampler()
    with ExitStack() as stack:
        provider = stack.enter_context(
            process(
                ["fakeprovider", "--port", str(port), "--latency-ms", f"{options.latency_ms:g}"],
                env,
                logs / "throughput-fakeprovider.log",
            )
        )
        wait_for_provider(url, provider)
        manage(env, "dispatcher", "start")

        drain_args = ["dispatcher", "drain", "--batch-size", str(options.batch_size)]
        drain_started_wall = time.time()
        drains = [start_process(drain_args, env, logs / f"throughput-drain-{i}.log") for i in range(options.processes)]
        for popen in drains:
            stack.callback(stop_process, popen)
        deadline = time.monotonic() + options.timeout
        next_progress = time.monotonic() + 5
        timed_out = False
        with connect() as conn:
            while True:
                sampler.sample(provider.pid, *(p.pid for p in drains))
                if all(p.poll() is not None for p in drains):
                    break
                if not work_left(conn):
                    # Everything is sent or failed: the drains find nothing more and exit.
                    _wait_exit(drains, sampler, timeout=30)
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                if time.monotonic() > next_progress:
                    left = conn.execute(
                        "SELECT count(*) FROM messages_app_message WHERE status IN ('unsent', 'processing')"
                    ).fetchone()[0]
                    print(f"  {n - left} of {n} done", file=sys.stderr, flush=True)
                    next_progress = time.monotonic() + 5
                time.sleep(POLL_SECONDS)
        sampler.sample(provider.pid)
        try:
            stats = http_json("GET", url + "_fake/stats", timeout=30)
        except (OSError, ValueError) as exc:
            raise BenchError(f"could not read the fake provider's stats: {exc}") from None
        returncodes = [p.poll() for p in drains]

    with connect() as conn:
        checks = delivery_checks(conn, n)
        figures = _figures(conn, drain_started_wall)
    duplicates = (stats["accepted"] - n) + stats["duplicates_dropped"]
    drain_peaks = [sampler.mib(p.pid) for p in drains]
    wall = figures["last_sent_epoch"] - drain_started_wall if figures["last_sent_epoch"] else None
    ok = (
        not timed_out
        and all(code == 0 for code in returncodes)
        and checks["sent_exactly_once"]
        and duplicates == 0
        and stats["accepted"] == n
    )
    return {
        "ok": ok,
        "messages_per_s": round(n / wall, 1) if wall and checks["sent"] == n else None,
        "wall_s": round(wall, 3) if wall else None,
        "latency_p50_ms": figures["latency_p50_ms"],
        "latency_p99_ms": figures["latency_p99_ms"],
        "drain_peak_rss_mib": max((p for p in drain_peaks if p is not None), default=None),
        "drain_peak_rss_mib_each": drain_peaks,
        "drain_peak_rss_mib_sum": round(sum(p for p in drain_peaks if p is not None), 1),
        "fakeprovider_peak_rss_mib": sampler.mib(provider.pid),
        "duplicates": duplicates,
        "load": load,
        "detail": {
            "first_send_after_drain_start_s": figures["first_send_after_start_s"],
            "steady_messages_per_s": figures["steady_messages_per_s"],
            "latency_max_ms": figures["latency_max_ms"],
            "queue_wait_from_drain_start_p50_ms": figures["from_start_p50_ms"],
            "queue_wait_from_drain_start_p99_ms": figures["from_start_p99_ms"],
            "enqueued_before_drain_start_s": figures["enqueued_before_start_s"],
            "drain_returncodes": returncodes,
            "timed_out": timed_out,
        },
        "checks": checks,
        "provider": {
            "accepted": stats["accepted"],
            "duplicates_dropped": stats["duplicates_dropped"],
            # The fake provider keeps (and counts by status) only its last 10,000 requests.
            "requests_kept": stats["requests"],
            "by_status_of_kept": stats["by_status"],
        },
    }


def wait_for_provider(url: str, provider, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if provider.poll() is not None:
            raise BenchError(f"the fake provider exited ({provider.returncode}); see its log")
        try:
            http_json("GET", url + "_fake/stats", timeout=1)
            return
        except (OSError, urllib.error.URLError):
            time.sleep(0.1)
    raise BenchError(f"the fake provider did not listen on {url} within {timeout} s")


def _wait_exit(drains, sampler: RssSampler, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in drains):
        sampler.sample(*(p.pid for p in drains))
        time.sleep(POLL_SECONDS)


def work_left(conn) -> bool:
    # Both lookups use a partial index, so polling costs nothing like a count over the table.
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM messages_app_message WHERE status = 'unsent')"
        " OR EXISTS (SELECT 1 FROM messages_app_message WHERE status = 'processing')"
    ).fetchone()[0]


def delivery_checks(conn, n: int) -> dict:
    counts = dict(conn.execute("SELECT status, count(*) FROM messages_app_message GROUP BY status").fetchall())
    attempts = conn.execute(
        "SELECT count(*), count(DISTINCT message_id) FROM messages_app_deliveryattempt WHERE outcome = 'sent'"
    ).fetchone()
    max_attempts = conn.execute("SELECT max(attempts) FROM messages_app_message").fetchone()[0]
    sent = counts.get("sent", 0)
    return {
        "sent": sent,
        "unsent": counts.get("unsent", 0),
        "processing": counts.get("processing", 0),
        "failed": counts.get("failed", 0),
        "sent_attempt_rows": attempts[0],
        "messages_with_sent_attempt": attempts[1],
        "max_attempts": max_attempts,
        # Every message sent, and each by exactly one successful attempt.
        "sent_exactly_once": sent == n and attempts[0] == n and attempts[1] == n,
    }


def _figures(conn, drain_started_wall: float) -> dict:
    row = conn.execute(
        """
        SELECT
            percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - created_at)) * 1000,
            percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - created_at)) * 1000,
            max(extract(epoch FROM sent_at - created_at)) * 1000,
            percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at) - %(start)s) * 1000,
            percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at) - %(start)s) * 1000,
            extract(epoch FROM min(sent_at)),
            extract(epoch FROM max(sent_at)),
            count(*),
            (SELECT extract(epoch FROM max(created_at)) FROM messages_app_message)
        FROM messages_app_message WHERE status = 'sent'
        """,
        {"start": drain_started_wall},
    ).fetchone()
    p50, p99, lat_max, from_start_p50, from_start_p99, first, last, sent, last_created = (
        float(v) if v is not None else None for v in row
    )
    steady = (sent - 1) / (last - first) if first is not None and last and last > first else None
    return {
        "latency_p50_ms": _r(p50),
        "latency_p99_ms": _r(p99),
        "latency_max_ms": _r(lat_max),
        "from_start_p50_ms": _r(from_start_p50),
        "from_start_p99_ms": _r(from_start_p99),
        "first_send_after_start_s": _r(first - drain_started_wall) if first is not None else None,
        "steady_messages_per_s": _r(steady, 1),
        "last_sent_epoch": last,
        "enqueued_before_start_s": _r(drain_started_wall - last_created) if last_created is not None else None,
    }


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, required=True, help="messages to queue and send (N)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the fake provider's delay per request")
    parser.add_argument("--processes", type=int, default=1, help="drain processes run at once (P)")
    parser.add_argument("--batch-size", type=int, default=100, help="drain --batch-size (B)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="DISPATCH_CONCURRENCY for the drains (C); default: leave it unset (the service's default)",
    )
    parser.add_argument("--runs", type=int, default=1, help="repeat R times; the median is reported too")
    parser.add_argument("--timeout", type=float, default=900, help="give up on a run after this many seconds")
    parser.add_argument(
        "--log-level", default="INFO", help="LOG_LEVEL of the drains (INFO, the default, logs every message)"
    )
