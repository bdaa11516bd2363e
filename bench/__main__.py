"""Benchmarks that run the real processes. Usage: python -m bench <command> [options]

  pacing   run qcluster + the fake provider for some minutes and compare the
           number of messages sent with batch_size x ticks.

Each run needs PostgreSQL (BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/messaging_bench, created if missing; its
tables are emptied) and writes nothing outside that database. Append the
printed result to bench/RESULTS.md by hand or with --record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "RESULTS.md"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ensure_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin_url = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


@contextmanager
def _process(args: list[str], env: dict[str, str], log_path: Path):
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            [sys.executable, "manage.py", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield popen
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                popen.wait(40)
        with suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)


def _manage(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO_ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout


def pacing(options: argparse.Namespace) -> dict:
    db_url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/messaging_bench")
    _ensure_database(db_url)
    port = _free_port()
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="messaging_site.settings",
        SECRET_KEY=os.environ.get("SECRET_KEY") or secrets.token_urlsafe(40),
        DATABASE_URL=db_url,
        REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
        WEBHOOK_URL=f"http://127.0.0.1:{port}/",
        DISPATCH_PROVIDER_BACKEND="webhook",
        PYTHONUNBUFFERED="1",
    )
    _manage(env, "migrate", "--no-input", "-v0")
    total = options.batch_size * (int(options.minutes * 60 / options.interval) + 5) + 50
    script = (
        "from django_q.models import OrmQ, Task;"
        "from messages_app.models import Message;"
        "from dispatcher.services import dispatcher_stop, dispatcher_configure;"
        "OrmQ.objects.all().delete(); Task.objects.all().delete(); Message.objects.all().delete();"
        "dispatcher_stop();"
        f"dispatcher_configure(batch_size={options.batch_size}, interval_seconds={options.interval});"
        "Message.objects.bulk_create([Message(recipient_phone_number='+905551112233', content='pacing %d' % i)"
        f" for i in range({total})])"
    )
    _manage(env, "shell", "-c", script)
    logs = Path(options.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        stack.enter_context(_process(["fakeprovider", "--port", str(port)], env, logs / "pacing-fakeprovider.log"))
        stack.enter_context(_process(["qcluster"], env, logs / "pacing-qcluster.log"))
        time.sleep(3)
        _manage(env, "dispatcher", "start")
        # Count from the first send, so the cluster's start-up is not measured.
        count_sql = (
            "from messages_app.models import Message as M;"
            "import json; from django.db.models import Min;"
            "print(json.dumps({'sent': M.objects.filter(status='sent').count(),"
            " 'first': M.objects.filter(status='sent').aggregate(t=Min('sent_at'))['t'].timestamp()"
            " if M.objects.filter(status='sent').exists() else None}))"
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            first = json.loads(_manage(env, "shell", "-c", count_sql).strip().splitlines()[-1])["first"]
            if first:
                break
            time.sleep(1)
        else:
            raise SystemExit("no message was sent within 120 s; see " + str(logs))
        end_at = first + options.minutes * 60
        while time.time() < end_at:
            remaining = end_at - time.time()
            print(f"\r  measuring: {remaining:5.0f} s left", end="", file=sys.stderr, flush=True)
            time.sleep(min(5, max(remaining, 0)))
        print(file=sys.stderr)
        window_script = (
            "from messages_app.models import Message as M; from datetime import datetime, UTC;"
            f"a = datetime.fromtimestamp({first}, UTC); b = datetime.fromtimestamp({end_at}, UTC);"
            "print(M.objects.filter(status='sent', sent_at__gte=a, sent_at__lt=b).count())"
        )
        sent = int(_manage(env, "shell", "-c", window_script).strip().splitlines()[-1])
        _manage(env, "dispatcher", "stop")
    ticks = options.minutes * 60 / options.interval
    expected = options.batch_size * ticks
    return {
        "batch_size": options.batch_size,
        "interval_seconds": options.interval,
        "minutes": options.minutes,
        "expected": expected,
        "sent": sent,
        "difference": sent - expected,
        "within_one_batch": abs(sent - expected) <= options.batch_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pacing", help="messages sent over some minutes vs batch size x ticks")
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--batch-size", type=int, default=3)
    p.add_argument("--interval", type=int, default=7)
    p.add_argument("--log-dir", default=str(REPO_ROOT / ".local" / "bench"))
    p.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    options = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messaging_site.settings")
    result = pacing(options)
    print(json.dumps(result, indent=2))
    if options.record:
        command = "python -m bench " + " ".join(sys.argv[1:])
        with RESULTS.open("a") as out:
            out.write(
                f"\n### pacing, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
                f"Command: `{command}`  \nMachine: {platform.machine()}, {os.cpu_count()} cores, "
                f"Python {platform.python_version()}\n\n```json\n{json.dumps(result, indent=2)}\n```\n"
            )


if __name__ == "__main__":
    main()
