"""`python -m bench callbacks`: sending with status callbacks on for every message against
the same with none, and with one endpoint that never answers against one that is healthy,
in the same run (issue 24's targets: at least 0.9 x and at least 0.95 x).

Each round sends N queued messages through the real fake provider with a `dispatcher
drain` process (the service's own sending pipeline, without the pace) three ways, in an
order that turns from round to round so a slower moment of the shared machine falls on
each alike:

- off: no callback endpoint;
- healthy: one endpoint for `message.sent` (a minimal aiohttp stub answering 202, the
  bench's own `stub_provider`, at nice 19 by default: it stands for the client's own host,
  so its CPU is not counted as sending's), delivered by a callbacks qcluster (`Q_CLUSTER_NAME=callbacks`)
  running beside the drain: every send writes its event in the outbox, the callbacks
  worker posts it, on the same 2 cores;
- dead: one endpoint that accepts connections and never answers (every POST times out
  after CALLBACK_TIMEOUT_SECONDS), with the same callbacks qcluster.

What is timed is the send: the drain's start to the last message sent (messages/s). The
callbacks delivered during and after it are counted (every healthy event must arrive).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
import urllib.error
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
    start_command,
    start_process,
    stop_process,
)
from bench.loading import copy_unsent
from bench.throughput import _figures, delivery_checks, wait_for_provider, work_left

MODES = ("off", "healthy", "dead")
TARGET_ON_OFF = 0.9
TARGET_DEAD_HEALTHY = 0.95
CALLBACK_TABLES = ("callbacks_callbackattempt", "callbacks_callbackevent", "callbacks_callbackendpoint")


class SilentEndpoint:
    """Accepts TCP connections and never answers: every request to it times out."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        for conn in self.held:
            conn.close()


def _wait_running(log_path: Path, popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise BenchError(f"the callbacks qcluster exited ({popen.returncode}); see {log_path}")
        if log_path.exists() and "running." in log_path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise BenchError(f"the callbacks qcluster did not start within {timeout} s; see {log_path}")


def _round(options: argparse.Namespace, env: dict[str, str], logs: Path, mode: str, stub_url: str) -> dict:
    n = options.messages
    with connect() as conn:
        empty_tables(conn)
        conn.execute(f"TRUNCATE {', '.join(CALLBACK_TABLES)} RESTART IDENTITY CASCADE")
        flush_redis()
        copy_unsent(conn, n)
        conn.execute("ANALYZE messages_app_message")
    silent = SilentEndpoint() if mode == "dead" else None
    try:
        if mode != "off":
            url = f"{stub_url}hooks" if mode == "healthy" else f"http://127.0.0.1:{silent.port}/hooks"
            manage(env, "callbacks", "add", url, "--name", mode, "--event", "message.sent", "--secret-only")
        port = free_port()
        provider_url = f"http://127.0.0.1:{port}/"
        run_env = dict(env, WEBHOOK_URL=provider_url)
        with ExitStack() as stack:
            provider = stack.enter_context(
                process(["fakeprovider", "--port", str(port)], run_env, logs / "callbacks-fakeprovider.log")
            )
            wait_for_provider(provider_url, provider)
            callbacks_log = logs / f"callbacks-qcluster-{mode}.log"
            callbacks_env = dict(run_env, Q_CLUSTER_NAME="callbacks", LOG_LEVEL="INFO")  # its "running." line
            callbacks_cluster = start_process(["qcluster"], callbacks_env, callbacks_log)
            stack.callback(stop_process, callbacks_cluster)
            _wait_running(callbacks_log, callbacks_cluster)
            manage(run_env, "dispatcher", "start")
            started_wall = time.time()
            drain = start_process(
                ["dispatcher", "drain", "--batch-size", str(options.batch_size)],
                run_env,
                logs / f"callbacks-drain-{mode}.log",
            )
            stack.callback(stop_process, drain)
            deadline = time.monotonic() + options.timeout
            with connect() as conn:
                while drain.poll() is None and work_left(conn):
                    if time.monotonic() > deadline:
                        raise BenchError(f"{mode}: not sent within {options.timeout} s")
                    time.sleep(0.2)
                sent_done = time.monotonic()
                delivered = 0
                if mode == "healthy":
                    # Every event must arrive; how long after the last send is reported too.
                    while time.monotonic() < deadline:
                        delivered = conn.execute(
                            "SELECT count(*) FROM callbacks_callbackevent WHERE state = 'delivered'"
                        ).fetchone()[0]
                        if delivered >= n:
                            break
                        time.sleep(0.2)
                catch_up_s = time.monotonic() - sent_done
                events, attempts = conn.execute(
                    "SELECT (SELECT count(*) FROM callbacks_callbackevent),"
                    " (SELECT count(*) FROM callbacks_callbackattempt)"
                ).fetchone()
                checks = delivery_checks(conn, n)
                figures = _figures(conn, started_wall)
    finally:
        if silent is not None:
            silent.close()
    wall = figures["last_sent_epoch"] - started_wall if figures["last_sent_epoch"] else None
    return {
        "mode": mode,
        "messages_per_s": round(n / wall, 1) if wall and checks["sent"] == n else None,
        "wall_s": round(wall, 3) if wall else None,
        "sent_exactly_once": checks["sent_exactly_once"],
        "events_written": events,
        "callback_attempts": attempts,
        "callbacks_delivered": delivered if mode == "healthy" else None,
        "all_delivered_s_after_last_send": round(catch_up_s, 1) if mode == "healthy" else None,
    }


def callbacks(options: argparse.Namespace) -> dict:
    if options.messages < 1 or options.rounds < 1:
        raise BenchError("--messages and --rounds must be at least 1")
    env = service_env(
        DISPATCH_PROVIDER_BACKEND="webhook",
        LOG_LEVEL=options.log_level,
        CALLBACK_ALLOW_HTTP="true",
        CALLBACK_ALLOWED_NETWORKS="127.0.0.1",
        CALLBACK_TIMEOUT_SECONDS=str(options.callback_timeout),
    )
    prepare_database(env)
    logs = Path(options.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    stub_port = free_port()
    stub_url = f"http://127.0.0.1:{stub_port}/"
    rounds: list[dict] = []
    # The client's endpoint stands for another host: on these shared cores it takes only the CPU the
    # service leaves (as the callbacks qcluster does, at CALLBACK_QCLUSTER_NICE), or its own work
    # would be counted as the cost of sending callbacks.
    niced = ["nice", "-n", str(options.endpoint_nice)]
    stub = start_command(
        [*niced, sys.executable, "-m", "bench.stub_provider", "--port", str(stub_port)],
        env,
        logs / "callbacks-stub.log",
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                http_json("GET", stub_url + "_fake/stats", timeout=1)
                break
            except (OSError, urllib.error.URLError):
                if stub.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("the stub endpoint did not start") from None
                time.sleep(0.1)
        for index in range(options.rounds):
            order = MODES[index % 3 :] + MODES[: index % 3]
            for mode in order:
                print(f"callbacks: round {index + 1} of {options.rounds}: {mode}", file=sys.stderr, flush=True)
                rounds.append(_round(options, env, logs, mode, stub_url))
    finally:
        stop_process(stub)
    rates = {mode: [r["messages_per_s"] for r in rounds if r["mode"] == mode] for mode in MODES}
    medians = {mode: statistics.median(v) if v and None not in v else None for mode, v in rates.items()}
    # Judged on each round's own ratios (the three modes of a round one right after the
    # other), their median: a burst of another session's work falls on single runs.
    paired_on_off = [h / o for h, o in zip(rates["healthy"], rates["off"], strict=True) if h and o]
    paired_dead = [d / h for d, h in zip(rates["dead"], rates["healthy"], strict=True) if d and h]
    on_off = round(statistics.median(paired_on_off), 3) if len(paired_on_off) == options.rounds else None
    dead_healthy = round(statistics.median(paired_dead), 3) if len(paired_dead) == options.rounds else None
    checks_ok = (
        all(r["sent_exactly_once"] for r in rounds)
        and all(r["callbacks_delivered"] == options.messages for r in rounds if r["mode"] == "healthy")
        and on_off is not None
        and dead_healthy is not None
    )
    targets_met = checks_ok and on_off >= TARGET_ON_OFF and dead_healthy >= TARGET_DEAD_HEALTHY
    ok = checks_ok and targets_met
    return {
        "summary": (
            f"callbacks: {options.messages} messages a round, {options.rounds} round(s), one drain: median "
            f"{medians['off']} messages/s without callbacks, {medians['healthy']} with a healthy endpoint for every "
            f"message ({on_off} x; target {TARGET_ON_OFF}), {medians['dead']} with an endpoint that never answers "
            f"({dead_healthy} x the healthy; target {TARGET_DEAD_HEALTHY}); ratios: medians of each round's own"
            + ("" if checks_ok else "; SOME CHECKS FAILED")
            + ("" if not checks_ok or targets_met else "; A TARGET WAS MISSED")
        ),
        "ok": ok,
        "checks_ok": checks_ok,
        "targets_met": targets_met,
        "messages": options.messages,
        "rounds": options.rounds,
        "callback_timeout_s": options.callback_timeout,
        "endpoint_nice": options.endpoint_nice,
        "median_messages_per_s": medians,
        "ratio_healthy_to_off": on_off,
        "ratio_dead_to_healthy": dead_healthy,
        "paired_ratios_healthy_to_off": [round(r, 3) for r in paired_on_off],
        "paired_ratios_dead_to_healthy": [round(r, 3) for r in paired_dead],
        "ratio_of_medians_healthy_to_off": round(medians["healthy"] / medians["off"], 3)
        if medians["healthy"] and medians["off"]
        else None,
        "ratio_of_medians_dead_to_healthy": round(medians["dead"] / medians["healthy"], 3)
        if medians["dead"] and medians["healthy"]
        else None,
        "targets": {"healthy_to_off": TARGET_ON_OFF, "dead_to_healthy": TARGET_DEAD_HEALTHY},
        "runs": rounds,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=3000, help="messages sent in each round (N)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three modes (the median is reported)")
    parser.add_argument("--batch-size", type=int, default=100, help="drain --batch-size")
    parser.add_argument("--callback-timeout", type=float, default=5.0, help="CALLBACK_TIMEOUT_SECONDS")
    parser.add_argument(
        "--endpoint-nice",
        type=int,
        default=19,
        choices=range(20),
        metavar="0-19",
        help="niceness of the healthy endpoint (the client's host, here on the service's cores)",
    )
    parser.add_argument("--timeout", type=float, default=600, help="give up on a round after this many seconds")
    parser.add_argument("--log-level", default="WARNING", help="LOG_LEVEL of the service's processes")
