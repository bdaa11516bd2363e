"""`python -m bench receipts`: how fast delivery receipts are taken in through the real web
server, next to how fast the same number of messages is sent, in one run.

1. Receipts. Truncates, `COPY`s N sent messages (bench/loading.py `copy_history`), starts
   gunicorn as deployed (`gunicorn -c gunicorn.conf.py`: gevent workers, a pool of database
   connections each; WEB_WORKERS=W) with a fresh RECEIPT_WEBHOOK_SECRET, signs a Standard
   Webhooks callback per receipt, or per B receipts with --receipt-batch-size B (before the
   clock starts: signing is the provider's work), then `wrk` (one thread, C kept-alive
   connections; a Lua script plays the callbacks once each) POSTs them to /api/receipts/.
   wrk, not a Python client, so that the load generator's own CPU takes as little as it
   can from the two the server shares it with. receipts/s = N / (last receipt written -
   first, by the database's clock). Checks that wrk saw only 2xx and that N messages carry
   a delivery outcome.
2. Sending, receipts off. Truncates, `COPY`s N unsent messages (`copy_unsent`), starts the
   fake provider (--latency-ms L) and P `dispatcher drain` processes: messages/s = N / (last
   sent_at - drain start), as `bench throughput` measures it.
3. Sending, receipts on: the same, with gunicorn running and the fake provider calling back
   with a signed receipt for each message it accepted (--receipt-delay-ms after accepting
   it; in batches of up to B with --receipt-batch-size), as a provider does; then waits
   until every message carries its delivery outcome.

Two ratios: receipts/s over messages/s (does intake keep up with sending?) and messages/s
with receipts over without (what taking receipts in costs the sending, on one machine).
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
from base64 import b64encode
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from bench.common import (
    BenchError,
    connect,
    flush_redis,
    free_port,
    http_json,
    manage,
    median,
    prepare_database,
    process,
    refuse_if_in_use,
    service_env,
    start_command,
    start_process,
    stop_process,
    stop_processes,
)
from bench.loading import copy_history, copy_unsent

POLL_SECONDS = 0.2
# Every table that points at a message, and django-q2's queue: emptied together.
TABLES = (
    "messages_app_deliveryreceipt",
    "messages_app_deliveryattempt",
    "messages_app_message",
    "django_q_ormq",
    "django_q_task",
)
# Message columns that are NOT NULL with a default only Django knows (no database default),
# which bench/loading.py's COPY does not write: the values Django would give them.
COPY_DEFAULTS = {"priority": "'normal'", "segments": "1", "delivery_status": "''", "delivery_error_code": "''"}


def _empty(conn) -> None:
    refuse_if_in_use(conn)
    # CASCADE: tables that refer to messages (the replies' answers) go with them.
    conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")


@contextmanager
def _copy_defaults(conn):
    """Give the columns loading.py's COPY leaves out their default for the length of one
    transaction (rolled back with it, committed only with the rows): the schema ends as it began."""
    with conn.transaction():
        for column, default in COPY_DEFAULTS.items():
            conn.execute(f"ALTER TABLE messages_app_message ALTER COLUMN {column} SET DEFAULT {default}")
        yield
        for column in COPY_DEFAULTS:
            conn.execute(f"ALTER TABLE messages_app_message ALTER COLUMN {column} DROP DEFAULT")


def receipts(options: argparse.Namespace) -> dict:
    if min(options.receipts, options.clients, options.workers, options.drains, options.receipt_batch_size) < 1:
        raise BenchError("--receipts, --clients, --workers, --drains and --receipt-batch-size must be at least 1")
    if options.runs < 1:
        raise BenchError("--runs must be at least 1")
    if options.receipt_batch_size > 1000:
        raise BenchError("--receipt-batch-size must be at most 1000 (the most one callback may carry)")
    secret = "whsec_" + b64encode(secrets.token_bytes(32)).decode()
    env = service_env(
        LOG_LEVEL=options.log_level,
        RECEIPT_WEBHOOK_SECRET=secret,
        ALLOWED_HOSTS="127.0.0.1",
        WEB_WORKERS=str(options.workers),
    )
    prepare_database(env)
    logs = Path(options.log_dir)
    logs.mkdir(parents=True, exist_ok=True)

    intake = _intake(options, env, secret, logs)
    print(f"  receipts: {intake['receipts_per_s']} receipts/s", file=sys.stderr, flush=True)
    offs: list[dict] = []
    ons: list[dict] = []
    # Off and on in turn, --runs times: one drain's rate moves by a tenth between runs here.
    for run in range(0 if options.skip_sending else options.runs):
        offs.append(_sending(options, env, logs))
        print(f"  run {run + 1}: receipts off {offs[-1]['messages_per_s']} messages/s", file=sys.stderr, flush=True)
        with _web(env, logs / "receipts-gunicorn-sending.log") as web_url:
            ons.append(_sending(options, env, logs, receipts_url=web_url + "/api/receipts/", secret=secret))
        print(f"  run {run + 1}: receipts on {ons[-1]['messages_per_s']} messages/s", file=sys.stderr, flush=True)
    off_rate = _median_rate(offs)
    on_rate = _median_rate(ons)
    ratio = _ratio(intake["receipts_per_s"], off_rate)
    receipts_cost = _ratio(on_rate, off_rate)
    ok = intake["ok"] and all(phase["ok"] for phase in offs + ons)
    batch = options.receipt_batch_size
    per_callback = "one per callback" if batch == 1 else f"{batch} per callback"
    summary = (
        f"receipts: {options.receipts} signed receipts ({per_callback}) through gunicorn (gunicorn.conf.py, "
        f"{options.workers} gevent workers) from wrk on {options.clients} connections: {intake['receipts_per_s']} "
        f"receipts/s (callbacks p50 {intake['latency_p50_ms']} ms, p99 {intake['latency_p99_ms']} ms)"
    )
    if offs and ons:
        summary += (
            f"; sending the same number with {options.drains} drain process(es) to a "
            f"{options.latency_ms:g} ms fake provider, median of {len(offs)}: {off_rate} messages/s with receipts "
            f"off, {on_rate} with receipts on (runs {[p['messages_per_s'] for p in offs]} off, "
            f"{[p['messages_per_s'] for p in ons]} on; receipts applied {[p['receipts_applied'] for p in ons]}, "
            f"kept waiting for the sweep {[p['receipts_waiting'] for p in ons]}, given up by the provider "
            f"{[p['receipts_given_up_by_provider'] for p in ons]}); receipts/s to messages/s: {ratio}; "
            f"messages/s with receipts to without: {receipts_cost}"
        )
    return {
        "summary": summary + ("" if ok else "; RUN FAILED"),
        "ok": ok,
        "receipts": options.receipts,
        "gunicorn_workers": options.workers,
        "client_connections": options.clients,
        "receipts_per_callback": options.receipt_batch_size,
        "log_level": options.log_level,
        "intake": intake,
        "sending": offs,
        "sending_with_receipts": ons,
        "receipts_to_sending_ratio": ratio,
        "sending_with_receipts_to_without": receipts_cost,
    }


def _median_rate(phases: list[dict]) -> float | None:
    rates = [p["messages_per_s"] for p in phases if p["messages_per_s"]]
    return round(median(rates), 1) if rates and len(rates) == len(phases) else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 2) if numerator and denominator else None


@contextmanager
def _web(env: dict[str, str], log: Path):
    """gunicorn as deployed (gunicorn.conf.py, gevent workers), on a free port; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "gunicorn.conf.py",
        "messaging_site.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        # gunicorn 27 otherwise listens on one control socket per user (~/.gunicorn/), shared with any other.
        "--no-control-socket",
    ]
    gunicorn = start_command(argv, env, log)
    try:
        _wait_for(url + "/healthz", gunicorn, "gunicorn")
        yield url
    finally:
        stop_process(gunicorn)


# --- 1. receipts through gunicorn -------------------------------------------------------------


WRK_SCRIPT = """
-- The signed callbacks, each sent once in order; then the thread stops, so that wrk's
-- latencies are the callbacks' (bench stops wrk once every receipt is in the database).
-- One wrk thread, so one list. wrk calls request() once before the run to check what it
-- returns: that call gets a health check.
local callbacks = dofile("%(callbacks)s")
local calls, total = 0, #callbacks
request = function()
  calls = calls + 1
  if calls >= 2 and calls <= total + 1 then
    return callbacks[calls - 1]
  end
  if calls > total + 1 then wrk.thread:stop() end
  return wrk.format("GET", "/healthz")
end
"""


def _intake(options: argparse.Namespace, env: dict[str, str], secret: str, logs: Path) -> dict:
    from standardwebhooks.webhooks import Webhook

    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (apt-get install wrk)")
    n, per_callback = options.receipts, options.receipt_batch_size
    with connect() as conn:
        _empty(conn)
        with _copy_defaults(conn):
            load = copy_history(conn, sent=n)
        conn.execute("ANALYZE messages_app_message")
        provider_ids = [row[0] for row in conn.execute("SELECT provider_message_id FROM messages_app_message")]
    flush_redis()
    print(f"  loaded {n} sent messages at {load['rows_per_s']} rows/s", file=sys.stderr, flush=True)

    # Signed before the clock starts, as the provider's work: one receipt per callback, or
    # --receipt-batch-size of them in each (a batch callback).
    webhook = Webhook(secret)
    signed_at = datetime.now(UTC)
    receipts = [
        {
            "id": f"bench-receipt-{i}",
            "messageId": provider_message_id,
            "status": "undelivered" if i % 10 == 0 else "delivered",
            "errorCode": "30003" if i % 10 == 0 else None,
            "timestamp": signed_at.isoformat(),
        }
        for i, provider_message_id in enumerate(provider_ids)
    ]
    callbacks = []
    for start in range(0, n, per_callback):
        group = receipts[start : start + per_callback]
        if per_callback == 1:
            callback_id, fields = group[0]["id"], {k: v for k, v in group[0].items() if k != "id"}
            body = json.dumps({"type": "message.status", **fields})
        else:
            callback_id = f"bench-callback-{start}"
            body = json.dumps({"type": "message.status.batch", "receipts": group})
        callbacks.append((callback_id, body))
    script = wrk_player(
        logs, "receipts", path="/api/receipts/", callbacks=callbacks, webhook=webhook, signed_at=signed_at
    )

    with _web(env, logs / "receipts-gunicorn.log") as url:
        wrk = subprocess.Popen(
            ["wrk", "-t1", f"-c{options.clients}", "-d3600s", "--latency", "-s", str(script), url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            taken = _wait_for_receipts(n, wrk, timeout=options.timeout)
        finally:
            if wrk.poll() is None:
                wrk.send_signal(signal.SIGINT)  # wrk prints its summary and exits
            output, _ = wrk.communicate(timeout=30)
    (logs / "receipts-wrk.log").write_text(output)
    if "Non-2xx" in output or "Socket errors" in output:
        raise BenchError(f"wrk saw errors (see {logs / 'receipts-wrk.log'}):\n{output}")

    with connect() as conn:
        recorded = conn.execute(
            "SELECT delivery_status, count(*) FROM messages_app_message WHERE status = 'sent' GROUP BY 1"
        ).fetchall()
        kept, first, last = conn.execute(
            "SELECT count(message_id), extract(epoch FROM min(received_at)), extract(epoch FROM max(received_at)) "
            "FROM messages_app_deliveryreceipt"
        ).fetchone()
    recorded = {status or "none": count for status, count in recorded}
    # The server's own clock: from the first receipt written to the last (the first
    # request's parsing and the last answer's way back are outside; at thousands a second,
    # a millisecond).
    wall = float(last) - float(first) if taken == n and last is not None else None
    ok = taken == n and kept == n and recorded.get("delivered", 0) + recorded.get("undelivered", 0) == n
    return {
        "ok": ok,
        "receipts_per_s": round(n / wall, 1) if wall else None,
        "callbacks_per_s": round(-(-n // per_callback) / wall, 1) if wall else None,
        "receipts_per_callback": per_callback,
        "wall_s": _r(wall, 3),
        "latency_p50_ms": _wrk_latency_ms(output, "50%"),
        "latency_p99_ms": _wrk_latency_ms(output, "99%"),
        "client": f"wrk, 1 thread, {options.clients} kept-alive connections",
        "checks": {"messages_by_delivery_status": recorded, "receipts_matched": kept},
        "load": load,
    }


def _wait_for_receipts(n: int, wrk: subprocess.Popen, *, timeout: float) -> int:
    """Poll until `n` receipts are kept (or wrk exits, or `timeout`); the number kept."""
    deadline = time.monotonic() + timeout
    with connect() as conn:
        while True:
            taken = conn.execute("SELECT count(*) FROM messages_app_deliveryreceipt").fetchone()[0]
            if taken >= n or wrk.poll() is not None or time.monotonic() > deadline:
                return taken
            time.sleep(POLL_SECONDS / 2)


def _wrk_latency_ms(output: str, percentile_label: str) -> float | None:
    found = re.search(rf"^\s*{re.escape(percentile_label)}\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if not found:
        return None
    value, unit = float(found.group(1)), found.group(2)
    return _r(value / 1000 if unit == "us" else value * 1000 if unit == "s" else value, 2)


# --- 2. sending the same number ---------------------------------------------------------------


def _sending(
    options: argparse.Namespace,
    env: dict[str, str],
    logs: Path,
    *,
    receipts_url: str | None = None,
    secret: str | None = None,
) -> dict:
    """Send N messages with P drains; with `receipts_url`, the fake provider calls back with a
    signed receipt for each, and the phase ends once every message carries its outcome."""
    n = options.receipts
    phase = "receipts-on" if receipts_url else "receipts-off"
    with connect() as conn:
        _empty(conn)
        with _copy_defaults(conn):
            load = copy_unsent(conn, n)
        conn.execute("ANALYZE messages_app_message")
    flush_redis()
    print(f"  loaded {n} unsent messages at {load['rows_per_s']} rows/s", file=sys.stderr, flush=True)

    port = free_port()
    provider_url = f"http://127.0.0.1:{port}/"
    env = dict(env, DISPATCH_PROVIDER_BACKEND="webhook", WEBHOOK_URL=provider_url)
    provider_args = ["fakeprovider", "--port", str(port), "--latency-ms", f"{options.latency_ms:g}"]
    if receipts_url:
        provider_args += [
            *("--receipts-url", receipts_url, "--receipt-secret", secret),
            *("--receipt-delay-ms", f"{options.receipt_delay_ms:g}"),
            *("--receipt-batch-size", str(options.receipt_batch_size)),
        ]
    applied_after = receipts_given_up = None
    with ExitStack() as stack:
        provider = stack.enter_context(process(provider_args, env, logs / f"{phase}-fakeprovider.log"))
        _wait_for(provider_url + "_fake/stats", provider, "the fake provider")
        manage(env, "dispatcher", "start")
        drain_started = time.time()
        drains = [
            start_process(
                ["dispatcher", "drain", "--batch-size", str(options.batch_size)],
                env,
                logs / f"{phase}-drain-{i}.log",
            )
            for i in range(options.drains)
        ]
        stack.callback(stop_processes, drains)
        deadline = time.monotonic() + options.timeout
        with connect() as conn:
            while any(p.poll() is None for p in drains) and time.monotonic() < deadline:
                left = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM messages_app_message WHERE status IN ('unsent', 'processing'))"
                ).fetchone()[0]
                if not left:
                    break
                time.sleep(POLL_SECONDS)
            sent_by = time.time()
            # Until every receipt is applied, or the fake provider has given up on the rest
            # (it tries each one four times).
            while receipts_url and time.monotonic() < deadline:
                waiting = conn.execute(
                    "SELECT count(*) FROM messages_app_message WHERE status = 'sent' AND delivery_status = ''"
                ).fetchone()[0]
                stats = http_json("GET", provider_url + "_fake/stats")
                if not waiting or stats["receipts_sent"] + stats["receipts_failed"] >= n:
                    applied_after = time.time() - sent_by
                    receipts_given_up = stats["receipts_failed"]
                    break
                time.sleep(POLL_SECONDS)
        timed_out = time.monotonic() >= deadline
    with connect() as conn:
        sent, last, applied = conn.execute(
            "SELECT count(*), extract(epoch FROM max(sent_at)), count(*) FILTER (WHERE delivery_status <> '') "
            "FROM messages_app_message WHERE status = 'sent'"
        ).fetchone()
        # A receipt written as its send was being recorded, each missing the other: the
        # pacing window's sweep applies it (not running here, with drains).
        waiting = conn.execute("SELECT count(*) FROM messages_app_deliveryreceipt WHERE message_id IS NULL").fetchone()[
            0
        ]
    wall = float(last) - drain_started if last is not None else None
    return {
        "ok": not timed_out and sent == n,
        "messages_per_s": round(n / wall, 1) if wall and sent == n else None,
        "wall_s": _r(wall),
        "sent": sent,
        "receipts_applied": applied,
        "receipts_waiting": waiting,
        "receipts_settled_after_s": _r(applied_after),
        "receipts_given_up_by_provider": receipts_given_up,
        "drains": options.drains,
        "batch_size": options.batch_size,
        "provider_latency_ms": options.latency_ms,
        "timed_out": timed_out,
        "load": load,
    }


def _wait_for(url: str, popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise BenchError(f"{what} exited ({popen.returncode}); see its log")
        try:
            http_json("GET", url, timeout=1)
            return
        except (OSError, urllib.error.URLError, ValueError):
            time.sleep(0.1)
    raise BenchError(f"{what} did not answer {url} within {timeout} s")


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--receipts", type=int, default=5000, help="sent messages, one receipt each (N)")
    parser.add_argument("--clients", type=int, default=16, help="wrk's kept-alive connections posting receipts (C)")
    parser.add_argument(
        "--receipt-batch-size",
        type=int,
        default=1,
        help="receipts per callback (B), in the intake and from the fake provider (1: one each, as Twilio sends)",
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn gevent workers, WEB_WORKERS (W)")
    parser.add_argument("--drains", type=int, default=1, help="drain processes for the sending phase (P)")
    parser.add_argument("--batch-size", type=int, default=100, help="drain --batch-size in the sending phase")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the fake provider's delay per request")
    parser.add_argument(
        "--receipt-delay-ms", type=float, default=100.0, help="receipts on: from accepting a message to its receipt"
    )
    parser.add_argument("--skip-sending", action="store_true", help="measure the receipts only")
    parser.add_argument("--runs", type=int, default=3, help="sending off and on, in turn, this many times (medians)")
    parser.add_argument("--timeout", type=float, default=600, help="give up on the sending phase after this long")
    parser.add_argument(
        "--log-level", default="INFO", help="LOG_LEVEL of gunicorn and the drains (INFO, the default, logs each one)"
    )


def wrk_player(
    logs: Path, name: str, *, path: str, callbacks: list[tuple[str, str]], webhook, signed_at: datetime
) -> Path:
    """The callbacks (id, body), each signed per Standard Webhooks, as a Lua table that
    WRK_SCRIPT plays to `path`; the path of that script (`<name>-wrk.lua` in `logs`)."""
    lines = ["local f = wrk.format", "return {"]
    for callback_id, body in callbacks:
        headers = {
            "Content-Type": "application/json",
            "webhook-id": callback_id,
            "webhook-timestamp": str(int(signed_at.timestamp())),
            "webhook-signature": webhook.sign(callback_id, signed_at, body),
        }
        lua_headers = ", ".join(f'["{k}"] = [==[{v}]==]' for k, v in headers.items())
        lines.append(f'f("POST", "{path}", {{{lua_headers}}}, [==[{body}]==]),')
    lines.append("}")
    callbacks_file = logs / f"{name}-callbacks.lua"
    callbacks_file.write_text("\n".join(lines))
    script = logs / f"{name}-wrk.lua"
    script.write_text(WRK_SCRIPT % {"callbacks": callbacks_file})
    return script
