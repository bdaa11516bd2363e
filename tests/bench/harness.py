"""Running `python -m bench` from the tests: a database and a Redis db of the benchmarks'
own (never the test suite's), one test run at a time on them, and the JSON result back.

The defaults are `messaging_bench_test` and Redis db 12; set BENCH_TEST_DATABASE_URL and
BENCH_TEST_REDIS_URL to give a run others of its own (two checkouts on one machine).
A Redis db the test suite uses itself (REDIS_URL) will not do: the suite stays
connected to it, and a benchmark refuses a db someone else uses.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_ENV = {
    "BENCH_DATABASE_URL": os.environ.get(
        "BENCH_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/messaging_bench_test"
    ),
    "BENCH_REDIS_URL": os.environ.get("BENCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/12"),
}
LOCK_PATH = Path(f"/tmp/messaging-bench-test-{urlsplit(BENCH_ENV['BENCH_DATABASE_URL']).path.lstrip('/')}.lock")


@contextmanager
def bench_lock(wait: float = 120):
    """Hold the lock while the benchmarks run: another test run waits instead of clashing."""
    with open(LOCK_PATH, "a") as handle:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another test run holds {LOCK_PATH}") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_bench(log_dir: Path, *args: str, timeout: float = 60, exit_codes: tuple[int, ...] = (0,)) -> dict:
    """`python -m bench <args>` as a subprocess; fails with its output and logs unless it exits
    with one of `exit_codes` (a check that did not pass exits 1, with its result printed)."""
    env = dict(os.environ, **BENCH_ENV)
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
