"""What every benchmark shares: its own database and Redis db, child processes,
machine facts, statistics and recording to bench/RESULTS.md."""

from __future__ import annotations

import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "RESULTS.md"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/messaging_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
DEFAULT_LOG_DIR = REPO_ROOT / ".local" / "bench"
# The test suite's databases and Redis dbs: a benchmark empties its own, so never these.
FORBIDDEN_DATABASE_PREFIX = "test_messaging"
FORBIDDEN_REDIS_DBS = {9, 11, 13, 15}  # tests/settings.py: one per pytest-xdist worker
MESSAGE_TABLES = ("messages_app_deliveryattempt", "messages_app_message")


class BenchError(SystemExit):
    """A benchmark could not run or its result is wrong; exits non-zero with the reason."""


def database_url() -> str:
    url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    name = urlsplit(url).path.lstrip("/")
    if not name or name.startswith(FORBIDDEN_DATABASE_PREFIX):
        raise BenchError(f"BENCH_DATABASE_URL names {name!r}: the benchmark empties its database, use another")
    return url


def redis_url() -> str:
    url = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)
    db = urlsplit(url).path.lstrip("/") or "0"
    if db.isdigit() and int(db) in FORBIDDEN_REDIS_DBS:
        raise BenchError(f"BENCH_REDIS_URL uses Redis db {db}, which the tests use; the benchmark flushes its db")
    return url


def service_env(**overrides: str) -> dict[str, str]:
    """The environment of the service's processes when run against the benchmark's database and Redis."""
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="messaging_site.settings",
        SECRET_KEY=secrets.token_urlsafe(50),
        DATABASE_URL=database_url(),
        REDIS_URL=redis_url(),
        # DEBUG is off, as in production, but the benchmark's fake provider and
        # django.test.Client speak plain http.
        WEBHOOK_ALLOW_HTTP="true",
        SECURE_SSL_REDIRECT="false",
        PYTHONUNBUFFERED="1",
        ENV_FILE="",  # manage.py: not a developer's local .env
    )
    env.update(overrides)
    return env


def ensure_database(url: str | None = None) -> None:
    import psycopg

    url = url or database_url()
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin_url = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"manage.py {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def prepare_database(env: dict[str, str]) -> None:
    """Create the benchmark database if missing and migrate it (in a child process)."""
    ensure_database(env["DATABASE_URL"])
    manage(env, "migrate", "--no-input", "-v0")


def connect(url: str | None = None, *, autocommit: bool = True):
    import psycopg

    return psycopg.connect(url or database_url(), autocommit=autocommit)


def other_clients(conn) -> list[tuple]:
    return conn.execute(
        "SELECT pid, application_name, client_addr::text, backend_start::text, state FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    ).fetchall()


def refuse_if_in_use(conn, *, wait: float = 5) -> None:
    """Stop if another client uses the benchmark database: emptying it would wreck that client's run
    (another benchmark, a qcluster left running) and its processes would skew ours."""
    deadline = time.monotonic() + wait  # a client that just closed may linger for a moment
    while clients := other_clients(conn):
        if time.monotonic() > deadline:
            name = conn.info.dbname
            listed = "\n".join(f"  pid {c[0]} app {c[1]!r} from {c[2]} since {c[3]} ({c[4]})" for c in clients)
            raise BenchError(
                f"{len(clients)} other client(s) are connected to {name}, so another benchmark or a worker "
                f"is probably using it:\n{listed}\nWait for it to finish, or give this run a database of "
                "its own with BENCH_DATABASE_URL (and BENCH_REDIS_URL)."
            )
        time.sleep(0.25)


def empty_tables(conn, *, queue_tables: bool = True) -> None:
    """Truncate the messages (and django-q2's queue), so each run starts from nothing.
    Refuses while anyone else is connected to the database."""
    refuse_if_in_use(conn)
    truncate_tables(conn, queue_tables=queue_tables)


def truncate_tables(conn, *, queue_tables: bool = True) -> None:
    """TRUNCATE the messages (and django-q2's queue); CASCADE takes along any table that
    refers to messages (attempts, and whatever the service adds)."""
    tables = list(MESSAGE_TABLES)
    if queue_tables:
        tables += ["django_q_ormq", "django_q_task"]
    conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


def flush_redis() -> None:
    """Empty the benchmark's Redis db (delivery records), unless another client is using that db."""
    import redis

    client = redis.Redis.from_url(redis_url())
    own = client.client_id()
    db = client.connection_pool.connection_kwargs.get("db", 0)
    others = [c for c in client.client_list() if int(c.get("db", -1)) == db and int(c["id"]) != own]
    if others:
        addresses = ", ".join(c.get("addr", "?") for c in others)
        raise BenchError(
            f"{len(others)} other client(s) use Redis db {db} ({addresses}); another benchmark is probably running. "
            "Wait for it, or set BENCH_REDIS_URL to a db of this run's own."
        )
    client.flushdb()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(method: str, url: str, timeout: float = 5) -> object:
    if not url.startswith("http://"):
        raise ValueError(f"not an http URL: {url}")
    request = urllib.request.Request(url, method=method)  # noqa: S310 (checked above: our own fake provider)
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return json.loads(response.read() or b"null")


def start_process(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`python manage.py <args>` in its own process group, output to `log_path` (overwritten)."""
    return start_command([sys.executable, "manage.py", *args], env, log_path)


def start_command(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Any command, from the repository root, in its own process group, output to `log_path` (overwritten)."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_process(popen: subprocess.Popen, timeout: float = 40) -> None:
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            popen.wait(timeout)
    with suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        popen.wait(5)


def stop_processes(popens: Sequence[subprocess.Popen], timeout: float = 40) -> None:
    """stop_process for many at once: SIGTERM to all, then wait for all, so their shutdowns overlap."""
    for popen in popens:
        if popen.poll() is None:
            with suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for popen in popens:
        with suppress(subprocess.TimeoutExpired):
            popen.wait(max(deadline - time.monotonic(), 0.1))
    for popen in popens:
        stop_process(popen, timeout=0)


@contextmanager
def process(args: list[str], env: dict[str, str], log_path: Path):
    popen = start_process(args, env, log_path)
    try:
        yield popen
    finally:
        stop_process(popen)


def peak_rss_kib(pid: int) -> int | None:
    """The process's peak resident set (VmHWM) so far, in KiB; None once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    for name in ("VmHWM", "VmRSS"):
        if name in fields:
            return int(fields[name].split()[0])
    return None  # a zombie has no memory lines


class RssSampler:
    """Keeps the highest VmHWM seen of each watched process; call sample() every 0.2 s or so."""

    def __init__(self) -> None:
        self.peaks: dict[int, int] = {}

    def sample(self, *pids: int) -> None:
        for pid in pids:
            kib = peak_rss_kib(pid)
            if kib is not None and kib > self.peaks.get(pid, 0):
                self.peaks[pid] = kib

    def mib(self, pid: int) -> float | None:
        return round(self.peaks[pid] / 1024, 1) if pid in self.peaks else None


def machine() -> dict:
    cpu = ""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gib = None
    with suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "cores": os.cpu_count(),
        "cpu": cpu or platform.processor() or platform.machine(),
        "ram_gib": ram_gib,
        "arch": platform.machine(),
        "python": platform.python_version(),
        "postgresql": _server_version(),
    }


def _server_version() -> str | None:
    with suppress(Exception), connect() as conn:
        return conn.execute("SHOW server_version").fetchone()[0]
    return None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation, like PostgreSQL's percentile_cont."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def timing_summary(seconds: Sequence[float]) -> dict:
    """Median, p99, min and max of durations given in seconds, in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": _round(percentile(ms, 50)),
        "p99_ms": _round(percentile(ms, 99)),
        "min_ms": _round(min(ms)) if ms else None,
        "max_ms": _round(max(ms)) if ms else None,
    }


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def record(command: str, result: dict, argv: Sequence[str]) -> None:
    """Append a section with the exact command line, the date, the machine and the result."""
    facts = machine()
    line = "python -m bench " + " ".join(argv)
    env = {k: os.environ[k] for k in ("BENCH_DATABASE_URL", "BENCH_REDIS_URL") if k in os.environ}
    env_text = "".join(f"{k}={v} " for k, v in env.items())
    summary = result.get("summary")
    with RESULTS.open("a") as out:
        out.write(
            f"\n### {command}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
            f"Command: `{env_text}{line}`  \n"
            f"Machine: {facts['cores']} cores, {facts['cpu']}, {facts['ram_gib']} GiB RAM, {facts['arch']}, "
            f"Python {facts['python']}, PostgreSQL {facts['postgresql']}\n\n"
            + (f"{summary}\n\n" if summary else "")
            + f"```json\n{json.dumps(result, indent=2)}\n```\n"
        )
