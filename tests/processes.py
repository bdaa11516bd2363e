"""Starting and stopping the real processes some tests need (qcluster, the fake provider)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from django.db import connection

import bench.servers

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_database_url() -> str:
    """DATABASE_URL of the database pytest-django created, for child processes."""
    s = connection.settings_dict
    user = s.get("USER") or ""
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


def child_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=test_database_url(),
        PYTHONUNBUFFERED="1",
        # manage.py would fill in what is unset here from a developer's local .env.
        ENV_FILE="",
    )
    env.update(overrides)
    return env


# What `make run`'s .env does not set comes from the defaults, not from the test run.
_NOT_INHERITED = ("DATABASE_", "REDIS_", "DISPATCH_", "WEBHOOK_", "THROTTLE_", "SECURE_", "SESSION_", "CSRF_")
_NOT_INHERITED_NAMES = {"DJANGO_SETTINGS_MODULE", "SECRET_KEY", "DEBUG", "ENV_FILE", "DJANGO_SUPERUSER_PASSWORD"}


def newcomer_env(tmp_path: Path) -> dict[str, str]:
    """The environment of someone who just cloned the repository and runs `make run`:
    nothing of the test settings, a scratch SQLite state directory, the repository
    importable from any folder, and a WEBHOOK_URL where nothing listens (so no command
    reaches a provider someone else runs on 8081)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_NOT_INHERITED) and name not in _NOT_INHERITED_NAMES
    }
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        LOCAL_STATE_DIR=str(tmp_path / "state"),
        WEBHOOK_URL=f"http://127.0.0.1:{free_port()}/",
        PYTHONUNBUFFERED="1",
    )
    return env


class RunningProcess:
    def __init__(self, popen: subprocess.Popen, log_path: Path) -> None:
        self.popen = popen
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the process's whole group (it and every child it started), as systemd or
        `docker stop` do."""
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode


# Runs `manage.py <args>` with django.utils.timezone.now() moved by {offset} seconds, patched before
# Django starts, so every module that asks Django for the time (django-q2 included) gets the wrong one:
# a host whose clock is off. Forked children (qcluster's workers) inherit it.
SKEWED_CLOCK_SCRIPT = """
import datetime
import django.utils.timezone as tz
real_now = tz.now
tz.now = lambda: real_now() + datetime.timedelta(seconds={offset})
import runpy, sys
sys.argv = ["manage.py", *sys.argv[1:]]
runpy.run_path("manage.py", run_name="__main__")
"""


# Runs `manage.py <args>` for `faketime_command`. With the monotonic clock left alone (FAKETIME_ENV),
# Python 3.11's time.sleep fails with EINVAL: libfaketime 0.9.10 turns its clock_nanosleep(CLOCK_MONOTONIC,
# TIMER_ABSTIME) into a negative time (wolfcw/libfaketime#426). So the process sleeps by waiting on an
# event (on the real monotonic clock), patched in before anything imports `sleep`.
FAKETIME_SLEEP_SCRIPT = """
import threading, time
time.sleep = lambda seconds: threading.Event().wait(seconds) and None
import runpy, sys
sys.argv = ["manage.py", *sys.argv[1:]]
runpy.run_path("manage.py", run_name="__main__")
"""
# What a process run under faketime needs in its environment: the monotonic clock not faked. Faked,
# Python's timed waits on it (threading.Event.wait, a lock's timeout: sem_clockwait, which libfaketime
# does not intercept) waited the offset on top of their timeout.
FAKETIME_ENV = {"FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def faketime_command(args: list[str], *, offset_seconds: float) -> list[str]:
    """`python manage.py <args>` under Debian's `faketime`: the process and its children (libc's clocks,
    so Python's time.time() and datetime.now() too) see the system clock `offset_seconds` off, as on a
    host whose clock is wrong; run it with FAKETIME_ENV. Needs `faketime` (`apt-get install faketime`).
    faketime waits for the command in a process of its own, which a signal to the group ends at once:
    watch the command's log, not that process, to know when it has stopped."""
    assert shutil.which("faketime"), "these tests need Debian's faketime: apt-get install faketime"
    return ["faketime", "-f", f"{offset_seconds:+g}", sys.executable, "-c", FAKETIME_SLEEP_SCRIPT, *args]


@contextmanager
def running(
    args: list[str],
    *,
    env: dict[str, str],
    log_path: Path,
    clock_offset_seconds: float = 0,
    system_clock_offset_seconds: float = 0,
):
    """Run `python manage.py <args>` in its own process group; stop it (and its children) after.

    With `clock_offset_seconds`, the process sees Django's clock (timezone.now) that far off; with
    `system_clock_offset_seconds`, the system's clock itself (`faketime_command`), as every library sees it.
    """
    command = [sys.executable, "manage.py", *args]
    if clock_offset_seconds:
        command = [sys.executable, "-c", SKEWED_CLOCK_SCRIPT.format(offset=clock_offset_seconds), *args]
    if system_clock_offset_seconds:
        command = faketime_command(args, offset_seconds=system_clock_offset_seconds)
        env = {**env, **FAKETIME_ENV}
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    process = RunningProcess(popen, log_path)
    try:
        yield process
    finally:
        process.stop()
        # qcluster's workers are its children: make sure none outlives the test.
        with suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)


class RunningGunicorn(RunningProcess):
    """A gunicorn started by `production_gunicorn`: its process, its log and the base URL it serves."""

    def __init__(self, popen: subprocess.Popen, log_path: Path, base: str) -> None:
        super().__init__(popen, log_path)
        self.base = base


def gunicorn_command(port: int, *extra_args: str) -> list[str]:
    """How the Dockerfile runs the web server (gunicorn.conf.py), on 127.0.0.1:`port`."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "gunicorn.conf.py",
        "--bind",
        f"127.0.0.1:{port}",
        *extra_args,
        "messaging_site.wsgi:application",
    ]


@contextmanager
def production_gunicorn(
    tmp_path: Path, *, log_name: str = "gunicorn.log", extra_args: tuple[str, ...] = (), **env_overrides: str
) -> Iterator[RunningGunicorn]:
    """`gunicorn -c gunicorn.conf.py messaging_site.wsgi:application`, as the Dockerfile runs it,
    on a free port of 127.0.0.1, against the test database; yields once it answers /healthz."""
    port = free_port()
    log_path = tmp_path / log_name
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            gunicorn_command(port, *extra_args),
            cwd=REPO_ROOT,
            env=child_env(**env_overrides),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = RunningGunicorn(popen, log_path, f"http://127.0.0.1:{port}")

    def up() -> bool:
        assert popen.poll() is None, server.log()
        request = urllib.request.Request(f"{server.base}/healthz", headers={"Host": "127.0.0.1"})
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_for(up, timeout=30, what="gunicorn to answer /healthz")
        yield server
    finally:
        server.stop(timeout=15)
        # Its workers are its children: make sure none outlives the test.
        with suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)


def http_json(method: str, url: str, body: object | None = None, timeout: float = 5) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


@contextmanager
def fake_provider(tmp_path: Path, *extra_args: str):
    """A real `manage.py fakeprovider` process on a free port; yields its base URL."""
    port = free_port()
    with running(
        ["fakeprovider", "--port", str(port), *extra_args], env=child_env(), log_path=tmp_path / "fakeprovider.log"
    ) as process:
        url = f"http://127.0.0.1:{port}/"

        def up() -> bool:
            try:
                http_json("GET", url + "_fake/faults", timeout=1)
                return True
            except OSError:
                return process.popen.poll() is not None

        wait_for(up, timeout=20, what="the fake provider to listen")
        assert process.popen.poll() is None, process.log()
        process.url = url
        yield process


@contextmanager
def qcluster(
    tmp_path: Path,
    *,
    log_name: str = "qcluster.log",
    clock_offset_seconds: float = 0,
    system_clock_offset_seconds: float = 0,
    **env_overrides: str,
):
    """A real `manage.py qcluster` against the test database (log in `tmp_path / log_name`)."""
    with running(
        ["qcluster"],
        env=child_env(**env_overrides),
        log_path=tmp_path / log_name,
        clock_offset_seconds=clock_offset_seconds,
        system_clock_offset_seconds=system_clock_offset_seconds,
    ) as process:
        yield process


def wait_for_log(process: RunningProcess, text: str, *, timeout: float) -> None:
    """Wait until `text` appears in the process's log (or fail with the log if it exits first)."""

    def seen() -> bool:
        if text in process.log():
            return True
        assert process.popen.poll() is None, f"process exited ({process.popen.returncode}):\n{process.log()}"
        return False

    try:
        wait_for(seen, timeout=timeout, what=repr(text))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- log:\n{process.log()}") from None


def logs_of(*processes: RunningProcess) -> str:
    """The logs of `processes`, labelled, for assertion messages."""
    return "\n".join(f"--- {p.log_path.name}:\n{p.log()}" for p in processes)


@contextmanager
def qcluster_running(
    tmp_path: Path,
    *,
    timeout: float = 30,
    log_name: str = "qcluster.log",
    clock_offset_seconds: float = 0,
    system_clock_offset_seconds: float = 0,
    **env_overrides: str,
):
    """`qcluster` that has reported it is running (its workers are up and polling the queue)."""
    env_overrides.setdefault("LOG_LEVEL", "INFO")  # the readiness line, and what tests look for, are INFO
    with qcluster(
        tmp_path,
        log_name=log_name,
        clock_offset_seconds=clock_offset_seconds,
        system_clock_offset_seconds=system_clock_offset_seconds,
        **env_overrides,
    ) as process:
        wait_for_log(process, "running.", timeout=timeout)
        yield process


@contextmanager
def qclusters_running(
    tmp_path: Path, names: list[str], *, timeout: float = 60, **env_overrides: str
) -> Iterator[list[RunningProcess]]:
    """Several `qcluster`s at once (logs `<name>.log`), started together and all reported running.

    After the block each still alive gets SIGTERM to its whole process group, all at once, so
    they stop in parallel (then the usual clean-up kills whatever is left).
    """
    env_overrides.setdefault("LOG_LEVEL", "INFO")
    with ExitStack() as stack:
        processes = [stack.enter_context(qcluster(tmp_path, log_name=f"{name}.log", **env_overrides)) for name in names]
        for process in processes:
            wait_for_log(process, "running.", timeout=timeout)
        try:
            yield processes
        finally:
            alive = [p for p in processes if p.popen.poll() is None]
            for process in alive:
                process.signal_group(signal.SIGTERM)
            for process in alive:
                with suppress(subprocess.TimeoutExpired):
                    process.popen.wait(30)


class InProcessFakeProvider:
    """The fake provider served by an event loop in a thread of the test process."""

    def __init__(self, server) -> None:
        self.server = server  # devtools.fakeprovider.server.FakeProvider
        self.url = f"http://127.0.0.1:{server.port}/"

    @property
    def state(self):
        return self.server.state

    def requests(self) -> list:
        return self.server.state.received()


@contextmanager
def fake_provider_in_thread(**kwargs):
    """`devtools.fakeprovider.server.make_fake_provider` on a free port, served by a thread until the block ends."""
    import asyncio
    import threading

    from devtools.fakeprovider.server import make_fake_provider

    server = make_fake_provider(port=0, **kwargs)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-provider", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        yield InProcessFakeProvider(server)
    finally:

        async def cancel_what_is_left() -> None:
            # A request still being answered (a client that gave up on a slow answer) is
            # ended here, not destroyed pending when the loop is dropped.
            left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        asyncio.run_coroutine_threadsafe(cancel_what_is_left(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


# A claimer in its own OS process: it connects, says it is ready (a file), waits
# for the go file, then claims batches until none is left and prints the ids as
# JSON. Each claim holds its row locks for `hold` seconds before committing, so
# claimers running at once really do meet each other's locks.
CLAIMER_SCRIPT = """
import json, os, sys, time
import django
django.setup()
from django.db import connection, transaction
from dispatcher.engine.claiming import claim_batch

ready, go, batch_size, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
connection.ensure_connection()
open(ready, "w").close()
deadline = time.monotonic() + 30
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("no go signal within 30 s")
    time.sleep(0.005)
claimed = []
while True:
    with transaction.atomic():
        ids = claim_batch(batch_size=batch_size).message_ids
        if ids:
            time.sleep(hold)
    if not ids:
        break
    claimed.extend(ids)
connection.close()
print(json.dumps(claimed))
"""


def start_claimer(tmp_path: Path, name: str, *, go_file: Path, batch_size: int, hold: float) -> tuple:
    """Start a claimer process (see CLAIMER_SCRIPT); return (popen, ready_file)."""
    ready = tmp_path / f"{name}.ready"
    popen = subprocess.Popen(
        [sys.executable, "-c", CLAIMER_SCRIPT, str(ready), str(go_file), str(batch_size), str(hold)],
        cwd=REPO_ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    return popen, ready


# --- Fault injection helpers (tests/dispatcher/test_faults.py) -------------------------------


def manage(args: list[str], *, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `python manage.py <args>` to completion; return it with its output (stdout and stderr together)."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def drain(tmp_path: Path, name: str, *args: str, **env_overrides: str):
    """A real `manage.py dispatcher drain <args>` process (log in `tmp_path / f"{name}.log"`)."""
    with running(
        ["dispatcher", "drain", *args], env=child_env(**env_overrides), log_path=tmp_path / f"{name}.log"
    ) as process:
        yield process


def provider_requests(url: str) -> list[dict]:
    """What the fake provider at `url` received, oldest answer first."""
    return http_json("GET", url + "_fake/requests", timeout=30)


def provider_stats(url: str) -> dict:
    return http_json("GET", url + "_fake/stats")


def provider_faults(url: str, **faults: object) -> dict:
    """Change the fake provider's faults while it runs; return them all."""
    return http_json("POST", url + "_fake/faults", faults)


class RedisServer:
    """A private `redis-server` subprocess that tests may stop and start again on the same port.

    It keeps its snapshot in `directory`: `stop()` saves one (SHUTDOWN SAVE) and `start()` loads it,
    the way a Redis with persistence comes back after a restart. It never snapshots by itself.
    """

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.popen: subprocess.Popen | None = None
        self.log_path = directory / f"redis-{self.port}.log"

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def ping(self) -> bool:
        import redis

        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self, timeout: float = 10) -> None:
        assert self.popen is None or self.popen.poll() is not None, "already running"
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                    "--dbfilename",
                    f"redis-{self.port}.rdb",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self.ping, timeout=timeout, what=f"redis-server on port {self.port}")

    def stop(self, *, save: bool = True, timeout: float = 10) -> None:
        """Shut it down (saving a snapshot first if `save`); return once the port refuses connections."""
        if self.popen is None or self.popen.poll() is not None:
            return
        # redis-cli rather than redis-py, whose retries on the hang-up would add seconds.
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "shutdown", "save" if save else "nosave"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)


@contextmanager
def redis_server(tmp_path: Path):
    """A private Redis (never the shared one on 6379) on a free port; killed after the block."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def terminate_database_backends() -> int:
    """Terminate every other client connection to the test database; return how many were ended.

    Only this database's client backends are touched, never our own connection.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        return sum(1 for (ended,) in cursor.fetchall() if ended)


class PrivatePostgres(bench.servers.PrivatePostgres):
    """A PostgreSQL server of the tests' own (never the shared one): the benchmarks' private
    server (bench/servers.py: initdb into a fresh directory, 127.0.0.1 on a free port, run as
    the `postgres` OS user when the tests run as root, durability off), which a test may also
    restart at will and connect to."""

    def restart(self, *, down_seconds: float = 0) -> None:
        """`pg_ctl restart -m fast`: every connection is cut, open transactions roll back; back when it
        returns. With `down_seconds`, it stays down that long in between (stop -m fast, then start)."""
        if not down_seconds:
            self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-m", "fast", "-w", "-t", "30", "restart"
            )
            return
        self.stop(mode="fast")
        time.sleep(down_seconds)
        self.start()

    def connect(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(self.url(database), autocommit=True, connect_timeout=5)

    def create_database(self, name: str) -> str:
        super().create_database(name)
        return self.url(name)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started PrivatePostgres, stopped and deleted after the block."""
    import shutil

    server = PrivatePostgres()
    try:
        server.init()
        server.start()
        yield server
    finally:
        with suppress(Exception):
            server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)


# --- `make run` in a terminal ----------------------------------------------------------------------


class Terminal:
    """A command run in a new pseudo-terminal; what it printed is kept in `output`."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes the command
            os.chdir(cwd)
            os.execvpe(args[0], args, env)  # noqa: S606 (make, as a developer types it)
        self.output = ""
        self.status: int | None = None

    def read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:  # the terminal closed: everything in it has exited
                    return
                if not data:
                    return
                self.output += data.decode(errors="replace")

    def wait_for(self, text: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{self.output}"
            assert self.poll() is None, f"exited ({self.status}) before {text!r}:\n{self.output}"
            self.read(0.5)

    def press_ctrl_c(self) -> None:
        os.write(self.fd, b"\x03")  # the terminal turns it into SIGINT to its foreground group

    def poll(self) -> int | None:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            self.read(0.2)
        self.read(0.5)
        return self.status

    def kill(self) -> None:
        if self.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def started_groups(output: str) -> dict[str, int]:
    return {name: int(pid) for name, pid in re.findall(r"\| (\w+) started \(pid=(\d+)\)", output)}


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def make_run_env(tmp_path: Path) -> dict[str, str]:
    """newcomer_env for `make run`: WEBHOOK_URL is the .env's (its own provider)."""
    env = newcomer_env(tmp_path)
    env.pop("WEBHOOK_URL")  # the .env make writes points at its own provider
    # The .env's QCLUSTER_WORKERS=2 stays: with one worker, the one pacing the dispatch
    # window, no worker would be free to send the chunks it hands out.
    env.update(TERM="dumb")
    return env


def make_command(*args: str, env_file: Path) -> list[str]:
    """`make ARGS` with this test run's virtualenv and `env_file` as the .env."""
    venv = Path(sys.prefix)
    return [
        "make",
        "--no-print-directory",
        # The shared virtualenv is up to date: never reinstall into it from a test.
        "-o",
        f"{venv}/bin/.installed",
        f"VENV={venv}",
        f"ENV_FILE={env_file}",
        *args,
    ]


@contextmanager
def make_run(tmp_path: Path, *args: str, env_file: Path) -> Iterator[Terminal]:
    """`make run ARGS` in a terminal of its own; after the block, whatever it started is killed."""
    terminal = Terminal(make_command("run", *args, env_file=env_file), cwd=REPO_ROOT, env=make_run_env(tmp_path))
    try:
        yield terminal
    finally:
        for pgid in started_groups(terminal.output).values():
            with suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        terminal.kill()


def make_run_ready(terminal: Terminal, *, timeout: float = 120) -> None:
    """Wait until the web server, the fake provider and qcluster have all said they are up."""
    for ready in ("Quit the server with CONTROL-C", "Q Cluster", "Fake provider listening"):
        terminal.wait_for(ready, timeout=timeout)
    terminal.wait_for("running.", timeout=60)
