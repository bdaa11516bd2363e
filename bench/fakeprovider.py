"""`python -m bench fakeprovider`: how many requests a second the fake provider answers,
next to a minimal aiohttp server that only answers 202 (devtools/fakeprovider/stub.py).

The fake provider must not be what limits `bench throughput`; this says how
close it comes to the least any aiohttp server can do. Both are loaded by wrk:
POSTs of a message, each with a new Idempotency-Key, over kept-alive
connections; the fake provider is the real `manage.py fakeprovider`, logging
every request as always. Each round measures three ways:

- alone: the stub, then the fake provider (the order alternates between
  rounds), each with the server's core to itself;
- side by side: both on the same core at once, each loaded by its own wrk.
  The kernel gives them equal shares of the core, so the ratio of their rates
  is the ratio of their costs per request, and other work on the machine
  slows both alike. On a shared machine one solo run can be off by a third;
  the side-by-side ratio moves by a few per cent.

With two cores or more the servers run on core 1 and wrk on core 0 (taskset).
Needs `wrk`; uses no database or Redis.
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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
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


class Load:
    """wrk's settings, and the cores the servers and wrk are pinned to (None: not pinned)."""

    def __init__(self, options: argparse.Namespace, logs: Path) -> None:
        self.seconds = options.seconds
        self.connections = options.connections
        self.logs = logs
        self.script = logs / "fakeprovider-post.lua"
        self.script.write_text(WRK_SCRIPT)
        pinnable = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
        self.server_pin = ["taskset", "-c", "1"] if pinnable else []
        self.wrk_pin = ["taskset", "-c", "0"] if pinnable else []

    def start_wrk(self, port: int) -> subprocess.Popen:
        return subprocess.Popen(
            [
                *self.wrk_pin,
                "wrk",
                "-t1",
                f"-c{self.connections}",
                f"-d{self.seconds:g}s",
                "-s",
                str(self.script),
                f"http://127.0.0.1:{port}/",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def requests_per_second(self, name: str, wrk: subprocess.Popen) -> float:
        output, _ = wrk.communicate(timeout=self.seconds + 60)
        found = re.search(r"Requests/sec:\s+([\d.]+)", output)
        if wrk.returncode != 0 or not found:
            raise BenchError(f"wrk against the {name} failed:\n{output}")
        if "Non-2xx" in output or "Socket errors" in output:
            raise BenchError(f"the {name} did not answer every request with 2xx:\n{output}")
        return float(found.group(1))


@contextmanager
def serving(name: str, load: Load) -> Iterator[int]:
    """The server `name` listening on a free port, which it yields; stopped after."""
    port = free_port()
    with open(load.logs / f"fakeprovider-bench-{name}.log", "wb") as log:
        server = subprocess.Popen(
            [*load.server_pin, *SERVERS[name](port)],
            cwd=REPO_ROOT,
            env=service_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_listening(port, server)
        yield port
    finally:
        server.terminate()
        server.wait(30)


def alone(name: str, load: Load) -> float:
    with serving(name, load) as port:
        return load.requests_per_second(name, load.start_wrk(port))


def side_by_side(load: Load) -> dict[str, float]:
    with ExitStack() as stack:
        ports = {name: stack.enter_context(serving(name, load)) for name in SERVERS}
        wrks = {name: load.start_wrk(port) for name, port in ports.items()}
        return {name: load.requests_per_second(name, wrk) for name, wrk in wrks.items()}


def fakeprovider(options: argparse.Namespace) -> dict:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (apt-get install wrk)")
    logs = Path(options.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    load = Load(options, logs)
    solo: dict[str, list[float]] = {name: [] for name in SERVERS}
    paired: list[dict[str, float]] = []
    for round_number in range(options.rounds):
        order = list(SERVERS) if round_number % 2 == 0 else list(reversed(SERVERS))
        for name in order:
            solo[name].append(alone(name, load))
        paired.append(side_by_side(load))
        print(
            f"  round {round_number + 1}: alone {', '.join(f'{n} {r[-1]:,.0f}/s' for n, r in solo.items())}; "
            f"side by side {', '.join(f'{n} {r:,.0f}/s' for n, r in paired[-1].items())}",
            file=sys.stderr,
            flush=True,
        )
    solo_medians = {name: median(rates) for name, rates in solo.items()}
    solo_ratio = round(solo_medians["fakeprovider"] / solo_medians["stub"], 3)
    paired_ratio = round(median([pair["fakeprovider"] / pair["stub"] for pair in paired]), 3)
    return {
        "summary": (
            f"alone: fake provider {solo_medians['fakeprovider']:,.0f} requests/s, minimal aiohttp stub "
            f"{solo_medians['stub']:,.0f} requests/s ({solo_ratio}x); side by side on one core: {paired_ratio}x "
            f"(medians of {options.rounds} rounds)"
        ),
        "requests_per_s_alone": {name: round(value) for name, value in solo_medians.items()},
        "fakeprovider_over_stub_alone": solo_ratio,
        "fakeprovider_over_stub_side_by_side": paired_ratio,
        "runs_alone": {name: [round(rate) for rate in rates] for name, rates in solo.items()},
        "runs_side_by_side": [{name: round(rate) for name, rate in pair.items()} for pair in paired],
        "seconds": options.seconds,
        "connections": options.connections,
        "pinned_to_cores": bool(load.server_pin),
    }


def _wait_listening(port: int, server: subprocess.Popen, timeout: float = 60) -> None:
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
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the three measurements")
    parser.add_argument("--connections", type=int, default=50, help="wrk's kept-alive connections")
