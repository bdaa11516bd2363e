"""python -m bench chaos: the real service under steady load and random faults, checked from outside.

It starts everything itself: a private PostgreSQL (initdb) and a private Redis, each
reached through a delaying TCP proxy, gunicorn as deployed (gunicorn.conf.py), 4
qclusters, and the fake provider with signed delivery receipts. Clients create
messages through the API at a steady rate, each with an Idempotency-Key, retrying the
same key with the same body on any error or timeout; the dispatcher sends at the pace
set through the API. Meanwhile faults come at random from a seeded RNG (the seed is
printed; `--seed` replays the same sequence of faults, though not the same timings of
the processes), one every `--fault-every` seconds on average, every kind once before
any comes again. A kind that could not strike in any of its turns (what it needs was
busy or down) is tried again after `--minutes`, for up to two minutes more:

  qcluster-sigkill        SIGKILL to a qcluster's main process (the rest of its process
                          group 2 s later, as systemd does); started again 1-5 s later
  qcluster-sigkill-group  SIGKILL to a qcluster's whole process group; started again
  qcluster-sigterm        SIGTERM to a qcluster's main process; started again once it has stopped
  qcluster-sigterm-group  SIGTERM to its whole process group (systemd, docker stop)
  web-worker-sigkill      SIGKILL to one gunicorn worker (the master starts another)
  web-worker-sigterm      SIGTERM to one gunicorn worker
  web-sigkill-group       SIGKILL to gunicorn's whole process group; started again 1-4 s later
  web-sigterm             SIGTERM to gunicorn's master (graceful); started again once it exits
  worker-sigstop          SIGSTOP to one qcluster worker process for twice the lease and more, then SIGCONT
  postgres-restart        pg_ctl stop -m fast (every connection cut), down 0-4 s, started again
  postgres-terminate      pg_terminate_backend of 1-4 random client backends
  redis-kill              SIGKILL to redis-server, started again (empty) 2-8 s later
  provider-outage         the provider answers 503 to everything for 10-30 s
  provider-timeouts       for 5-12 s the provider answers after the sender's timeout (it took the
                          message: the answer is lost), or holds scripted requests past it
  provider-5xx            for 10-20 s half of the answers are 500, 502 or 503
  provider-429            for 10-20 s 60% of the answers are 429 with Retry-After 1-3 s
  clock-fast              a qcluster restarted under faketime ten minutes fast for 20-40 s
  clock-slow              the same, ten minutes slow
  network-delay           20-150 ms each way on every connection to PostgreSQL and Redis for 10-30 s

Then the faults stop (every process up, every fault undone), the service settles, and it
checks from outside: every accepted message in a final status (none lost, none stuck),
no message delivered twice by the provider (repeats it dropped by their Idempotency-Key
are counted, each explained by an earlier attempt whose outcome the service could not
know), no request without an Idempotency-Key, no client retry made a second message,
every receipt applied, the pace never exceeded by the claims. One line of figures;
exit status 1 on any violation.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import os
import random
import re
import secrets
import signal
import sys
import threading
import time
import uuid
from base64 import b64encode
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    BenchError,
    free_port,
    http_json,
    manage,
    service_env,
    start_command,
    start_process,
    stop_process,
)
from bench.servers import DelayProxy, PrivatePostgres, PrivateRedis

DATABASE = "messaging_chaos"
CLIENT_USERNAME = "chaos-client"
LEASE_SECONDS = 6
WEBHOOK_TIMEOUT_SECONDS = 2
CLOCK_SKEW_SECONDS = 600
# After --minutes, how long faults go on for the kinds that have not struck yet (skipped each turn).
COVER_SECONDS = 120.0
# Runs `manage.py <args>` under faketime: with the monotonic clock left alone, Python's time.sleep
# fails with EINVAL under libfaketime 0.9.10 (wolfcw/libfaketime#426), so the process sleeps by
# waiting on an event instead (as tests/processes.py's faketime_command does).
FAKETIME_SLEEP_SCRIPT = """
import threading, time
time.sleep = lambda seconds: threading.Event().wait(seconds) and None
import runpy, sys
sys.argv = ["manage.py", *sys.argv[1:]]
runpy.run_path("manage.py", run_name="__main__")
"""
PROVIDER_LINE = re.compile(
    r"fakeprovider POST \S* to=\S* key=(?P<key>\S+) -> (?P<status>\d+) messageId=\S+(?P<dup> \(duplicate dropped\))?"
)
FINAL = ("sent", "failed", "cancelled", "expired")


def log(text: str) -> None:
    print(f"chaos {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


# --- the processes of the service --------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    with suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def descendants_of(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in children_of(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def signal_group(popen, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, sig)


@dataclass
class Slot:
    """One qcluster's place: its process (None while down) and whether a fault holds it."""

    index: int
    popen: object = None
    busy: bool = False
    starts: int = 0
    clock_offset: int = 0


class Service:
    def __init__(self, env: dict[str, str], logs: Path, *, qclusters: int) -> None:
        self.env = env
        self.logs = logs
        self.web_port = free_port()
        self.web = None
        self.web_starts = 0
        self.slots = [Slot(i) for i in range(qclusters)]
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start_web(self) -> None:
        self.web_starts += 1
        argv = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "gunicorn.conf.py",
            "messaging_site.wsgi:application",
            "--bind",
            f"127.0.0.1:{self.web_port}",
        ]
        self.web = start_command(argv, self.env, self.logs / f"chaos-gunicorn-{self.web_starts}.log")

    def start_qcluster(self, slot: Slot, *, clock_offset: int = 0) -> None:
        slot.starts += 1
        slot.clock_offset = clock_offset
        log_path = self.logs / f"chaos-qcluster-{slot.index}-{slot.starts}.log"
        if clock_offset:
            argv = ["faketime", "-f", f"{clock_offset:+d}", sys.executable, "-c", FAKETIME_SLEEP_SCRIPT, "qcluster"]
            slot.popen = start_command(argv, {**self.env, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}, log_path)
        else:
            slot.popen = start_process(["qcluster"], self.env, log_path)

    def running_slots(self) -> list[Slot]:
        return [s for s in self.slots if not s.busy and s.popen is not None and s.popen.poll() is None]

    def stop_all(self) -> None:
        popens = [s.popen for s in self.slots if s.popen is not None] + ([self.web] if self.web else [])
        for popen in popens:
            signal_group(popen, signal.SIGCONT)
            signal_group(popen, signal.SIGTERM)
        deadline = time.monotonic() + 40
        for popen in popens:
            with suppress(Exception):
                popen.wait(max(0.1, deadline - time.monotonic()))
        for popen in popens:
            signal_group(popen, signal.SIGKILL)


# --- the clients -------------------------------------------------------------------------------


@dataclass
class ClientFigures:
    requests: int = 0
    retries: int = 0
    accepted: dict[str, int] = field(default_factory=dict)  # Idempotency-Key -> message id
    replayed: int = 0
    gave_up: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # a 4xx other than 429: a violation


class Clients:
    """`threads` clients creating one message at a time, `rate` a second in all, through
    POST /api/messages/ with an Idempotency-Key; on an error or a timeout the same key and
    body again, after 0.5-2 s, for up to `give_up_seconds`."""

    def __init__(self, base_url: str, token: str, *, rate: float, threads: int, give_up_seconds: float) -> None:
        self.url = base_url + "/api/messages/"
        self.token = token
        self.rate = rate
        self.threads = threads
        self.give_up_seconds = give_up_seconds
        self.figures = ClientFigures()
        self.creating = threading.Event()
        self.creating.set()
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._started = 0.0
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        self._started = time.monotonic()
        for index in range(self.threads):
            thread = threading.Thread(target=self._run, name=f"client-{index}", daemon=True)
            thread.start()
            self._workers.append(thread)

    def stop_creating(self) -> None:
        self.creating.clear()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for thread in self._workers:
            thread.join(max(0.1, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._workers)

    def _run(self) -> None:
        import requests

        session = requests.Session()
        session.trust_env = False
        session.headers["Authorization"] = f"Token {self.token}"
        jitter = random.Random()
        while self.creating.is_set():
            number = next(self._numbers)
            due = self._started + number / self.rate
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            if not self.creating.is_set():
                return
            key = str(uuid.uuid4())
            body = {"recipient_phone_number": f"+9055510{number % 100_000:05d}", "content": f"chaos {number} {key}"}
            self._create(session, key, body, jitter)

    def _create(self, session, key: str, body: dict, jitter: random.Random) -> None:
        import requests

        give_up_at = time.monotonic() + self.give_up_seconds
        first = True
        while True:
            with self._lock:
                self.figures.requests += 1
                self.figures.retries += 0 if first else 1
            first = False
            try:
                response = session.post(self.url, json=body, headers={"Idempotency-Key": key}, timeout=10)
            except requests.RequestException:
                response = None
            if response is not None and response.status_code == 201:
                with self._lock:
                    self.figures.accepted[key] = response.json()["id"]
                    self.figures.replayed += response.headers.get("Idempotent-Replayed") == "true"
                return
            if response is not None and 400 <= response.status_code < 500 and response.status_code != 429:
                with self._lock:
                    self.figures.refused.append(f"{key}: {response.status_code} {response.text[:200]}")
                return
            if time.monotonic() > give_up_at:
                with self._lock:
                    self.figures.gave_up.append(key)
                return
            time.sleep(jitter.uniform(0.5, 2.0))
            if response is None:
                session.close()  # a connection that failed may be half-closed: open a fresh one


# --- faults ------------------------------------------------------------------------------------


FAULT_KINDS = (
    "qcluster-sigkill",
    "qcluster-sigkill-group",
    "qcluster-sigterm",
    "qcluster-sigterm-group",
    "web-worker-sigkill",
    "web-worker-sigterm",
    "web-sigkill-group",
    "web-sigterm",
    "worker-sigstop",
    "postgres-restart",
    "postgres-terminate",
    "redis-kill",
    "provider-outage",
    "provider-timeouts",
    "provider-5xx",
    "provider-429",
    "clock-fast",
    "clock-slow",
    "network-delay",
)
PROVIDER_FAULTS_OFF = {"error_rate": 0.0, "error_status": 500, "latency_ms": 0.0, "retry_after": 0.0, "script": []}


class Chaos:
    """Faults at random (seeded), each undone later by an action on a timeline of its own."""

    def __init__(
        self,
        *,
        rng: random.Random,
        service: Service,
        postgres: PrivatePostgres,
        redis: PrivateRedis,
        proxies: list[DelayProxy],
        provider_url: str,
        database_url: str,
    ) -> None:
        self.rng = rng
        self.service = service
        self.postgres = postgres
        self.redis = redis
        self.proxies = proxies
        self.provider_url = provider_url
        self.database_url = database_url
        self.done = Counter()
        self.skipped = Counter()
        self.history: list[str] = []
        self._deck: list[str] = []
        self._later: list[tuple[float, int, str, Callable[[], bool]]] = []
        self._order = itertools.count()
        self.provider_busy = False
        self.web_busy = False
        self.redis_busy = False
        self.delay_busy = False
        self.postgres_busy = False

    # The timeline of undoing: an action returns False to be asked again a second later.
    def later(self, seconds: float, what: str, action: Callable[[], bool]) -> None:
        heapq.heappush(self._later, (time.monotonic() + seconds, next(self._order), what, action))

    def run_due(self, *, everything: bool = False) -> None:
        while self._later and (everything or self._later[0][0] <= time.monotonic()):
            _, order, what, action = heapq.heappop(self._later)
            try:
                finished = action()
            except Exception as exc:  # a step of the harness failed: say so, try again
                log(f"undoing {what} failed: {exc!r}; again in 1 s")
                finished = False
            if not finished:
                heapq.heappush(self._later, (time.monotonic() + 1, order, what, action))
                if everything:
                    time.sleep(0.2)

    def pending(self) -> int:
        return len(self._later)

    def next_kind(self) -> str:
        if not self._deck:
            self._deck = list(FAULT_KINDS)
            self.rng.shuffle(self._deck)
        return self._deck.pop()

    def missing_kinds(self) -> list[str]:
        """The kinds that have not struck yet, in FAULT_KINDS' order."""
        return [kind for kind in FAULT_KINDS if not self.done[kind]]

    def inject(self, kind: str | None = None) -> None:
        """Inject the next kind of the deck (or `kind`, when given: then a skip leaves the deck alone)."""
        from_deck = kind is None
        kind = self.next_kind() if from_deck else kind
        # Drawn whether or not the fault can happen now, so a seed replays the same draws.
        draws = [self.rng.random() for _ in range(4)]
        try:
            described = getattr(self, "_" + kind.replace("-", "_"))(draws)
        except Exception as exc:
            described = None
            log(f"fault {kind} could not be injected: {exc!r}")
        if described is None:
            self.skipped[kind] += 1
            if from_deck:
                self._deck.insert(0, kind)  # its turn comes again at the end of this round
            log(f"fault {kind}: skipped (what it needs is busy or down)")
            return
        self.done[kind] += 1
        self.history.append(f"{time.strftime('%H:%M:%S')} {kind}: {described}")
        log(f"fault {kind}: {described}")

    @staticmethod
    def _between(draw: float, low: float, high: float) -> float:
        return low + (high - low) * draw

    def _slot(self, draw: float) -> Slot | None:
        slots = self.service.running_slots()
        return slots[int(draw * len(slots))] if slots else None

    def _restart_when_stopped(self, slot: Slot, *, after: float, clock_offset: int = 0) -> None:
        stopped_at = time.monotonic()

        def restart() -> bool:
            if slot.popen is not None and slot.popen.poll() is None:
                if time.monotonic() - stopped_at < 45:
                    return False  # still finishing its sends
                signal_group(slot.popen, signal.SIGKILL)
                return False
            signal_group(slot.popen, signal.SIGKILL)  # whatever of its group is left
            self.service.start_qcluster(slot, clock_offset=clock_offset)
            slot.busy = False
            return True

        self.later(after, f"qcluster {slot.index} start", restart)

    def _qcluster_signal(self, draws, sig: int, *, group: bool) -> str | None:
        slot = self._slot(draws[0])
        if slot is None:
            return None
        slot.busy = True
        pid = slot.popen.pid
        if group:
            signal_group(slot.popen, sig)
        else:
            os.kill(pid, sig)
            if sig == signal.SIGKILL:
                # Its sentinel and workers outlive it; the supervisor (systemd) kills what is left.
                self.later(2, f"qcluster {slot.index} rest of group", lambda p=slot.popen: signal_group(p, sig) or True)
        self._restart_when_stopped(slot, after=self._between(draws[1], 1, 5))
        return f"qcluster {slot.index} (pid {pid}{' and its group' if group else ''})"

    def _qcluster_sigkill(self, draws):
        return self._qcluster_signal(draws, signal.SIGKILL, group=False)

    def _qcluster_sigkill_group(self, draws):
        return self._qcluster_signal(draws, signal.SIGKILL, group=True)

    def _qcluster_sigterm(self, draws):
        return self._qcluster_signal(draws, signal.SIGTERM, group=False)

    def _qcluster_sigterm_group(self, draws):
        return self._qcluster_signal(draws, signal.SIGTERM, group=True)

    def _web_worker(self, draws, sig: int) -> str | None:
        web = self.service.web
        if self.web_busy or web is None or web.poll() is not None:
            return None
        workers = children_of(web.pid)
        if not workers:
            return None
        pid = workers[int(draws[0] * len(workers))]
        with suppress(ProcessLookupError):
            os.kill(pid, sig)
        return f"gunicorn worker pid {pid}"

    def _web_worker_sigkill(self, draws):
        return self._web_worker(draws, signal.SIGKILL)

    def _web_worker_sigterm(self, draws):
        return self._web_worker(draws, signal.SIGTERM)

    def _web_down(self, draws, sig: int, *, group: bool) -> str | None:
        web = self.service.web
        if self.web_busy or web is None or web.poll() is not None:
            return None
        self.web_busy = True
        if group:
            signal_group(web, sig)
        else:
            web.send_signal(sig)
        stopped_at = time.monotonic()

        def restart() -> bool:
            if web.poll() is None:
                if time.monotonic() - stopped_at < 45:
                    return False
                signal_group(web, signal.SIGKILL)
                return False
            signal_group(web, signal.SIGKILL)
            self.service.start_web()
            # No other fault strikes the web tier until it answers again: on an overloaded
            # machine a new gunicorn took a minute to boot, and a fault then kept the API down
            # for over four minutes (the clients gave up).
            self.later(1, "gunicorn answers", self._web_answers)
            return True

        self.later(self._between(draws[1], 1, 4), "gunicorn start", restart)
        return f"gunicorn pid {web.pid}{' and its group' if group else ''}"

    def _web_answers(self) -> bool:
        import urllib.request

        try:
            request = urllib.request.Request(self.service.base_url + "/healthz", headers={"Host": "127.0.0.1"})  # noqa: S310
            with urllib.request.urlopen(request, timeout=1):  # noqa: S310 - our own gunicorn
                self.web_busy = False
                return True
        except OSError:
            return False

    def _web_sigkill_group(self, draws):
        return self._web_down(draws, signal.SIGKILL, group=True)

    def _web_sigterm(self, draws):
        return self._web_down(draws, signal.SIGTERM, group=False)

    def _worker_sigstop(self, draws) -> str | None:
        slot = self._slot(draws[0])
        if slot is None:
            return None
        # The processes under its sentinel: the workers, the monitor and the pusher.
        sentinels = children_of(slot.popen.pid)
        workers = [pid for sentinel in sentinels for pid in children_of(sentinel)]
        if not workers:
            return None
        pid = workers[int(draws[1] * len(workers))]
        slot.busy = True
        os.kill(pid, signal.SIGSTOP)
        seconds = 2 * LEASE_SECONDS + self._between(draws[2], 0, 8)

        def resume() -> bool:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            slot.busy = False
            return True

        self.later(seconds, f"SIGCONT {pid}", resume)
        return f"qcluster {slot.index} process {pid} stopped for {seconds:.0f} s (lease {LEASE_SECONDS} s)"

    def _postgres_restart(self, draws) -> str | None:
        if self.postgres_busy:
            return None
        self.postgres_busy = True
        down = self._between(draws[0], 0, 4)
        self.postgres.stop(mode="fast")

        def start() -> bool:
            # On a loaded machine pg_ctl can take minutes: asked again until it answers.
            self.postgres.start()
            self.postgres_busy = False
            return True

        self.later(down, "postgres start", start)
        return f"stopped (-m fast), down {down:.1f} s"

    def _postgres_terminate(self, draws) -> str | None:
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
            pids = [
                row[0]
                for row in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND backend_type = 'client backend' ORDER BY pid"
                ).fetchall()
            ]
            if not pids:
                return None
            chosen = random.Random(draws[0]).sample(pids, min(len(pids), 1 + int(draws[1] * 4)))
            for pid in chosen:
                conn.execute("SELECT pg_terminate_backend(%s)", [pid])
        return f"terminated {len(chosen)} of {len(pids)} backends"

    def _redis_kill(self, draws) -> str | None:
        if self.redis_busy:
            return None
        self.redis_busy = True
        self.redis.kill()
        down = self._between(draws[0], 2, 8)

        def start() -> bool:
            self.redis.start()
            self.redis_busy = False
            return True

        self.later(down, "redis start", start)
        return f"killed, down {down:.1f} s"

    def _provider(self, faults: dict, seconds: float) -> None:
        self.provider_busy = True
        http_json_post(self.provider_url + "_fake/faults", faults)

        def off() -> bool:
            http_json_post(self.provider_url + "_fake/faults", PROVIDER_FAULTS_OFF)
            self.provider_busy = False
            return True

        self.later(seconds, "provider faults off", off)

    def _provider_outage(self, draws) -> str | None:
        if self.provider_busy:
            return None
        seconds = self._between(draws[0], 10, 30)
        self._provider({"error_rate": 1.0, "error_status": 503}, seconds)
        return f"503 to everything for {seconds:.0f} s"

    def _provider_timeouts(self, draws) -> str | None:
        if self.provider_busy:
            return None
        seconds = self._between(draws[0], 5, 12)
        if draws[1] < 0.5:
            latency = 1000 * (WEBHOOK_TIMEOUT_SECONDS + 0.5)
            self._provider({"latency_ms": latency}, seconds)
            return f"answers after {latency:.0f} ms (timeout {WEBHOOK_TIMEOUT_SECONDS} s) for {seconds:.0f} s"
        steps = 3 + int(draws[2] * 10)
        self._provider({"script": ["timeout"] * steps, "timeout_ms": 1000 * (WEBHOOK_TIMEOUT_SECONDS + 1)}, seconds)
        return f"{steps} requests held past the timeout"

    def _provider_5xx(self, draws) -> str | None:
        if self.provider_busy:
            return None
        seconds = self._between(draws[0], 10, 20)
        status = (500, 502, 503)[int(draws[1] * 3)]
        self._provider({"error_rate": 0.5, "error_status": status}, seconds)
        return f"half the answers {status} for {seconds:.0f} s"

    def _provider_429(self, draws) -> str | None:
        if self.provider_busy:
            return None
        seconds = self._between(draws[0], 10, 20)
        retry_after = round(self._between(draws[1], 1, 3))
        self._provider({"error_rate": 0.6, "error_status": 429, "retry_after": float(retry_after)}, seconds)
        return f"60% 429 with Retry-After {retry_after} for {seconds:.0f} s"

    def _clock(self, draws, offset: int) -> str | None:
        slot = self._slot(draws[0])
        if slot is None:
            return None
        slot.busy = True
        signal_group(slot.popen, signal.SIGTERM)
        self._restart_when_stopped(slot, after=0.5, clock_offset=offset)
        seconds = self._between(draws[1], 20, 40)

        def back_to_the_right_clock() -> bool:
            if slot.busy:  # not yet restarted with the wrong clock
                return False
            slot.busy = True
            signal_group(slot.popen, signal.SIGTERM)
            self._restart_when_stopped(slot, after=0.5)
            return True

        self.later(seconds, f"qcluster {slot.index} clock back", back_to_the_right_clock)
        return f"qcluster {slot.index} restarted {offset:+d} s off for {seconds:.0f} s"

    def _clock_fast(self, draws):
        return self._clock(draws, CLOCK_SKEW_SECONDS)

    def _clock_slow(self, draws):
        return self._clock(draws, -CLOCK_SKEW_SECONDS)

    def _network_delay(self, draws) -> str | None:
        if self.delay_busy:
            return None
        self.delay_busy = True
        delay = self._between(draws[0], 0.02, 0.15)
        seconds = self._between(draws[1], 10, 30)
        for proxy in self.proxies:
            proxy.delay_seconds = delay

        def off() -> bool:
            for proxy in self.proxies:
                proxy.delay_seconds = 0.0
            self.delay_busy = False
            return True

        self.later(seconds, "network delay off", off)
        return f"{delay * 1000:.0f} ms each way to PostgreSQL and Redis for {seconds:.0f} s"


def http_json_post(url: str, body: dict) -> object:
    import json
    import urllib.request

    request = urllib.request.Request(  # noqa: S310 - our own fake provider on 127.0.0.1
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read() or b"null")


# --- the checks --------------------------------------------------------------------------------


def most_in_any_window(times: list[float], window: float) -> int:
    """The largest number of `times` inside any half-open window [t, t + window)."""
    times = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most


def provider_requests(log_path: Path) -> tuple[Counter, Counter, int, int]:
    """From the fake provider's log: deliveries (2xx, not a dropped repeat) and dropped repeats
    per Idempotency-Key, requests without a key, all requests."""
    delivered, repeats, unkeyed, total = Counter(), Counter(), 0, 0
    for line in log_path.read_text(errors="replace").splitlines():
        match = PROVIDER_LINE.search(line)
        if not match:
            continue
        total += 1
        key = match["key"]
        if key == "-":
            unkeyed += 1
        elif match["dup"]:
            repeats[key] += 1
        elif 200 <= int(match["status"]) < 300:
            delivered[key] += 1
    return delivered, repeats, unkeyed, total


def settled(conn) -> tuple[int, int, int]:
    """Messages not final; sent ones without their receipt applied; receipts waiting for their message."""
    open_, unreceipted = conn.execute(
        "SELECT count(*) FILTER (WHERE status IN ('unsent', 'processing')),"
        " count(*) FILTER (WHERE status = 'sent' AND delivery_status = '') FROM messages_app_message"
    ).fetchone()
    waiting = conn.execute("SELECT count(*) FROM messages_app_deliveryreceipt WHERE message_id IS NULL").fetchone()[0]
    return open_, unreceipted, waiting


def check(
    conn, *, clients: ClientFigures, provider_log: Path, provider_stats: dict, batch_size: int, interval: int
) -> tuple[dict, list[str]]:
    rows = conn.execute(
        "SELECT id, uuid::text, status, content, delivery_status, extract(epoch FROM claimed_at)"
        " FROM messages_app_message"
    ).fetchall()
    by_id = {row[0]: row for row in rows}
    statuses = Counter(row[2] for row in rows)
    violations: list[str] = []

    lost = [key for key, pk in clients.accepted.items() if pk not in by_id or key not in by_id[pk][3]]
    stuck = [row[0] for row in rows if row[2] not in FINAL]
    per_key = Counter(row[3].rsplit(" ", 1)[-1] for row in rows)
    duplicated = [key for key, n in per_key.items() if n > 1]
    delivered, repeats, unkeyed, requests = provider_requests(provider_log)
    twice = [key for key, n in delivered.items() if n > 1]
    uuids = {row[1] for row in rows}
    sent_uuids = {row[1] for row in rows if row[2] == "sent"}
    unknown = [key for key in delivered if key not in uuids]
    sent_not_delivered = [key for key in sent_uuids if key not in delivered]
    # A repeat the provider dropped must follow an attempt whose outcome the service could not
    # know (a timeout, a broken connection, a 5xx, a worker lost mid-send): at most one repeat per
    # such attempt. During an outage such an attempt is `deferred` (it spends no attempt), with
    # the same error; a deferral without a request (circuit open) or after a 429 explains none.
    unknown_outcomes = dict(
        conn.execute(
            "SELECT m.uuid::text, count(*) FROM messages_app_deliveryattempt a JOIN messages_app_message m"
            " ON m.id = a.message_id WHERE a.outcome IN ('retry', 'lease_expired') OR (a.outcome = 'deferred'"
            " AND (a.http_status >= 500 OR a.error LIKE '%timed out after%' OR a.error LIKE '%connection to the"
            " provider broke%')) GROUP BY m.uuid"
        ).fetchall()
    )
    unexplained = {key: n for key, n in repeats.items() if n > unknown_outcomes.get(key, 0)}
    unreceipted = [row[0] for row in rows if row[2] == "sent" and not row[4]]
    waiting_receipts = conn.execute(
        "SELECT count(*) FROM messages_app_deliveryreceipt WHERE message_id IS NULL"
    ).fetchone()[0]
    claims = [float(row[5]) for row in rows if row[5] is not None]  # extract() gives numeric: Decimal
    most_claimed = most_in_any_window(claims, interval)
    gaps = claim_gaps(claims, longer_than=CLAIM_GAP_SECONDS)

    for name, count, examples in (
        ("lost (accepted, not in the database)", len(lost), lost),
        ("stuck (not final after settling)", len(stuck), stuck),
        ("duplicate messages from client retries", len(duplicated), duplicated),
        ("delivered twice by the provider", len(twice), twice),
        ("requests without an Idempotency-Key", unkeyed, []),
        ("repeats not explained by an unknown outcome", len(unexplained), list(unexplained)),
        ("delivered, not a message of ours", len(unknown), unknown),
        ("sent, never delivered by the provider", len(sent_not_delivered), sent_not_delivered),
        ("sent without its receipt applied", len(unreceipted), unreceipted),
        ("receipts waiting for their message", waiting_receipts, []),
        ("client requests refused with a 4xx", len(clients.refused), clients.refused),
        ("client gave up (never accepted)", len(clients.gave_up), clients.gave_up),
    ):
        if count:
            violations.append(f"{count} {name}" + (f" (e.g. {', '.join(map(str, examples[:3]))})" if examples else ""))
    if most_claimed > batch_size:
        violations.append(f"pace exceeded: {most_claimed} claimed in {interval} s (pace {batch_size})")
    figures = {
        "accepted": len(clients.accepted),
        "messages": len(rows),
        "statuses": dict(statuses),
        "lost": len(lost),
        "stuck": len(stuck),
        "duplicate_messages_from_client_retries": len(duplicated),
        "client_requests": clients.requests,
        "client_retries": clients.retries,
        "client_replays": clients.replayed,
        "client_gave_up": len(clients.gave_up),
        "provider_requests": requests,
        "delivered": sum(delivered.values()),
        "delivered_twice": len(twice),
        "unkeyed_requests": unkeyed,
        "keyed_repeats_dropped": sum(repeats.values()),
        "keyed_repeats_unexplained": len(unexplained),
        "receipts_applied": sum(1 for row in rows if row[2] == "sent" and row[4]),
        "receipts_missing": len(unreceipted),
        "receipts_waiting": waiting_receipts,
        "receipts_given_up_by_provider": provider_stats.get("receipts_failed"),
        "most_claimed_in_any_interval": most_claimed,
        # Messages are created every fraction of a second, so a long gap between two claims
        # means nothing paced (no dispatch window, the database down): a figure, not a violation.
        "claim_gaps_over_10s": len(gaps),
        "claim_gaps_over_10s_seconds": round(sum(gaps), 1),
        "longest_claim_gap_s": round(max(gaps, default=0.0), 1),
        "claims_span_s": round(max(claims) - min(claims), 1) if claims else 0.0,
    }
    return figures, violations


# A gap between two claims (on the database's clock) longer than this is counted: at the run's
# rates a window that paces claims every second or two.
CLAIM_GAP_SECONDS = 10.0


def claim_gaps(times: list[float], *, longer_than: float) -> list[float]:
    """The gaps longer than `longer_than` seconds between consecutive `times` (each message's
    last claim: a message claimed again counts at its later claim only)."""
    ordered = sorted(times)
    return [b - a for a, b in itertools.pairwise(ordered) if b - a > longer_than]


# --- the run -----------------------------------------------------------------------------------


def api_token(env: dict[str, str]) -> str:
    script = (
        "from django.contrib.auth import get_user_model;"
        "from rest_framework.authtoken.models import Token;"
        f"u, _ = get_user_model().objects.get_or_create(username={CLIENT_USERNAME!r},"
        " defaults={'is_staff': True, 'is_superuser': True});"
        "print('TOKEN', Token.objects.get_or_create(user=u)[0].key)"
    )
    match = re.search(r"^TOKEN (\w+)$", manage(env, "shell", "-c", script), re.MULTILINE)
    if not match:
        raise BenchError("could not make the chaos client's API token")
    return match.group(1)


def wait_http(url: str, popen, what: str, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen is not None and popen.poll() is not None:
            raise BenchError(f"{what} exited ({popen.returncode}) while starting; see the logs")
        with suppress(OSError):
            request = urllib.request.Request(url, headers={"Host": "127.0.0.1"})  # noqa: S310 - ours
            with urllib.request.urlopen(request, timeout=2):  # noqa: S310
                return
        time.sleep(0.2)
    raise BenchError(f"{what} did not answer {url} within {timeout:g} s")


def wait_qclusters_running(service: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for slot in service.slots:
        path = service.logs / f"chaos-qcluster-{slot.index}-{slot.starts}.log"
        while "running." not in (path.read_text(errors="replace") if path.exists() else ""):
            if slot.popen.poll() is not None:
                raise BenchError(f"qcluster {slot.index} exited while starting; see {path}")
            if time.monotonic() > deadline:
                raise BenchError(f"qcluster {slot.index} did not start within {timeout:g} s; see {path}")
            time.sleep(0.2)


def chaos(options: argparse.Namespace) -> dict:
    if options.minutes <= 0 or options.rate <= 0 or options.batch_size < 1 or options.interval < 1:
        raise BenchError("--minutes, --rate, --batch-size and --interval must be positive")
    seed = options.seed if options.seed is not None else secrets.randbelow(2**31)
    log(f"seed {seed} (replay: python -m bench chaos --minutes {options.minutes:g} --seed {seed})")
    rng = random.Random(seed)
    logs = Path(options.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with ExitStack() as stack:
        postgres = PrivatePostgres()
        stack.callback(postgres.remove)
        postgres.init()
        postgres.start()
        postgres.create_database(DATABASE)
        redis = PrivateRedis(postgres.directory)
        redis.start()
        stack.callback(redis.kill)
        proxies = [DelayProxy(postgres.port), DelayProxy(redis.port)]
        for proxy in proxies:
            proxy.start()
            stack.callback(proxy.stop)
        log(f"PostgreSQL on {postgres.port} (proxy {proxies[0].port}), Redis on {redis.port} (proxy {proxies[1].port})")

        secret = "whsec_" + b64encode(secrets.token_bytes(32)).decode()
        provider_port = free_port()
        provider_url = f"http://127.0.0.1:{provider_port}/"
        env = service_env(
            DATABASE_URL=postgres.url(DATABASE, port=proxies[0].port),
            REDIS_URL=f"redis://127.0.0.1:{proxies[1].port}/0",
            DISPATCH_PROVIDER_BACKEND="webhook",
            WEBHOOK_URL=provider_url,
            WEBHOOK_TIMEOUT_SECONDS=str(WEBHOOK_TIMEOUT_SECONDS),
            RECEIPT_WEBHOOK_SECRET=secret,
            ALLOWED_HOSTS="127.0.0.1,localhost",
            THROTTLE_USER_RATE="1000000/min",
            LOG_LEVEL=options.log_level,
            QCLUSTER_WORKERS=str(options.workers),
            WEB_WORKERS=str(options.web_workers),
            DISPATCH_LEASE_SECONDS=str(LEASE_SECONDS),
            DISPATCH_MAX_ATTEMPTS="10",
            DISPATCH_RETRY_BASE_SECONDS="0.5",
            DISPATCH_RETRY_MAX_SECONDS="5",
            PROVIDER_CIRCUIT_COOLOFF_SECONDS="5",
            DATABASE_CONNECT_TIMEOUT_SECONDS="5",
        )
        for name in ("BENCH_DATABASE_URL", "BENCH_REDIS_URL"):
            env.pop(name, None)
        manage(env, "migrate", "--no-input", "-v0")
        token = api_token(env)

        # Receipts are switched on once gunicorn's port is known; the secret signs them.
        provider = start_process(
            ["fakeprovider", "--port", str(provider_port), "--receipt-secret", secret],
            env,
            logs / "chaos-fakeprovider.log",
        )
        stack.callback(stop_process, provider)
        # Generous waits: on a machine loaded far past its cores, starting takes minutes.
        wait_http(provider_url + "_fake/stats", provider, "the fake provider", 120)

        service = Service(env, logs, qclusters=options.qclusters)
        stack.callback(service.stop_all)
        http_json_post(
            provider_url + "_fake/faults",
            {
                "receipts_url": f"{service.base_url}/api/receipts/",
                "receipt_delay_ms": 500.0,
                # A real provider tries a receipt again for hours; the web tier is down for seconds here.
                "receipt_retries": 600,
            },
        )
        service.start_web()
        wait_http(service.base_url + "/healthz", service.web, "gunicorn", 300)
        for slot in service.slots:
            service.start_qcluster(slot)
        wait_qclusters_running(service, 300)
        from bench.cluster import Api

        api = Api(service.base_url, token)
        api.call("PATCH", "/api/dispatcher/", {"batch_size": options.batch_size, "interval_seconds": options.interval})
        api.call("POST", "/api/dispatcher/start/")
        log(
            f"service up in {time.monotonic() - started:.0f} s: gunicorn {service.base_url}, "
            f"{options.qclusters} qclusters, pace {options.batch_size} every {options.interval} s; "
            f"{options.rate:g} messages/s for {options.minutes:g} min, a fault every {options.fault_every:g} s"
        )

        clients = Clients(
            service.base_url, token, rate=options.rate, threads=options.clients, give_up_seconds=options.settle_seconds
        )
        clients.start()
        harness = Chaos(
            rng=rng,
            service=service,
            postgres=postgres,
            redis=redis,
            proxies=proxies,
            provider_url=provider_url,
            database_url=postgres.url(DATABASE),
        )
        chaos_ends = time.monotonic() + options.minutes * 60
        next_fault = time.monotonic() + rng.uniform(0.5, 1.5) * options.fault_every
        last_report = time.monotonic()
        while time.monotonic() < chaos_ends:
            harness.run_due()
            if time.monotonic() >= next_fault:
                harness.inject()
                next_fault = time.monotonic() + rng.uniform(0.5, 1.5) * options.fault_every
            if time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                log(f"{len(clients.figures.accepted)} accepted, {sum(harness.done.values())} faults so far")
            time.sleep(0.1)
        # Every kind strikes at least once a run: one skipped in its turns (what it needs was busy
        # or down: a gunicorn still booting on a loaded machine) is tried again after the time,
        # alone, for at most COVER_SECONDS more.
        cover_ends = time.monotonic() + COVER_SECONDS
        if harness.missing_kinds():
            log(f"faults go on until every kind has struck (missing: {', '.join(harness.missing_kinds())})")
        while harness.missing_kinds() and time.monotonic() < cover_ends:
            harness.run_due()
            if time.monotonic() >= next_fault:
                harness.inject(harness.missing_kinds()[0])
                next_fault = time.monotonic() + options.fault_every / 2
            time.sleep(0.1)

        log(f"faults stop: undoing the {harness.pending()} still in force")
        clients.stop_creating()
        harness.run_due(everything=True)
        wait_http(service.base_url + "/healthz", service.web, "gunicorn", 300)
        settle_started = time.monotonic()
        import psycopg

        with psycopg.connect(postgres.url(DATABASE), autocommit=True) as conn:
            clients.join(options.settle_seconds)
            # The faults leave a backlog (a long run's can be thousands): the pace sends it at
            # batch_size every interval, and the settling time is on top of that.
            backlog = settled(conn)[0]
            settle_limit = options.settle_seconds + backlog * options.interval / options.batch_size
            log(f"settling: {backlog} messages not final; {settle_limit:.0f} s at most")
            while True:
                open_, unreceipted, waiting = settled(conn)
                if not open_ and not unreceipted and not waiting:
                    break
                if time.monotonic() - settle_started > settle_limit:
                    log(f"not settled after {settle_limit:.0f} s: {open_} not final, {unreceipted} receipts")
                    break
                time.sleep(1)
            settle_seconds = time.monotonic() - settle_started
            stats = http_json("GET", provider_url + "_fake/stats")
            stop_process(provider)  # its log is complete once it has stopped
            figures, violations = check(
                conn,
                clients=clients.figures,
                provider_log=logs / "chaos-fakeprovider.log",
                provider_stats=stats,
                batch_size=options.batch_size,
                interval=options.interval,
            )
    (logs / "chaos-faults.log").write_text(f"seed {seed}\n" + "".join(f"{entry}\n" for entry in harness.history))
    faults = dict(sorted(harness.done.items()))
    line = (
        f"chaos seed {seed}: {options.minutes:g} min, {sum(faults.values())} faults ({len(faults)} kinds), "
        f"{figures['accepted']} accepted of {figures['accepted'] + figures['client_gave_up']} created "
        f"({figures['client_retries']} client retries, {figures['client_replays']} replayed), "
        f"{figures['statuses'].get('sent', 0)} sent, {figures['statuses'].get('failed', 0)} failed; "
        f"lost {figures['lost']}, stuck {figures['stuck']}, delivered twice {figures['delivered_twice']}, "
        f"unkeyed {figures['unkeyed_requests']}, keyed repeats dropped {figures['keyed_repeats_dropped']} "
        f"(unexplained {figures['keyed_repeats_unexplained']}), duplicate messages "
        f"{figures['duplicate_messages_from_client_retries']}, receipts applied {figures['receipts_applied']} "
        f"(missing {figures['receipts_missing']}), most claimed in any {options.interval} s "
        f"{figures['most_claimed_in_any_interval']} (pace {options.batch_size}); no claim for over 10 s "
        f"{figures['claim_gaps_over_10s']} times, {figures['claim_gaps_over_10s_seconds']:g} s of "
        f"{figures['claims_span_s']:g} (longest {figures['longest_claim_gap_s']:g} s); "
        f"settled in {settle_seconds:.0f} s: " + ("OK" if not violations else "VIOLATIONS: " + "; ".join(violations))
    )
    return {
        "ok": not violations,
        "line": line,
        "summary": line,
        "seed": seed,
        "minutes": options.minutes,
        "faults": faults,
        "faults_skipped": dict(sorted(harness.skipped.items())),
        "violations": violations,
        "settle_seconds": round(settle_seconds, 1),
        "backlog_when_faults_stopped": backlog,
        "figures": figures,
        "fault_history": str(logs / "chaos-faults.log"),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=3.0, help="how long faults are injected")
    parser.add_argument("--seed", type=int, default=None, help="the faults' RNG seed (default: a random one, printed)")
    parser.add_argument("--fault-every", type=float, default=8.0, help="mean seconds between two faults")
    parser.add_argument("--rate", type=float, default=4.0, help="messages created a second through the API")
    parser.add_argument("--clients", type=int, default=4, help="client threads creating them")
    parser.add_argument("--batch-size", type=int, default=20, help="the pace: N ...")
    parser.add_argument("--interval", type=int, default=2, help="... every T seconds")
    parser.add_argument("--qclusters", type=int, default=4, help="qcluster processes")
    parser.add_argument("--workers", type=int, default=2, help="QCLUSTER_WORKERS")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn workers (WEB_WORKERS)")
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=240,
        help="the most the service may take to settle, on top of what the pace needs for the backlog",
    )
    parser.add_argument("--log-level", default="INFO", help="LOG_LEVEL of the service's processes")
