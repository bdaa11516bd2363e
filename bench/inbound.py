"""`python -m bench inbound`: how fast replies are taken in through the real web server from
a provider that reports them in batches (issue 22: at least 1,000 replies/s).

Empties the messages and the consent tables, starts gunicorn as deployed (`gunicorn -c
gunicorn.conf.py`: gevent workers; WEB_WORKERS=W) with a fresh INBOUND_WEBHOOK_SECRET, signs
N replies as Standard Webhooks batches of B (`{"type": "message.inbound.batch", "messages":
[...]}`, each reply with its own id; before the clock starts: signing is the provider's
work), then `wrk` (one thread, C kept-alive connections, the Lua player of bench/receipts.py)
POSTs each batch once to /api/inbound/. Every --stop-every'th reply is "STOP" from a number
of its own (it opts that number out and queues its confirmation, in the same transaction);
the rest are ordinary replies, each from its own number.

replies/s = N / (from wrk's start to the moment all N are stored, polled in the database).
`stored_span_replies_per_s` is N / (last reply stored - first, by the received times the
server gave them), as `bench receipts` measures: it leaves out the first batch's work.
Checks that wrk saw only 2xx, that N replies are stored, and that each STOP opted its
number out with one confirmation queued.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import subprocess
import time
from base64 import b64encode
from datetime import UTC, datetime
from pathlib import Path

from bench.common import BenchError, connect, flush_redis, prepare_database, refuse_if_in_use, service_env
from bench.receipts import TABLES as MESSAGE_TABLES
from bench.receipts import _r, _web, _wrk_latency_ms, wrk_player

POLL_SECONDS = 0.05
MAX_REPLIES_PER_BATCH = 1000  # what POST /api/inbound/ takes in one callback
# US area codes for the senders' numbers (+1 <area> 555 xxxx, valid for phonenumbers): 10,000 each.
AREA_CODES = (202, 212, 312, 415, 617, 713, 305, 206, 303, 404)
CONSENT_TABLES = ("consent_consentchange", "consent_consent", "consent_inboundmessage")


def inbound(options: argparse.Namespace) -> dict:
    if min(options.replies, options.clients, options.workers, options.batch_size) < 1:
        raise BenchError("--replies, --clients, --workers and --batch-size must be at least 1")
    if options.batch_size > MAX_REPLIES_PER_BATCH:
        raise BenchError(f"--batch-size must be at most {MAX_REPLIES_PER_BATCH} (the most one callback may carry)")
    if options.replies > 10000 * len(AREA_CODES):
        raise BenchError(f"--replies must be at most {10000 * len(AREA_CODES)} (one number each)")
    if options.stop_every < 0:
        raise BenchError("--stop-every must be 0 (no STOP) or more")
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (apt-get install wrk)")
    secret = "whsec_" + b64encode(secrets.token_bytes(32)).decode()
    env = service_env(
        LOG_LEVEL=options.log_level,
        INBOUND_WEBHOOK_SECRET=secret,
        ALLOWED_HOSTS="127.0.0.1",
        WEB_WORKERS=str(options.workers),
    )
    prepare_database(env)
    logs = Path(options.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    with connect() as conn:
        refuse_if_in_use(conn)
        conn.execute(f"TRUNCATE {', '.join(CONSENT_TABLES + MESSAGE_TABLES)} RESTART IDENTITY")
    flush_redis()

    n, per_batch, stop_every = options.replies, options.batch_size, options.stop_every
    stops = n // stop_every if stop_every else 0
    script = _write_callbacks(logs, secret=secret, n=n, per_batch=per_batch, stop_every=stop_every)
    with _web(env, logs / "inbound-gunicorn.log") as url:
        started = time.monotonic()
        wrk = subprocess.Popen(
            # A batch of 1,000 takes seconds to store: more than wrk's default 2 s timeout.
            ["wrk", "-t1", f"-c{options.clients}", "-d3600s", "--timeout", "120s", "--latency", "-s", str(script), url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            stored = _wait_for_replies(n, wrk, timeout=options.timeout)
            wall = time.monotonic() - started
        finally:
            if wrk.poll() is None:
                wrk.send_signal(signal.SIGINT)  # wrk prints its summary and exits
            output, _ = wrk.communicate(timeout=30)
    (logs / "inbound-wrk.log").write_text(output)
    if "Non-2xx" in output or "Socket errors" in output:
        raise BenchError(f"wrk saw errors (see {logs / 'inbound-wrk.log'}):\n{output}")

    with connect() as conn:
        first, last, keywords = conn.execute(
            "SELECT extract(epoch FROM min(received_at)), extract(epoch FROM max(received_at)), "
            "count(*) FILTER (WHERE keyword = 'opt_out') FROM consent_inboundmessage"
        ).fetchone()
        opted_out = conn.execute("SELECT count(*) FROM consent_consent WHERE status = 'opted_out'").fetchone()[0]
        confirmations = conn.execute("SELECT count(*) FROM messages_app_message WHERE status = 'unsent'").fetchone()[0]
    span = float(last) - float(first) if stored == n and last is not None else None
    ok = stored == n and keywords == opted_out == confirmations == stops
    rate = round(n / wall, 1) if stored == n else None
    summary = (
        f"inbound: {n} signed replies in batches of {per_batch} ({stops} of them STOP) through gunicorn "
        f"(gunicorn.conf.py, {options.workers} gevent workers) from wrk on {options.clients} connections: "
        f"{rate} replies/s from wrk's start to the last stored (callbacks p50 {_wrk_latency_ms(output, '50%')} ms, "
        f"p99 {_wrk_latency_ms(output, '99%')} ms)"
    )
    return {
        "summary": summary + ("" if ok else "; RUN FAILED"),
        "ok": ok,
        "replies": n,
        "replies_per_callback": per_batch,
        "gunicorn_workers": options.workers,
        "client_connections": options.clients,
        "log_level": options.log_level,
        "replies_per_s": rate,
        "stored_span_replies_per_s": round(n / span, 1) if span else None,
        "callbacks_per_s": round(-(-n // per_batch) / wall, 1) if stored == n else None,
        "wall_s": _r(wall, 3),
        "latency_p50_ms": _wrk_latency_ms(output, "50%"),
        "latency_p99_ms": _wrk_latency_ms(output, "99%"),
        "client": f"wrk, 1 thread, {options.clients} kept-alive connections",
        "checks": {
            "stored": stored,
            "stop_replies": stops,
            "stored_as_opt_out": keywords,
            "numbers_opted_out": opted_out,
            "confirmations_queued": confirmations,
        },
    }


def _write_callbacks(logs: Path, *, secret: str, n: int, per_batch: int, stop_every: int) -> Path:
    """The signed batch callbacks as a Lua table for wrk; the path of the script that plays them."""
    from standardwebhooks.webhooks import Webhook

    webhook = Webhook(secret)
    signed_at = datetime.now(UTC)
    # No timestamp in the replies: the server stamps each with the time it stores it.
    replies = [
        {
            "id": f"bench-inbound-{i}",
            "from": f"+1{AREA_CODES[i // 10000]}555{i % 10000:04d}",
            "to": "+12025550000",
            "text": "STOP" if stop_every and (i + 1) % stop_every == 0 else "Thanks, see you on Tuesday",
            "messageId": f"bench-provider-{i}",
        }
        for i in range(n)
    ]
    callbacks = [
        (
            f"bench-inbound-callback-{start}",
            json.dumps({"type": "message.inbound.batch", "messages": replies[start : start + per_batch]}),
        )
        for start in range(0, n, per_batch)
    ]
    return wrk_player(logs, "inbound", path="/api/inbound/", callbacks=callbacks, webhook=webhook, signed_at=signed_at)


def _wait_for_replies(n: int, wrk: subprocess.Popen, *, timeout: float) -> int:
    """Poll until `n` replies are stored (or wrk exits, or `timeout`); the number stored."""
    deadline = time.monotonic() + timeout
    with connect() as conn:
        while True:
            stored = conn.execute("SELECT count(*) FROM consent_inboundmessage").fetchone()[0]
            if stored >= n or wrk.poll() is not None or time.monotonic() > deadline:
                return stored
            time.sleep(POLL_SECONDS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replies", type=int, default=20000, help="replies posted (N)")
    parser.add_argument(
        "--batch-size", type=int, default=MAX_REPLIES_PER_BATCH, help="replies per signed callback (B, at most 1000)"
    )
    parser.add_argument(
        "--stop-every", type=int, default=100, help="every K-th reply is STOP from a number of its own (0: none)"
    )
    parser.add_argument("--clients", type=int, default=4, help="wrk's kept-alive connections posting batches (C)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn gevent workers, WEB_WORKERS (W)")
    parser.add_argument("--timeout", type=float, default=600, help="give up after this long")
    parser.add_argument("--log-level", default="INFO", help="LOG_LEVEL of gunicorn (INFO, the default, logs each one)")
