"""`python -m bench pacing` and `python -m bench pace-held`: run K qclusters and the
fake provider for some minutes at a pace and compare the messages sent with
batch_size x ticks.

`pacing` measures (one qcluster, 3 every 7 s by default); `pace-held` is the
check that the pace holds with several qclusters taking chunks from the same
queue (4 qclusters, 50 every 2 s): it passes when the count is within one batch
of batch_size x ticks and the provider saw no duplicate.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
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
)
from bench.loading import copy_unsent
from bench.throughput import wait_for_provider

SCRIPT_CONFIGURE = (
    "from dispatcher.state import dispatcher_stop, dispatcher_configure;"
    "dispatcher_stop(); dispatcher_configure(batch_size={batch_size}, interval_seconds={interval})"
)


def _paced_run(options: argparse.Namespace, *, log_prefix: str) -> dict:
    if options.qclusters < 1 or options.batch_size < 1 or options.interval < 1 or options.minutes <= 0:
        raise BenchError("--qclusters, --batch-size and --interval must be at least 1, --minutes above 0")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = service_env(WEBHOOK_URL=url, DISPATCH_PROVIDER_BACKEND="webhook")
    if options.workers is not None:
        env["QCLUSTER_WORKERS"] = str(options.workers)
    prepare_database(env)
    ticks = options.minutes * 60 / options.interval
    # Enough for every tick of the measured minutes and of the start-up before them: the
    # queue never runs dry, so each tick takes a whole batch.
    total = int(options.batch_size * (ticks + 5 + 120 / options.interval)) + 50
    with connect() as conn:
        empty_tables(conn)  # refuses while another benchmark or a worker uses the database
        flush_redis()
        manage(env, "shell", "-c", SCRIPT_CONFIGURE.format(batch_size=options.batch_size, interval=options.interval))
        copy_unsent(conn, total)
        conn.execute("ANALYZE messages_app_message")
    logs = Path(options.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
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
            # The window's edges fall half an interval from any tick, so no tick sits on one.
            first = _wait_second_tick(conn, procs, logs) - options.interval / 2
            end_at = first + options.minutes * 60
            behind_max, behind_polls, polls = 0.0, 0, 0
            while (remaining := end_at - time.time()) > 0:
                print(f"\r  measuring: {remaining:5.0f} s left", end="", file=sys.stderr, flush=True)
                if any(p.poll() is not None for p in procs):
                    raise BenchError(f"a qcluster exited early; see {logs}")
                behind = conn.execute(
                    "SELECT extract(epoch FROM now() - behind_since) FROM dispatcher_dispatcherstate"
                ).fetchone()[0]
                polls += 1
                if behind is not None:
                    behind_polls += 1
                    behind_max = max(behind_max, float(behind))
                time.sleep(min(1, max(remaining, 0)))
            print(file=sys.stderr)
            time.sleep(min(options.interval / 2, 5) + 3)  # the last ticks' messages are sent a moment later
            # Each tick stamps its messages with one claimed_at (the claim's transaction time):
            # the messages of the ticks taken in the window that were sent.
            sent, ticks_taken, sent_in_window = conn.execute(
                "SELECT count(*) FILTER (WHERE claimed_at >= to_timestamp(%(a)s) AND claimed_at < to_timestamp(%(b)s)),"
                " count(DISTINCT claimed_at) FILTER (WHERE claimed_at >= to_timestamp(%(a)s)"
                " AND claimed_at < to_timestamp(%(b)s)),"
                " count(*) FILTER (WHERE sent_at >= to_timestamp(%(a)s) AND sent_at < to_timestamp(%(b)s))"
                " FROM messages_app_message WHERE status = 'sent'",
                {"a": first, "b": end_at},
            ).fetchone()
        manage(env, "dispatcher", "stop")
        stats = http_json("GET", url + "_fake/stats", timeout=30)
    expected = options.batch_size * ticks
    duplicates = stats["duplicates_dropped"]
    return {
        "batch_size": options.batch_size,
        "interval_seconds": options.interval,
        "minutes": options.minutes,
        "qclusters": options.qclusters,
        "workers_per_qcluster": options.workers,
        "ticks": ticks,
        "expected": expected,
        "sent": sent,
        "ticks_sent_from": ticks_taken,
        # The same window by sent_at: a tick near an edge may be counted or not.
        "sent_at_in_window": sent_in_window,
        "difference": sent - expected,
        "within_one_batch": abs(sent - expected) <= options.batch_size,
        "duplicates": duplicates,
        "provider": {"accepted": stats["accepted"], "duplicates_dropped": duplicates},
        # The dispatcher's own signal (dispatcher_dispatcherstate.behind_since), read every second.
        "behind": {"polls": polls, "polls_behind": behind_polls, "behind_seconds_max": round(behind_max, 3)},
    }


def _wait_second_tick(conn, procs, logs: Path, timeout: float = 120) -> float:
    """When the second tick that sent something claimed its messages, as Unix time.

    The measured minutes are placed from it, so start-up is left out. Not the first:
    the first tick after a start is taken a moment late (the window has to notice the
    start), while the ticks after it keep the schedule's phase."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise BenchError(f"a qcluster exited before sending; see {logs}")
        ticks = conn.execute(
            "SELECT DISTINCT extract(epoch FROM claimed_at) FROM messages_app_message WHERE status = 'sent'"
            " ORDER BY 1 LIMIT 2"
        ).fetchall()
        if len(ticks) == 2:
            return float(ticks[1][0])
        time.sleep(0.5)
    raise BenchError(f"fewer than two ticks sent anything within {timeout:g} s; see {logs}")


def pacing(options: argparse.Namespace) -> dict:
    return _paced_run(options, log_prefix="pacing")


def pace_held(options: argparse.Namespace) -> dict:
    result = _paced_run(options, log_prefix="pace-held")
    passed = result["within_one_batch"] and result["duplicates"] == 0
    result = {
        "summary": (
            f"pace-held: {options.qclusters} qclusters at {options.batch_size} every {options.interval} s for "
            f"{options.minutes:g} min: {result['sent']} sent, expected {result['expected']:g} ± {options.batch_size} "
            f"({result['difference']:+g}); duplicates {result['duplicates']}; behind in "
            f"{result['behind']['polls_behind']} of {result['behind']['polls']} polls: "
            f"{'PASS' if passed else 'FAIL'}"
        ),
        "ok": passed,
        **result,
    }
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--batch-size", type=int, default=3)
    parser.add_argument("--interval", type=int, default=7)
    parser.add_argument("--qclusters", type=int, default=1, help="qcluster processes")
    parser.add_argument("--workers", type=int, default=None, help="QCLUSTER_WORKERS (default: the service's)")


def add_pace_held_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=2, help="measured minutes (10 for the record)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--interval", type=int, default=2)
    parser.add_argument("--qclusters", type=int, default=4, help="qcluster processes")
    parser.add_argument("--workers", type=int, default=None, help="QCLUSTER_WORKERS (default: the service's)")
