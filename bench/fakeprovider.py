"""`python -m bench fakeprovider`: how many requests a second the fake provider answers,
next to a minimal aiohttp server that only answers 202 (devtools/fakeprovider/stub.py).

The fake provider must not be what limits `bench throughput`; this says how
close it comes to the least any aiohttp server can do. Each round starts the
stub and the real `manage.py fakeprovider` (logging every request, as always)
one after the other and loads each with wrk: POSTs of a message, each with a new
Idempotency-Key, over kept-alive connections. The order alternates between
rounds and the medians are compared: on a shared machine one run can be off by
a third. With two or more cores the server is pinned to one core and wrk to
another (taskset), so that they do not take turns on one. Needs `wrk`; uses no
database.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO_ROOT, BenchError, free_port, median, service_env

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"to": "+905551112233", "content": "Insider - Project"}'
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = string.format("%d-%d", counter, math.random(1, 1000000000))
  return wrk.format()
end
"""
SERVERS = {
    "stub": lambda port: [sys.executable, "-m", "devtools.fakeprovider.stub", "--port", str(port)],
    "fakeprovider": lambda port: [sys.executable, "manage.py", "fakeprovider", "--port", str(port)],
}


def fakeprovider(options: argparse.Namespace) -> dict:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (apt-get install wrk)")
    cores = _cores()
    logs = Path(options.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    wrk_script = logs / "fakeprovider-post.lua"
    wrk_script.write_text(WRK_SCRIPT)
    runs: dict[str, list[float]] = {name: [] for name in SERVERS}
    for round_number in range(options.rounds):
        order = list(SERVERS) if round_number % 2 == 0 else list(reversed(SERVERS))
        for name in order:
            rate = _requests_per_second(name, options, wrk_script, logs / f"fakeprovider-rate-{name}.log", cores)
            runs[name].append(rate)
            print(f"  round {round_number + 1}: {name} {rate:,.0f} requests/s", file=sys.stderr, flush=True)
    medians = {name: median(rates) for name, rates in runs.items()}
    ratio = round(medians["fakeprovider"] / medians["stub"], 3)
    return {
        "summary": (
            f"fake provider {medians['fakeprovider']:,.0f} requests/s, "
            f"minimal aiohttp stub {medians['stub']:,.0f} requests/s: {ratio}x (medians of {options.rounds} runs)"
        ),
        "requests_per_s": {name: round(value) for name, value in medians.items()},
        "fakeprovider_over_stub": ratio,
        "runs": {name: [round(rate) for rate in rates] for name, rates in runs.items()},
        "seconds": options.seconds,
        "connections": options.connections,
        "pinned_to_cores": cores is not None,
    }


def _cores() -> tuple[str, str] | None:
    """(the server's core, wrk's core), or None where they cannot be pinned apart."""
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return None
    return ("1", "0")


def _requests_per_second(
    name: str, options: argparse.Namespace, wrk_script: Path, log_path: Path, cores: tuple[str, str] | None
) -> float:
    port = free_port()
    server_pin, wrk_pin = (["taskset", "-c", cores[0]], ["taskset", "-c", cores[1]]) if cores else ([], [])
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [*server_pin, *SERVERS[name](port)],
            cwd=REPO_ROOT,
            env=service_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_listening(port, server)
        wrk = subprocess.run(
            [
                *wrk_pin,
                "wrk",
                "-t1",
                f"-c{options.connections}",
                f"-d{options.seconds:g}s",
                "-s",
                str(wrk_script),
                f"http://127.0.0.1:{port}/",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=options.seconds + 60,
        )
    finally:
        server.terminate()
        server.wait(30)
    found = re.search(r"Requests/sec:\s+([\d.]+)", wrk.stdout)
    if wrk.returncode != 0 or not found:
        raise BenchError(f"wrk against the {name} failed:\n{wrk.stdout}{wrk.stderr}")
    if "Non-2xx" in wrk.stdout or "Socket errors" in wrk.stdout:
        raise BenchError(f"the {name} did not answer every request with 2xx:\n{wrk.stdout}")
    return float(found.group(1))


def _wait_listening(port: int, server: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BenchError(f"the server exited ({server.returncode}) before listening; see --log-dir")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"nothing listened on port {port} within {timeout} s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each server, alternating")
    parser.add_argument("--connections", type=int, default=50, help="wrk's kept-alive connections")
