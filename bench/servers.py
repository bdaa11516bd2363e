"""Servers a benchmark owns and may break: a private PostgreSQL (initdb in a temporary
directory), a private Redis, and a TCP proxy that delays what goes through it.

Never the shared servers: a chaos run restarts and kills these at will. PostgreSQL
refuses to run as root, so when the benchmark runs as root its commands run as the
`postgres` OS user (`runuser`), in a directory that user owns. The fault tests' server
(tests/processes.py) is this PrivatePostgres, with a restart of its own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path

from bench.common import BenchError, free_port


class PrivatePostgres:
    """PostgreSQL on 127.0.0.1 on a free port, its data in a fresh directory, thrown away after
    (durability off: fsync, synchronous_commit, full_page_writes)."""

    BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))

    def __init__(self, *, port: int | None = None, max_connections: int = 200) -> None:
        if not (self.BIN / "initdb").exists():
            raise BenchError(f"no initdb in {self.BIN}: install PostgreSQL's server (or set PG_BIN)")
        self.directory = Path(tempfile.mkdtemp(prefix="bench-postgres-"))
        self.data = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        self.port = port or free_port()
        self.max_connections = max_connections
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        os.chmod(self.directory, 0o700)

    def _run(self, program: str, *args: str, timeout: float = 60) -> None:
        command = [str(self.BIN / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"{program} {' '.join(args)} failed:\n{done.stdout}\n{self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        if self.running():
            return
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
            f" -c max_connections={self.max_connections} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            "120",
            "start",
            timeout=150,
        )

    def running(self) -> bool:
        """Whether the server is up and takes connections (pg_isready)."""
        command = [str(self.BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "5"]
        return (
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False).returncode == 0
        )

    def stop(self, *, mode: str = "immediate") -> None:
        """`pg_ctl stop -m <mode>`: `fast` cuts every connection and rolls back open transactions."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "120", "stop", timeout=150)

    def remove(self) -> None:
        with suppress(Exception):
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def url(self, database: str = "postgres", *, port: int | None = None) -> str:
        return f"postgres://postgres@127.0.0.1:{port or self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')


class PrivateRedis:
    """redis-server on 127.0.0.1 on a free port, without persistence: killed and started
    again, it comes back empty, as a Redis without persistence does."""

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.popen: subprocess.Popen | None = None
        self.log_path = directory / f"redis-{self.port}.log"

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, timeout: float = 15) -> None:
        if self.running():
            return
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with suppress(redis.RedisError):
                if redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1).ping():
                    return
            time.sleep(0.1)
        raise BenchError(f"redis-server on port {self.port} did not answer within {timeout:g} s; see {self.log_path}")

    def kill(self) -> None:
        if self.running():
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)


class DelayProxy:
    """A TCP proxy from a port of its own to `target_port`, in a thread of this process, that
    holds every chunk of data `delay_seconds` (each way) before passing it on: network delay
    for the processes that connect through it, and for nobody else on the machine (tc netem on
    the loopback would slow every process on the host down)."""

    def __init__(self, target_port: int, *, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.delay_seconds = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"delay-proxy-{self.port}", daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", self.port), self._loop
        ).result(10)

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()  # the server is down: the client sees its connection refused, as it would
            return
        await asyncio.gather(
            self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer), return_exceptions=True
        )
        for writer in (client_writer, server_writer):
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, data = await chunks.get()
                if not data:
                    break
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            with suppress(OSError):
                writer.write_eof()

        forwarding = asyncio.create_task(forward())
        try:
            while data := await reader.read(65536):
                chunks.put_nowait((loop.time() + self.delay_seconds, data))
        except OSError:
            pass
        finally:
            chunks.put_nowait((0.0, b""))
            with suppress(OSError):
                await forwarding
            writer.close()
