"""Running `python -m bench` from the tests: databases and Redis dbs of the benchmarks'
own (never the test suite's), each used by one test at a time, and the JSON result back.

The benchmarks' tests run BENCH_TEST_SLOTS at a time (default 2), each slot with its own
database and Redis db: `messaging_bench_test` with Redis db 12, then `messaging_bench_test_2`
with db 10, and so on (a db 2 lower each; the suite's xdist workers take the odd ones). A
file lock per slot keeps two tests, of this run or of another on the machine, off one slot.
Set BENCH_TEST_DATABASE_URL and BENCH_TEST_REDIS_URL to move the first slot (two checkouts
on one machine). A Redis db the test suite uses itself (REDIS_URL) will not do: the suite
stays connected to it, and a benchmark refuses a db someone else uses.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parents[2]
FIRST_SLOT_DATABASE_URL = os.environ.get(
    "BENCH_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/messaging_bench_test"
)
FIRST_SLOT_REDIS_URL = os.environ.get("BENCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/12")
# More slots than cores' worth of benchmarks only slows each down past its timeout.
SLOTS = max(1, int(os.environ.get("BENCH_TEST_SLOTS", "2")))


def slot_env(slot: int) -> dict[str, str]:
    """The BENCH_DATABASE_URL and BENCH_REDIS_URL of slot `slot` (0 is the first)."""
    database, redis = urlsplit(FIRST_SLOT_DATABASE_URL), urlsplit(FIRST_SLOT_REDIS_URL)
    redis_db = int(redis.path.strip("/") or 0) - 2 * slot
    if redis_db < 0:
        raise ValueError(f"BENCH_TEST_REDIS_URL {FIRST_SLOT_REDIS_URL!r} leaves no Redis db for slot {slot + 1}")
    return {
        "BENCH_DATABASE_URL": urlunsplit(database._replace(path=database.path + (f"_{slot + 1}" if slot else ""))),
        "BENCH_REDIS_URL": urlunsplit(redis._replace(path=f"/{redis_db}")),
    }


def _lock_path(env: dict[str, str]) -> Path:
    return Path(f"/tmp/messaging-bench-test-{urlsplit(env['BENCH_DATABASE_URL']).path.lstrip('/')}.lock")


# The slot this process's test holds (bench_lock), which run_bench runs the benchmark in.
_held_slot_env: dict[str, str] | None = None


@contextmanager
def bench_lock(wait: float = 120):
    """Hold the first free slot while the benchmark runs: another test, of this run or another,
    takes another slot or waits instead of clashing."""
    global _held_slot_env
    envs = [slot_env(slot) for slot in range(SLOTS)]
    deadline = time.monotonic() + wait
    with ExitStack() as stack:
        handles = [stack.enter_context(open(_lock_path(env), "a")) for env in envs]
        while True:
            for env, handle in zip(envs, handles, strict=True):
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                try:
                    _held_slot_env = env
                    yield
                finally:
                    _held_slot_env = None
                    fcntl.flock(handle, fcntl.LOCK_UN)
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"other tests hold every benchmark slot ({SLOTS}: {_lock_path(envs[0])}, ...)")
            time.sleep(0.5)


def run_bench(log_dir: Path, *args: str, timeout: float = 60, exit_codes: tuple[int, ...] = (0,)) -> dict:
    """`python -m bench <args>` as a subprocess; fails with its output and logs unless it exits
    with one of `exit_codes` (a check that did not pass exits 1, with its result printed)."""
    env = dict(os.environ, **(_held_slot_env or slot_env(0)))
    with subprocess.Popen(
        [sys.executable, "-m", "bench", *args, "--log-dir", str(log_dir)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as popen:
        try:
            stdout, stderr = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # SIGTERM first: the benchmark then stops the processes it started.
            popen.terminate()
            try:
                stdout, stderr = popen.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                popen.kill()
                stdout, stderr = popen.communicate()
            stderr += f"\n(timed out after {timeout:g} s)"
    done = subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)
    logs = "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(log_dir.glob("*.log")))
    assert done.returncode in exit_codes, (
        f"exit {done.returncode}\n{done.stderr[-5000:]}\n{done.stdout[-3000:]}\n{logs}"
    )
    # `bench chaos` prints its one line of figures after the JSON.
    return json.loads(done.stdout[: done.stdout.rindex("}") + 1])
