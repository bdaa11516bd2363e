"""`idle-xact`: a paced run with one transaction held idle for the whole run, against the
same run without it (issue 26: throughput >= 0.95 x, claim p99 <= 2 x).

Each phase queues enough due messages for the run, starts the fake provider and K
qclusters, sets the pace (`--batch-size` every `--interval` s) and starts the dispatcher.
In the loaded phase a connection of the bench's own runs `BEGIN; SELECT txid_current();`
before the start and then stays idle in that transaction until the phase ends: PostgreSQL
then keeps every row version the run leaves dead (the xmin horizon), and index scans walk
them. The phases measure, over `--minutes` from the second tick that sent:

- throughput: messages claimed in the window that were sent / the window's seconds;
- the claim's cost: every `--probe-interval` s the bench runs the claim's query for the
  normal priority (the same WHERE and ORDER BY as dispatcher.engine.claiming, `LIMIT`
  the batch size; a plain SELECT under EXPLAIN (ANALYZE, BUFFERS), so it takes nothing from
  the service): p50 / p99 of the database's execution time (judged), of the time from the
  bench, and the pages the scan read; and the ticks' own duration histogram (`/metrics`' buckets, from
  Redis), its p99 bucket;
- the dead row versions autovacuum could not remove (pg_stat_user_tables.n_dead_tup at the end).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack, suppress
from pathlib import Path

from bench.common import (
    BenchError,
    connect,
    empty_tables,
    flush_redis,
    free_port,
    http_json,
    manage,
    prepare_database,
    process,
    service_env,
    start_process,
    stop_processes,
    timing_summary,
)
from bench.loading import copy_unsent
from bench.pacing import SCRIPT_CONFIGURE, _wait_second_tick
from bench.throughput import wait_for_provider

# The paced claim's query for one priority level (dispatcher/engine/claiming.py: claimable(),
# _claim_level, read from the level's claim floor as the dispatch window's claims are), as a
# plain SELECT: what the claim's index scan reads, without locking.
CLAIM_PROBE_SQL = (
    "SELECT id FROM messages_app_message WHERE next_attempt_at <= statement_timestamp() AND status = 'unsent'"
    " AND (expires_at IS NULL OR expires_at > statement_timestamp()) AND priority = 'normal'"
    " AND next_attempt_at >= COALESCE((SELECT (claim_floors->>'normal')::timestamptz"
    " FROM dispatcher_dispatcherstate WHERE id = 1), '-infinity')"
    " ORDER BY next_attempt_at, id LIMIT %s"
)


def _tick_histogram() -> dict[str, int]:
    import redis

    from bench.common import redis_url

    client = redis.Redis.from_url(redis_url())
    keys = [key.decode() for key in client.scan_iter(match="*messaging_tick_duration_seconds:bucket:*")]
    values = client.mget(keys) if keys else []
    return {key.rsplit(":", 1)[1]: int(value or 0) for key, value in zip(keys, values, strict=True)}


def _histogram_p99_bound(counts: dict[str, int]) -> float | None:
    """The upper bound of the bucket the 99th percentile tick falls in (seconds)."""
    bounds = sorted((float("inf") if le == "+Inf" else float(le), n) for le, n in counts.items())
    total = sum(n for _, n in bounds)
    if not total:
        return None
    seen = 0
    for bound, n in bounds:
        seen += n
        if seen >= 0.99 * total:
            return bound
    return None


def _phase(
    options: argparse.Namespace, *, idle_transaction: bool, log_prefix: str, idle_timeout_s: int | None = None
) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = service_env(WEBHOOK_URL=url, DISPATCH_PROVIDER_BACKEND="webhook", LOG_LEVEL="WARNING")
    if options.workers is not None:
        env["QCLUSTER_WORKERS"] = str(options.workers)
    prepare_database(env)
    ticks = options.minutes * 60 / options.interval
    total = int(options.batch_size * (ticks + 10 + 120 / options.interval)) + 50
    with connect() as conn:
        empty_tables(conn)
        flush_redis()
        manage(env, "shell", "-c", SCRIPT_CONFIGURE.format(batch_size=options.batch_size, interval=options.interval))
        copy_unsent(conn, total)
        conn.execute("VACUUM (ANALYZE) messages_app_message")
    logs = Path(options.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        idle = None
        if idle_transaction:
            idle = stack.enter_context(connect(autocommit=False))
            if idle_timeout_s:
                # What `ALTER DATABASE ... SET idle_in_transaction_session_timeout` gives every
                # session that does not set its own: PostgreSQL ends this one once it has been
                # idle in its transaction that long.
                idle.execute(f"SET idle_in_transaction_session_timeout = '{int(idle_timeout_s)}s'")
                idle.commit()
            idle.execute("SELECT txid_current()")  # BEGIN (implicit); then idle
            idle_pid = idle.info.backend_pid
        provider = stack.enter_context(
            process(["fakeprovider", "--port", str(port)], env, logs / f"{log_prefix}-fakeprovider.log")
        )
        wait_for_provider(url, provider)
        procs = [
            start_process(["qcluster"], env, logs / f"{log_prefix}-qcluster-{i}.log") for i in range(options.qclusters)
        ]
        stack.callback(stop_processes, procs)
        time.sleep(3)
        manage(env, "dispatcher", "start")
        with connect() as conn:
            first = _wait_second_tick(conn, procs, logs) - options.interval / 2
            histogram_before = _tick_histogram()
            end_at = first + options.minutes * 60
            probes: list[float] = []
            probe_server: list[float] = []
            probe_pages: list[int] = []
            while (remaining := end_at - time.time()) > 0:
                print(f"\r  {log_prefix}: {remaining:5.0f} s left", end="", file=sys.stderr, flush=True)
                if any(p.poll() is not None for p in procs):
                    raise BenchError(f"a qcluster exited early; see {logs}")
                started = time.perf_counter()
                (explained,) = conn.execute(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + CLAIM_PROBE_SQL, [options.batch_size]
                ).fetchone()[0]
                probes.append(time.perf_counter() - started)
                probe_server.append((explained["Execution Time"] + explained.get("Planning Time", 0)) / 1000)
                plan = explained["Plan"]
                probe_pages.append(plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0))
                time.sleep(min(options.probe_interval, max(remaining, 0)))
            print(file=sys.stderr)
            histogram_after = _tick_histogram()
            time.sleep(min(options.interval / 2, 5) + 3)
            sent = conn.execute(
                "SELECT count(*) FROM messages_app_message WHERE status = 'sent'"
                " AND claimed_at >= to_timestamp(%(a)s) AND claimed_at < to_timestamp(%(b)s)",
                {"a": first, "b": end_at},
            ).fetchone()[0]
            dead, last_autovacuum = conn.execute(
                "SELECT n_dead_tup, last_autovacuum FROM pg_stat_user_tables WHERE relname = 'messages_app_message'"
            ).fetchone()
            held = None
            if idle is not None:
                held = conn.execute(
                    "SELECT state, extract(epoch FROM now() - xact_start) FROM pg_stat_activity WHERE pid = %s",
                    [idle_pid],
                ).fetchone()
        manage(env, "dispatcher", "stop")
        stats = http_json("GET", url + "_fake/stats", timeout=30)
        if idle is not None:
            with suppress(Exception):  # ended by its timeout: nothing left to roll back
                idle.rollback()
    ticks_histogram = {le: histogram_after.get(le, 0) - histogram_before.get(le, 0) for le in histogram_after}
    seconds = options.minutes * 60
    return {
        "idle_transaction": idle_transaction,
        "idle_in_transaction_session_timeout_s": idle_timeout_s,
        "idle_transaction_at_end": (
            {"state": held[0], "held_s": round(float(held[1]), 1)} if held else ("gone" if idle_transaction else None)
        ),
        "sent": sent,
        "messages_per_s": round(sent / seconds, 1),
        "expected_per_s": round(options.batch_size / options.interval, 1),
        # Timed from the bench (with the round trip), and by the database itself (EXPLAIN
        # ANALYZE: leaves out the busy machine's scheduling), and the pages the scan touched.
        "claim_probe": timing_summary(probes),
        "claim_probe_database": timing_summary(probe_server),
        "claim_probe_pages": {
            "p50": sorted(probe_pages)[len(probe_pages) // 2] if probe_pages else None,
            "max": max(probe_pages, default=None),
        },
        "tick_duration_p99_bucket_s": _histogram_p99_bound(ticks_histogram),
        "tick_duration_buckets": ticks_histogram,
        "dead_rows_at_end": dead,
        "last_autovacuum": last_autovacuum.isoformat() if last_autovacuum else None,
        "duplicates": stats["duplicates_dropped"],
    }


def _ratio(loaded: float | None, base: float | None) -> float | None:
    return round(loaded / base, 3) if loaded is not None and base else None


def idle_xact(options: argparse.Namespace) -> dict:
    if options.qclusters < 1 or options.batch_size < 1 or options.interval < 1 or options.minutes <= 0:
        raise BenchError("--qclusters, --batch-size and --interval must be at least 1, --minutes above 0")
    without = _phase(options, idle_transaction=False, log_prefix="idle-xact-without")
    held = _phase(options, idle_transaction=True, log_prefix="idle-xact-held")
    timed_out = None
    if options.idle_timeout:
        timed_out = _phase(
            options, idle_transaction=True, log_prefix="idle-xact-timeout", idle_timeout_s=options.idle_timeout
        )
    throughput = _ratio(held["messages_per_s"], without["messages_per_s"])
    claim_p99 = _ratio(held["claim_probe_database"]["p99_ms"], without["claim_probe_database"]["p99_ms"])
    passed = (
        throughput is not None
        and throughput >= options.min_throughput_ratio
        and claim_p99 is not None
        and claim_p99 <= options.max_claim_p99_ratio
        and without["duplicates"] == 0
        and held["duplicates"] == 0
    )
    result = {
        "summary": (
            f"idle-xact: {options.qclusters} qclusters at {options.batch_size} every {options.interval} s for "
            f"{options.minutes:g} min, without / with one transaction held idle: {without['messages_per_s']} / "
            f"{held['messages_per_s']} messages/s (x {throughput}, at least {options.min_throughput_ratio:g}); "
            f"claim query p99 (database time) {without['claim_probe_database']['p99_ms']} / "
            f"{held['claim_probe_database']['p99_ms']} ms "
            f"(x {claim_p99}, at most {options.max_claim_p99_ratio:g}; pages read at most "
            f"{without['claim_probe_pages']['max']} / {held['claim_probe_pages']['max']}); dead rows at the end "
            f"{without['dead_rows_at_end']} / {held['dead_rows_at_end']}; duplicates "
            f"{without['duplicates'] + held['duplicates']}: {'PASS' if passed else 'FAIL'}"
        ),
        "ok": passed,
        "ratios": {"throughput": throughput, "claim_probe_p99": claim_p99},
        "minutes": options.minutes,
        "batch_size": options.batch_size,
        "interval_seconds": options.interval,
        "qclusters": options.qclusters,
        "phases": {"without": without, "held": held, **({"held_with_timeout": timed_out} if timed_out else {})},
        **(
            {
                "with_timeout": {
                    "idle_in_transaction_session_timeout_s": options.idle_timeout,
                    "throughput_ratio": _ratio(timed_out["messages_per_s"], without["messages_per_s"]),
                    "claim_probe_p99_ratio": _ratio(
                        timed_out["claim_probe_database"]["p99_ms"], without["claim_probe_database"]["p99_ms"]
                    ),
                }
            }
            if timed_out
            else {}
        ),
    }
    if timed_out:
        extra = result["with_timeout"]
        result["summary"] += (
            f"; held with idle_in_transaction_session_timeout {options.idle_timeout} s: "
            f"{timed_out['messages_per_s']} messages/s (x {extra['throughput_ratio']}), claim query p99 "
            f"{timed_out['claim_probe_database']['p99_ms']} ms (x {extra['claim_probe_p99_ratio']})"
        )
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=30, help="measured minutes per phase")
    parser.add_argument("--batch-size", type=int, default=1000, help="messages per tick (1,000 every 1 s: 1,000/s)")
    parser.add_argument("--interval", type=int, default=1)
    parser.add_argument("--qclusters", type=int, default=4, help="qcluster processes")
    parser.add_argument("--workers", type=int, default=None, help="QCLUSTER_WORKERS (default: the service's)")
    parser.add_argument("--probe-interval", type=float, default=0.5, help="seconds between timings of the claim query")
    parser.add_argument(
        "--idle-timeout",
        type=int,
        default=0,
        help="also run a third phase whose idle transaction has idle_in_transaction_session_timeout of this many "
        "seconds (0: no such phase)",
    )
    parser.add_argument("--min-throughput-ratio", type=float, default=0.95)
    parser.add_argument("--max-claim-p99-ratio", type=float, default=2.0)
