"""`python -m bench cluster`: the paced mode as a user runs it, against a lean
reference measured in the same run.

One gunicorn (the real `messaging_site.wsgi`) serves the API for the whole
command. Each *phase* then starts from empty tables: it starts a provider (the
real fake provider, or bench/stub_provider.py), queues N messages through
`POST /api/messages/bulk/`, and sends them:

- `cluster`: K `manage.py qcluster` processes, the pace set through the API
  (`PATCH /api/dispatcher/`, then `POST /api/dispatcher/start/`);
- `cluster-compare`: the same with another K (1 by default), for the scaling ratio;
- `cluster-latency`: the same K with a slow provider (50 ms by default);
- `cluster-opt-outs` (only when named in --phases): the same K with --opt-outs numbers
  opted out (none of them a recipient), loaded in one statement before the messages are
  queued, so that every chunk's consent check looks among them;
- `baseline-fakeprovider`, `baseline-stub`: bench/baseline.py (one asyncio
  process doing the same claim, send, Redis write and mark-sent) against the
  fake provider, then against the aiohttp stub.

The ratios between phases come from the same run (and, with --runs, from the
medians of the runs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from pathlib import Path

from bench.cgroups import machine_busy_seconds
from bench.common import (
    BenchError,
    connect,
    flush_redis,
    free_port,
    http_json,
    manage,
    median,
    prepare_database,
    redis_url,
    refuse_if_in_use,
    service_env,
    start_command,
    start_process,
    stop_process,
    stop_processes,
    truncate_tables,
)
from bench.throughput import delivery_checks, wait_for_provider, work_left
from messaging_site.env import default_qcluster_workers

PHASES = (
    "cluster",
    "cluster-opt-outs",
    "cluster-compare",
    "baseline-fakeprovider",
    "baseline-stub",
    "cluster-latency",
)
# cluster-opt-outs loads a million consent records: run only when asked for.
DEFAULT_PHASES = tuple(p for p in PHASES if p != "cluster-opt-outs")
BENCH_USERNAME = "bench-cluster"
POLL_SECONDS = 0.2
STATUS_POLL_SECONDS = 1.0
RSS_POLL_SECONDS = 0.5

# The issue's targets, for batch 5000 every 1 s, 4 qclusters, a provider answering at once.
TARGETS = {
    "cluster_over_baseline": {"target": 0.6, "moonshot": 0.8},
    "baseline_fakeprovider_over_stub": {"target": 0.9},
    "qclusters_over_compare": {"target": 1.6},
    "slow_provider_messages_per_s": {"target": 1000},
    # Issue 22: with 1,000,000 numbers opted out and every message checked.
    "opt_outs_over_cluster": {"target": 0.95},
}


# --- processes and their memory -------------------------------------------------------


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, start time, CPU time used) of a process in clock ticks, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12])


def _descendants(roots: set[int]) -> dict[int, tuple[int, int, int]]:
    """Every process below `roots` (pid -> _proc_stat), read from /proc."""
    stats: dict[int, tuple[int, int, int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat:
                stats[int(entry.name)] = stat
    found: dict[int, tuple[int, int, int]] = {}
    frontier = set(roots)
    while frontier:
        children = {pid: stat for pid, stat in stats.items() if stat[0] in frontier and pid not in found}
        found.update(children)
        frontier = set(children)
    return found


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else None


class Processes:
    """The highest VmHWM seen, and the CPU time used, of each process in the trees under
    some roots (workers django-q2 recycles included: new pids are picked up at every
    sample), and of some other processes (the provider, PostgreSQL's backends).

    CPU time is counted from `start_cpu()`; a process that exits between two samples
    loses what it used since the last one (at most RSS_POLL_SECONDS of it)."""

    def __init__(self) -> None:
        self.peaks: dict[int, int] = {}
        self.root_of: dict[int, int] = {}
        self.parent: dict[int, int] = {}
        self.started: dict[int, int] = {}  # start time in clock ticks since boot
        self.cpu: dict[int, int] = {}  # CPU ticks at the last sample
        self.cpu_base: dict[int, int] = {}
        self.others: set[int] = set()
        self._next = 0.0

    @property
    def next_sample(self) -> float:
        return self._next

    def sample(self, roots: list[int], *, others: list[int] = (), force: bool = False) -> None:
        if not force and time.monotonic() < self._next:
            return
        self._next = time.monotonic() + RSS_POLL_SECONDS
        self.others.update(others)
        tree = _descendants(set(roots))
        for pid in roots:
            self.root_of[pid] = pid
        for pid, (parent, started, _) in tree.items():
            self.root_of.setdefault(pid, self.root_of.get(parent, parent))
            self.parent[pid] = parent
            self.started.setdefault(pid, started)
        for pid in {*roots, *tree, *others}:
            stat = tree.get(pid) or _proc_stat(pid)
            if stat:
                self.cpu[pid] = stat[2]
            kib = _vm_hwm_kib(pid)
            if kib is not None and kib > self.peaks.get(pid, 0):
                self.peaks[pid] = kib

    def start_cpu(self) -> None:
        """Count CPU time from now: what every process seen so far has used is left out."""
        self.cpu_base = dict(self.cpu)

    def cpu_seconds(self, pids) -> float:
        return round(sum(self.cpu.get(pid, 0) - self.cpu_base.get(pid, 0) for pid in pids) / CLOCK_TICKS, 2)

    def mib(self, pid: int) -> float | None:
        return round(self.peaks[pid] / 1024, 1) if pid in self.peaks else None


def _db_counters() -> dict[str, int]:
    """PostgreSQL's cumulative counters for the benchmark database and each of its tables.

    Read after the senders have exited (a backend reports its counts when it ends), the
    difference from before the sending shows how much work the database did: every
    transaction (an autocommit statement is one), rows read and written, and per table
    the scans and rows they read. It includes this benchmark's own polling (a few small
    queries a second, and `GET /api/dispatcher/`, which counts the messages by status)."""
    with connect() as conn:
        names = ("xact_commit", "xact_rollback", "tup_returned", "tup_fetched", "tup_inserted", "tup_updated")
        row = conn.execute(
            "SELECT xact_commit, xact_rollback, tup_returned, tup_fetched, tup_inserted, tup_updated, tup_deleted"
            " FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        counters = dict(zip((*names, "tup_deleted"), row, strict=True))
        columns = ("seq_scan", "seq_tup_read", "idx_scan", "idx_tup_fetch", "n_tup_ins", "n_tup_upd", "n_tup_del")
        for table, *values in conn.execute(
            "SELECT relname, coalesce(seq_scan, 0), coalesce(seq_tup_read, 0), coalesce(idx_scan, 0),"
            " coalesce(idx_tup_fetch, 0), n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables"
        ):
            counters.update({f"{table}.{column}": value for column, value in zip(columns, values, strict=True)})
    return counters


def _db_report(before: dict[str, int], after: dict[str, int], messages: int) -> dict:
    return {
        "per_1000_messages": {
            key: round((after.get(key, 0) - before.get(key, 0)) * 1000 / messages, 1)
            for key in after
            if after.get(key, 0) != before.get(key, 0)
        }
    }


def _backends(conn) -> list[int]:
    """PostgreSQL's processes serving the benchmark database (on this host)."""
    return [row[0] for row in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")]


def _qcluster_roles(main_pid: int, workers: int, rss: Processes) -> dict[int, str]:
    """Which process of a qcluster does what, from its process tree (whatever LOG_LEVEL says):
    the main process starts the sentinel, which starts the workers, then the monitor, then
    the pusher (django_q.cluster.Sentinel.spawn_cluster); any process it starts later
    replaces a recycled worker."""
    roles = {main_pid: "main"}
    sentinels = sorted(
        (pid for pid, parent in rss.parent.items() if parent == main_pid),
        key=lambda pid: (rss.started.get(pid, 0), pid),
    )
    for sentinel in sentinels[:1]:
        roles[sentinel] = "sentinel"
        children = sorted(
            (pid for pid, parent in rss.parent.items() if parent == sentinel),
            key=lambda pid: (rss.started.get(pid, 0), pid),
        )
        for index, pid in enumerate(children):
            roles[pid] = {workers: "monitor", workers + 1: "pusher"}.get(index, "worker")
    return roles


def _qcluster_memory(rss: Processes, qclusters: list, workers: int) -> dict:
    processes = []
    for popen in qclusters:
        roles = _qcluster_roles(popen.pid, workers, rss)
        for pid, root in rss.root_of.items():
            if root == popen.pid and pid in rss.peaks:
                role = roles.get(pid, "other")
                processes.append({"qcluster": popen.pid, "pid": pid, "role": role, "mib": rss.mib(pid)})
    by_role: dict[str, list[float]] = {}
    for p in processes:
        by_role.setdefault(p["role"], []).append(p["mib"])
    workers_peaks = by_role.get("worker", [])
    return {
        "worker_peak_rss_mib_max": max(workers_peaks, default=None),
        "worker_peak_rss_mib_median": median(workers_peaks),
        "workers_seen": len(workers_peaks),
        "peak_rss_mib_max_by_role": {role: max(values) for role, values in sorted(by_role.items())},
        # Each process's own peak, summed: an upper bound (forked processes share pages).
        "peak_rss_mib_sum_all_processes": round(sum(p["mib"] for p in processes), 1),
        "processes": sorted(processes, key=lambda p: (p["qcluster"], p["role"], p["pid"])),
    }


def _cpu_report(watch: Processes, groups: dict[str, list[int]], messages: int, **known: float) -> dict:
    """CPU seconds used by each group of processes while the messages were sent (and any
    `known` figures), and per 1,000 messages: where the machine's time went (Redis's own
    is not counted)."""
    seconds = {name: watch.cpu_seconds(pids) for name, pids in groups.items()}
    seconds.update({name: round(value, 2) for name, value in known.items()})
    total = round(sum(seconds.values()), 2)
    return {
        "seconds": {**seconds, "total": total},
        "per_1000_messages_s": {name: round(v * 1000 / messages, 3) for name, v in {**seconds, "total": total}.items()},
    }


def _qcluster_cpu_groups(watch: Processes, procs: list, workers: int) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for popen in procs:
        roles = _qcluster_roles(popen.pid, workers, watch)
        for pid, root in watch.root_of.items():
            if root == popen.pid:
                groups.setdefault(f"qcluster_{roles.get(pid, 'other')}", []).append(pid)
    return groups


def _wait_qclusters_ready(procs: list, workers: int, logs: Path, timeout: float = 60) -> None:
    """Until each qcluster's sentinel has started its workers, monitor and pusher."""
    deadline = time.monotonic() + timeout
    rss = Processes()
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise BenchError(f"a qcluster exited while starting; see {logs}")
        rss.sample([p.pid for p in procs], force=True)
        roles = [_qcluster_roles(p.pid, workers, rss) for p in procs]
        if all(sum(role != "worker" for role in r.values()) == 4 and len(r) >= workers + 4 for r in roles):
            time.sleep(0.5)  # the sentinel's guard starts right after the pusher
            return
        time.sleep(0.2)
    raise BenchError(f"the qclusters did not start within {timeout:g} s; see {logs}")


def _wait_for_log(popen, log_path: Path, pattern: str, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise BenchError(f"{what} exited ({popen.returncode}); see {log_path}")
        with suppress(OSError):
            if re.search(pattern, log_path.read_text(errors="replace")):
                return
        time.sleep(0.1)
    raise BenchError(f"{what} was not ready within {timeout} s; see {log_path}")


# --- the API, as a client uses it --------------------------------------------------------


class Api:
    """The service's REST API over HTTP with a token; one requests.Session per thread."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._local = threading.local()

    def _session(self):
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            session.headers["Authorization"] = f"Token {self.token}"
            self._local.session = session
        return session

    def call(self, method: str, path: str, body: object = None, *, expect: int = 200, timeout: float = 60) -> dict:
        response = self._session().request(method, self.base_url + path, json=body, timeout=timeout)
        if response.status_code != expect:
            raise BenchError(f"{method} {path} answered {response.status_code}: {response.text[:500]}")
        return response.json()


def _api_token(env: dict[str, str]) -> str:
    """A superuser and its DRF token in the benchmark database (made once, kept)."""
    script = (
        "from django.contrib.auth import get_user_model;"
        "from rest_framework.authtoken.models import Token;"
        f"u, _ = get_user_model().objects.get_or_create(username={BENCH_USERNAME!r},"
        " defaults={'is_staff': True, 'is_superuser': True});"
        "u.is_staff = u.is_superuser = True; u.save();"
        "print('TOKEN', Token.objects.get_or_create(user=u)[0].key)"
    )
    out = manage(env, "shell", "-c", script)
    match = re.search(r"^TOKEN (\w+)$", out, re.MULTILINE)
    if not match:
        raise BenchError(f"could not make the benchmark's API token:\n{out}")
    return match.group(1)


def _enqueue(api: Api, *, count: int, per_request: int, threads: int) -> dict:
    """Queue `count` messages through POST /api/messages/bulk/, `threads` requests at once."""

    def post(start: int) -> float:
        size = min(per_request, count - start)
        body = {
            "messages": [
                {"recipient_phone_number": f"+9055500{(start + i) % 100_000:05d}", "content": f"cluster {start + i}"}
                for i in range(size)
            ]
        }
        started = time.perf_counter()
        answer = api.call("POST", "/api/messages/bulk/", body, expect=201, timeout=120)
        if len(answer["messages"]) != size:
            raise BenchError(f"POST /api/messages/bulk/ stored {len(answer['messages'])} of {size}")
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        request_times = list(pool.map(post, range(0, count, per_request)))
    seconds = time.perf_counter() - started
    return {
        "messages": count,
        "requests": len(request_times),
        "seconds": round(seconds, 3),
        "messages_per_s": round(count / seconds, 1),
        "request_p50_ms": round(median(request_times) * 1000, 1),
        "request_max_ms": round(max(request_times) * 1000, 1),
    }


# --- one phase ---------------------------------------------------------------------------


class Phase:
    """What every phase shares: empty tables, a provider, the messages queued through the API."""

    def __init__(self, name: str, *, options: argparse.Namespace, env: dict[str, str], api: Api, logs: Path) -> None:
        self.name = name
        self.options = options
        self.env = env
        self.api = api
        self.logs = logs
        self.stack = ExitStack()
        self.provider = None
        self.provider_url = ""

    def log(self, suffix: str) -> Path:
        return self.logs / f"cluster-{self.name}-{suffix}.log"

    def reset(self) -> None:
        """Migrate (the code may have moved on since the last phase), stop the dispatcher,
        and empty the messages, django-q2's queue and the Redis db.

        Only our own processes are connected by now (checked at the start), and
        idle ones hold no lock, so TRUNCATE does not wait."""
        manage(self.env, "migrate", "--no-input", "-v0")
        self.api.call("POST", "/api/dispatcher/stop/")
        with connect() as conn:
            truncate_tables(conn)
        import redis

        redis.Redis.from_url(redis_url()).flushdb()

    def start_provider(self, kind: str, latency_ms: float) -> None:
        port = free_port()
        self.provider_url = f"http://127.0.0.1:{port}/"
        if kind == "fakeprovider":
            self.provider = start_process(
                ["fakeprovider", "--port", str(port), "--latency-ms", f"{latency_ms:g}"], self.env, self.log(kind)
            )
        else:
            argv = [sys.executable, "-m", "bench.stub_provider", "--port", str(port), "--latency-ms", f"{latency_ms:g}"]
            self.provider = start_command(argv, self.env, self.log(kind))
        self.stack.callback(stop_process, self.provider)
        wait_for_provider(self.provider_url, self.provider)

    def queue_messages(self) -> dict:
        enqueue = _enqueue(
            self.api,
            count=self.options.messages,
            per_request=self.options.per_request,
            threads=self.options.web_workers,
        )
        with connect() as conn:
            conn.execute("ANALYZE messages_app_message")  # as autovacuum would, on a table that just grew
        print(
            f"  {self.name}: queued {enqueue['messages']} through the API at {enqueue['messages_per_s']}/s",
            file=sys.stderr,
            flush=True,
        )
        return enqueue

    def provider_stats(self) -> dict:
        try:
            return http_json("GET", self.provider_url + "_fake/stats", timeout=30)
        except (OSError, ValueError) as exc:
            raise BenchError(f"could not read the provider's stats: {exc}") from None

    def result(self, *, started_wall: float, stats: dict, extra: dict) -> dict:
        n = self.options.messages
        with connect() as conn:
            checks = delivery_checks(conn, n)
            figures = _figures(conn, n, started_wall)
        import redis

        client = redis.Redis.from_url(redis_url())
        checks["redis_records"] = sum(1 for _ in client.scan_iter(match="messages:*", count=5000))
        duplicates = (stats["accepted"] - n) + stats["duplicates_dropped"]
        ok = (
            checks["sent_exactly_once"]
            and checks["redis_records"] == n
            and duplicates == 0
            and stats["accepted"] == n
            and extra.pop("_ok", True)
        )
        return {
            "phase": self.name,
            "ok": ok,
            **figures,
            "duplicates": duplicates,
            "provider": {"accepted": stats["accepted"], "duplicates_dropped": stats["duplicates_dropped"]},
            **extra,
            "checks": checks,
        }


def _figures(conn, n: int, started_wall: float) -> dict:
    row = conn.execute(
        """
        SELECT
            percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - created_at)) * 1000,
            percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - created_at)) * 1000,
            max(extract(epoch FROM sent_at - created_at)) * 1000,
            percentile_cont(0.5) WITHIN GROUP (
                ORDER BY extract(epoch FROM sent_at) - greatest(extract(epoch FROM created_at), %(start)s)) * 1000,
            percentile_cont(0.99) WITHIN GROUP (
                ORDER BY extract(epoch FROM sent_at) - greatest(extract(epoch FROM created_at), %(start)s)) * 1000,
            extract(epoch FROM min(sent_at)),
            extract(epoch FROM max(sent_at)),
            count(*)
        FROM messages_app_message WHERE status = 'sent'
        """,
        {"start": started_wall},
    ).fetchone()
    p50, p99, lat_max, wait_p50, wait_p99, first, last, sent = (float(v) if v is not None else None for v in row)
    complete = sent == n
    return {
        # N / (last sent_at - first sent_at): the sending rate, start-up excluded.
        "messages_per_s": _r(n / (last - first)) if complete and last and first and last > first else None,
        # N / (last sent_at - the moment the sending was started): start-up and the first tick included.
        "messages_per_s_from_start": _r(n / (last - started_wall)) if complete and last else None,
        "sending_s": _r(last - first, 3) if last and first else None,
        "first_send_after_start_s": _r(first - started_wall, 3) if first else None,
        "latency_p50_ms": _r(p50),
        "latency_p99_ms": _r(p99),
        "latency_max_ms": _r(lat_max),
        # From when the message was queued or the sending was started, whichever came last.
        "wait_from_start_p50_ms": _r(wait_p50),
        "wait_from_start_p99_ms": _r(wait_p99),
    }


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _run_cluster_phase(
    name: str,
    *,
    qclusters: int,
    latency_ms: float,
    options: argparse.Namespace,
    env: dict[str, str],
    api: Api,
    logs,
    cgroups=None,
) -> dict:
    """One cluster phase; with `cgroups` (bench.cgroups.CpuCgroups, one group per qcluster)
    each qcluster and every process it forks runs in its own group."""
    phase = Phase(name, options=options, env=env, api=api, logs=logs)
    print(f"cluster: {name}: {qclusters} qcluster(s), provider latency {latency_ms:g} ms", file=sys.stderr, flush=True)
    opt_outs = None
    with phase.stack:
        phase.reset()
        if name == "cluster-opt-outs":
            opt_outs = _load_opt_outs(options.opt_outs)
        phase.start_provider("fakeprovider", latency_ms)
        enqueue = phase.queue_messages() if options.feed == "before" else None
        qenv = dict(env, WEBHOOK_URL=phase.provider_url)
        q_logs = [phase.log(f"qcluster-{i}") for i in range(qclusters)]
        procs = [start_process(["qcluster"], qenv, log) for log in q_logs]
        phase.stack.callback(stop_processes, procs)
        if cgroups is not None:
            # Before the qcluster forks its sentinel (it sets Django up first): its children are born in it.
            for index, proc in enumerate(procs):
                cgroups.add(index, proc.pid)
        _wait_qclusters_ready(procs, options.workers, phase.logs)
        if cgroups is not None:
            for index, proc in enumerate(procs):  # any process forked before the move
                cgroups.add_tree(index, proc.pid)
        rss = Processes()
        roots = [p.pid for p in procs]
        with connect() as conn:
            rss.sample(roots, others=[phase.provider.pid, *_backends(conn)], force=True)
        rss.start_cpu()
        cgroup_usage_before = cgroups.usage_seconds() if cgroups is not None else None
        busy_before, busy_wall = machine_busy_seconds(), time.monotonic()
        db_before = _db_counters()

        api.call("PATCH", "/api/dispatcher/", {"batch_size": options.batch_size, "interval_seconds": options.interval})
        started_wall = time.time()
        api.call("POST", "/api/dispatcher/start/")
        feeder = feeding = None
        if options.feed == "during":
            feeder = ThreadPoolExecutor(1)
            feeding = feeder.submit(phase.queue_messages)
        pace = _watch(phase, procs, rss, feeding=feeding)
        with connect() as conn:
            backends = _backends(conn)
            rss.sample(roots, others=[phase.provider.pid, *backends], force=True)
        api.call("POST", "/api/dispatcher/stop/")
        if feeder:
            enqueue = feeding.result()
            feeder.shutdown()
        cgroup_usage = (
            [after - before for after, before in zip(cgroups.usage_seconds(), cgroup_usage_before, strict=True)]
            if cgroups is not None
            else None
        )
        busy_cores = (machine_busy_seconds() - busy_before) / max(time.monotonic() - busy_wall, 1e-6)
        stop_started = time.monotonic()
        stop_processes(procs)
        stop_s = time.monotonic() - stop_started
        db_after = _db_counters()
        stats = phase.provider_stats()
        returncodes = [p.returncode for p in procs]

    memory = _qcluster_memory(rss, procs, options.workers)
    cpu_groups = _qcluster_cpu_groups(rss, procs, options.workers)
    cpu_groups["fakeprovider"] = [phase.provider.pid]
    cpu_groups["postgresql"] = sorted(rss.others - {phase.provider.pid})
    extra = {
        "_ok": not pace["timed_out"],
        "qclusters": qclusters,
        "provider_latency_ms": latency_ms,
        "worker_peak_rss_mib": memory["worker_peak_rss_mib_max"],
        "behind": pace["behind"],
        "enqueue": enqueue,
        "opt_outs": opt_outs,
        "memory": memory,
        "cpu": _cpu_report(rss, cpu_groups, options.messages),
        "database": _db_report(db_before, db_after, options.messages),
        "cgroups": (
            cgroups.report(cgroup_usage, options.messages, machine_busy_cores=busy_cores)
            if cgroups is not None
            else None
        ),
        "detail": {
            "timed_out": pace["timed_out"],
            "qcluster_stop_s": round(stop_s, 2),
            "qcluster_returncodes": returncodes,
            "chunk_tasks": _chunk_tasks(),
        },
    }
    return phase.result(started_wall=started_wall, stats=stats, extra=extra)


def _load_opt_outs(count: int) -> dict:
    """`count` numbers opted out, none of them a recipient of the benchmark's (+9055500...):
    +1 200 000 0001 onwards, one INSERT ... SELECT generate_series (the reset emptied the
    consent tables with the messages)."""
    started = time.perf_counter()
    with connect() as conn:
        conn.execute(
            "INSERT INTO consent_consent (phone_number, status, changed_at, method, changed_by, note) "
            "SELECT '+1' || (2000000000 + n)::text, 'opted_out', now(), 'csv_import', 'bench', '' "
            "FROM generate_series(1, %s) AS n",
            [count],
        )
        # As a table that grew over months would be: vacuumed (else autovacuum's insert
        # threshold starts a VACUUM of a million rows during the phase) and its pages written
        # out (else the checkpoint writes them while the cluster sends).
        conn.execute("VACUUM (ANALYZE) consent_consent")
        conn.execute("CHECKPOINT")
        opted_out = conn.execute("SELECT count(*) FROM consent_consent WHERE status = 'opted_out'").fetchone()[0]
    seconds = time.perf_counter() - started
    print(f"  loaded {opted_out} opt-outs in {seconds:.1f} s", file=sys.stderr, flush=True)
    return {"numbers_opted_out": opted_out, "load_seconds": round(seconds, 2)}


def _watch(phase: Phase, procs: list, rss: Processes, *, feeding=None) -> dict:
    """Wait until every message is sent or failed, sampling the processes and reading
    `GET /api/dispatcher/` every second: the behind-pace signal, and the counts by status
    that tell progress and the end (so the benchmark adds no query of its own on the
    messages while they are sent)."""
    options = phase.options
    deadline = time.monotonic() + options.timeout
    next_status = next_progress = next_check = 0.0
    behind_max = 0.0
    polls = not_held = 0
    has_signal = None
    timed_out = False
    last_sent, progressed_at = -1, time.monotonic()
    with connect() as conn:
        while True:
            if time.monotonic() >= rss.next_sample:
                rss.sample([p.pid for p in procs], others=[phase.provider.pid, *_backends(conn)])
            if any(p.poll() is not None for p in procs):
                raise BenchError(f"a qcluster exited early; see {phase.logs}")
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 2
                _raise_on_failed_chunk(conn, phase)
            if now >= next_status:
                next_status = now + STATUS_POLL_SECONDS
                status = phase.api.call("GET", "/api/dispatcher/")
                polls += 1
                has_signal = "behind_seconds" in status
                behind_max = max(behind_max, float(status.get("behind_seconds") or 0))
                not_held += status.get("pace_held") is False
                counts = status.get("counts") or {}
                sent = counts.get("sent", 0)
                if sent != last_sent:
                    last_sent, progressed_at = sent, now
                elif now - progressed_at > options.stall_seconds:
                    raise BenchError(
                        f"{phase.name}: no message sent for {options.stall_seconds:g} s ({sent} sent); "
                        f"see the qcluster logs in {phase.logs}"
                    )
                if now >= next_progress:
                    next_progress = now + 5
                    print(
                        f"  {phase.name}: {counts.get('sent')} sent, {counts.get('unsent')} unsent, "
                        f"{counts.get('processing')} processing; behind {status.get('behind_seconds')} s",
                        file=sys.stderr,
                        flush=True,
                    )
                feeding_done = feeding is None or feeding.done()
                if feeding_done and "unsent" in counts and "processing" in counts:
                    if counts["unsent"] == 0 and counts["processing"] == 0 and sent:
                        break
                elif feeding_done and not work_left(conn):  # the API no longer counts by status
                    break
            if now > deadline:
                timed_out = True
                break
            time.sleep(POLL_SECONDS)
    return {
        "timed_out": timed_out,
        "behind": {
            "signal_available": has_signal,
            "behind_seconds_max": round(behind_max, 3) if has_signal else None,
            "status_polls": polls,
            "polls_pace_not_held": not_held,
        },
    }


def _raise_on_failed_chunk(conn, phase: Phase) -> None:
    """A chunk task that raised leaves its messages to wait out their lease: stop with its error."""
    failed = conn.execute("SELECT name FROM django_q_task WHERE NOT success ORDER BY started LIMIT 1").fetchone()
    if failed:
        lines = []
        for log in sorted(phase.logs.glob(f"cluster-{phase.name}-qcluster-*.log")):
            lines += [line for line in log.read_text(errors="replace").splitlines() if " ERROR " in line][:3]
        raise BenchError(f"{phase.name}: the task {failed[0]!r} failed; see {phase.logs}:\n" + "\n".join(lines))


def _chunk_tasks() -> dict:
    """How many chunk tasks failed, from django-q2's task table (successful chunks are not kept
    there: dispatcher/schedule.py)."""
    with connect() as conn:
        failed = conn.execute(
            "SELECT count(*) FROM django_q_task WHERE func = 'dispatcher.tasks.send_chunk' AND NOT success"
        ).fetchone()[0]
    return {"failed": failed}


def _run_baseline_phase(
    name: str, *, provider: str, options: argparse.Namespace, env: dict[str, str], api: Api, logs: Path
) -> dict:
    phase = Phase(name, options=options, env=env, api=api, logs=logs)
    print(f"cluster: {name}: bench/baseline.py against the {provider}", file=sys.stderr, flush=True)
    with phase.stack:
        phase.reset()
        phase.start_provider(provider, options.latency_ms)
        enqueue = phase.queue_messages()
        result_file = logs / f"cluster-{name}-baseline.json"
        result_file.unlink(missing_ok=True)
        argv = [
            sys.executable,
            "-m",
            "bench.baseline",
            "--provider-url",
            phase.provider_url,
            "--batch-size",
            str(options.batch_size),
            "--interval",
            str(options.interval),
            "--concurrency",
            str(options.baseline_concurrency),
            "--result-file",
            str(result_file),
        ]
        launched = time.time()
        rss = Processes()
        with connect() as conn:
            rss.sample([], others=[phase.provider.pid, *_backends(conn)], force=True)
            rss.start_cpu()
            # The baseline's own CPU time comes from the kernel when it is reaped, whole.
            children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            db_before = _db_counters()
            popen = start_command(argv, env, phase.log("baseline"))
            phase.stack.callback(stop_process, popen)
            deadline = time.monotonic() + options.timeout
            while popen.poll() is None and time.monotonic() < deadline:
                if time.monotonic() >= rss.next_sample:
                    rss.sample([popen.pid], others=[phase.provider.pid, *_backends(conn)])
                time.sleep(POLL_SECONDS)
            children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        db_after = _db_counters()
        timed_out = popen.poll() is None
        stats = phase.provider_stats()
    own = json.loads(result_file.read_text()) if result_file.exists() else {}
    extra = {
        "_ok": not timed_out and popen.returncode == 0,
        "provider_kind": provider,
        "provider_latency_ms": options.latency_ms,
        "concurrency": options.baseline_concurrency,
        "peak_rss_mib": rss.mib(popen.pid),
        "cpu": _cpu_report(
            rss,
            {provider: [phase.provider.pid], "postgresql": sorted(rss.others - {phase.provider.pid, popen.pid})},
            options.messages,
            baseline=(children_after.ru_utime + children_after.ru_stime)
            - (children_before.ru_utime + children_before.ru_stime),
        ),
        "database": _db_report(db_before, db_after, options.messages),
        "behind": {
            "held_ticks": own.get("held_ticks"),
            "behind_seconds_max": own.get("behind_seconds_max"),
        },
        "enqueue": enqueue,
        "detail": {"timed_out": timed_out, "returncode": popen.returncode, "startup_s": None, "baseline": own},
    }
    # "From start" is from when the baseline began claiming (its connections made), like
    # the cluster's, which is measured from POST /api/dispatcher/start/ with the workers up.
    started_wall = own.get("started_at") or launched
    extra["detail"]["startup_s"] = round(started_wall - launched, 3)
    return phase.result(started_wall=started_wall, stats=stats, extra=extra)


# --- the command -------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _ratios(rates: dict[str, float | None]) -> dict:
    values = {
        "cluster_over_baseline": _ratio(rates.get("cluster"), rates.get("baseline-fakeprovider")),
        "baseline_fakeprovider_over_stub": _ratio(rates.get("baseline-fakeprovider"), rates.get("baseline-stub")),
        "qclusters_over_compare": _ratio(rates.get("cluster"), rates.get("cluster-compare")),
        "slow_provider_messages_per_s": rates.get("cluster-latency"),
        "opt_outs_over_cluster": _ratio(rates.get("cluster-opt-outs"), rates.get("cluster")),
    }
    out = {}
    for name, value in values.items():
        goal = TARGETS[name]
        entry = {"value": value, **goal, "met": None if value is None else value >= goal["target"]}
        if "moonshot" in goal:
            entry["moonshot_met"] = None if value is None else value >= goal["moonshot"]
        out[name] = entry
    return out


def _phases(options: argparse.Namespace) -> list[str]:
    chosen = [p.strip() for p in options.phases.split(",") if p.strip()]
    unknown = set(chosen) - set(PHASES)
    if unknown:
        raise BenchError(f"unknown phase(s) {', '.join(sorted(unknown))}; choose from {', '.join(PHASES)}")
    if options.compare_qclusters < 1:
        chosen = [p for p in chosen if p != "cluster-compare"]
    if options.slow_latency_ms <= 0:
        chosen = [p for p in chosen if p != "cluster-latency"]
    if options.opt_outs < 1:
        chosen = [p for p in chosen if p != "cluster-opt-outs"]
    return [p for p in PHASES if p in chosen]


def cluster(options: argparse.Namespace) -> dict:
    if options.messages < 1 or options.qclusters < 1 or options.batch_size < 1 or options.interval < 1:
        raise BenchError("--messages, --qclusters, --batch-size and --interval must be at least 1")
    phases = _phases(options)
    runs = []
    with ExitStack() as stack:
        env, api, logs = service_for_phases(options, stack)
        for index in range(options.runs):
            print(f"cluster: run {index + 1} of {options.runs}", file=sys.stderr, flush=True)
            run: dict[str, dict] = {}
            for name in phases:
                if name.startswith("baseline-"):
                    provider = name.removeprefix("baseline-")
                    run[name] = _run_baseline_phase(
                        name, provider=provider, options=options, env=env, api=api, logs=logs
                    )
                else:
                    qclusters = options.compare_qclusters if name == "cluster-compare" else options.qclusters
                    latency = options.slow_latency_ms if name == "cluster-latency" else options.latency_ms
                    run[name] = _run_cluster_phase(
                        name, qclusters=qclusters, latency_ms=latency, options=options, env=env, api=api, logs=logs
                    )
            runs.append({"phases": run, "ratios": _ratios({k: v["messages_per_s"] for k, v in run.items()})})
        with suppress(BenchError):
            api.call("POST", "/api/dispatcher/stop/")
    return _report(options, phases, runs)


def service_for_phases(options: argparse.Namespace, stack: ExitStack) -> tuple[dict[str, str], Api, Path]:
    """The environment of the service's processes, gunicorn serving the API (stopped with
    `stack`) and the API's client, and the log folder: what every phase shares."""
    env = service_env(
        DISPATCH_PROVIDER_BACKEND="webhook",
        LOG_LEVEL=options.log_level,
        QCLUSTER_WORKERS=str(options.workers),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        # The status polls and bulk requests of one user: measure sending, not the throttle.
        THROTTLE_USER_RATE="1000000/min",
        # bench/baseline.py reads these; the service's processes read DATABASE_URL and REDIS_URL.
        BENCH_DATABASE_URL=os.environ.get("BENCH_DATABASE_URL", ""),
        BENCH_REDIS_URL=os.environ.get("BENCH_REDIS_URL", ""),
    )
    for key in ("BENCH_DATABASE_URL", "BENCH_REDIS_URL"):
        if not env[key]:
            env.pop(key)
    if options.chunk_size is not None:
        env["DISPATCH_CHUNK_SIZE"] = str(options.chunk_size)
    if options.concurrency is not None:
        env["DISPATCH_CONCURRENCY"] = str(options.concurrency)
    prepare_database(env)
    with connect() as conn:
        refuse_if_in_use(conn)  # another benchmark or a worker on this database: not under its feet
    flush_redis()  # refuses likewise for the Redis db
    token = _api_token(env)
    logs = Path(options.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    web_argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "messaging_site.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(options.web_workers),
        "--timeout",
        "120",
        # gunicorn 27 otherwise listens on one control socket per user (~/.gunicorn/), shared with any other.
        "--no-control-socket",
    ]
    web = start_command(web_argv, env, logs / "cluster-gunicorn.log")
    stack.callback(stop_process, web)
    _wait_for_log(web, logs / "cluster-gunicorn.log", r"Booting worker", timeout=60, what="gunicorn")
    api = Api(f"http://127.0.0.1:{port}", token)
    _wait_for_api(api, web)
    return env, api, logs


def _wait_for_api(api: Api, web, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if web.poll() is not None:
            raise BenchError(f"gunicorn exited ({web.returncode}); see its log")
        with suppress(Exception):
            api.call("GET", "/api/dispatcher/", timeout=5)
            return
        time.sleep(0.2)
    raise BenchError("the API did not answer within 60 s")


def _sender_cpu(result: dict) -> float:
    """CPU seconds per 1,000 messages of the sending processes (the qclusters, or the baseline)."""
    per = result["cpu"]["per_1000_messages_s"]
    return round(sum(v for k, v in per.items() if k.startswith("qcluster_") or k == "baseline"), 3)


def _report(options: argparse.Namespace, phases: list[str], runs: list[dict]) -> dict:
    keys = (
        "messages_per_s",
        "messages_per_s_from_start",
        "latency_p50_ms",
        "latency_p99_ms",
        "wait_from_start_p50_ms",
        "wait_from_start_p99_ms",
    )
    medians = {}
    for name in phases:
        results = [run["phases"][name] for run in runs]
        medians[name] = {key: median([r[key] for r in results]) for key in keys}
        if name.startswith("baseline-"):
            medians[name]["peak_rss_mib"] = median([r["peak_rss_mib"] for r in results])
        else:
            medians[name]["worker_peak_rss_mib"] = median([r["worker_peak_rss_mib"] for r in results])
            medians[name]["behind_seconds_max"] = max(
                (r["behind"]["behind_seconds_max"] or 0 for r in results), default=None
            )
        medians[name]["sender_cpu_s_per_1000"] = median([_sender_cpu(r) for r in results])
        medians[name]["all_cpu_s_per_1000"] = median([r["cpu"]["per_1000_messages_s"]["total"] for r in results])
        medians[name]["duplicates_total"] = sum(r["duplicates"] for r in results)
    ratios = _ratios({name: medians[name]["messages_per_s"] for name in phases})
    # Not a target: how much more CPU the sending processes spend per message than the baseline's.
    cpu_ratio = _ratio(
        medians.get("cluster", {}).get("sender_cpu_s_per_1000"),
        medians.get("baseline-fakeprovider", {}).get("sender_cpu_s_per_1000"),
    )
    ok = all(r["ok"] for run in runs for r in run["phases"].values())
    issue_conditions = (
        options.batch_size == 5000 and options.interval == 1 and options.qclusters == 4 and options.latency_ms == 0
    )

    def rate(name: str) -> str:
        return f"{medians[name]['messages_per_s']}" if name in medians else "-"

    def show(name: str) -> str:
        entry = ratios[name]
        if entry["value"] is None:
            return "-"
        return f"{entry['value']} ({'met' if entry['met'] else 'MISSED'} {entry['target']})"

    summary = (
        f"cluster: {options.messages} messages, batch {options.batch_size} every {options.interval} s, "
        f"{options.workers} workers/qcluster, chunk {options.chunk_size or 'default'}, "
        f"concurrency {options.concurrency or 'default'}; messages/s: {options.qclusters} qclusters "
        f"{rate('cluster')}, {options.compare_qclusters} qcluster(s) {rate('cluster-compare')}, "
        f"baseline fakeprovider {rate('baseline-fakeprovider')}, stub {rate('baseline-stub')}, "
        f"{options.qclusters} qclusters at {options.slow_latency_ms:g} ms {rate('cluster-latency')}; "
        f"cluster/baseline {show('cluster_over_baseline')}, fakeprovider/stub "
        f"{show('baseline_fakeprovider_over_stub')}, {options.qclusters}/{options.compare_qclusters} qclusters "
        f"{show('qclusters_over_compare')}, slow provider {show('slow_provider_messages_per_s')}, "
        f"{options.opt_outs} opted out {rate('cluster-opt-outs')} ({show('opt_outs_over_cluster')} of without); "
        f"sender CPU per message cluster/baseline {cpu_ratio or '-'}; "
        f"duplicates {sum(m['duplicates_total'] for m in medians.values())}"
        f" ({len(runs)} run(s){'' if ok else '; SOME PHASES FAILED'})"
    )
    return {
        "summary": summary,
        "ok": ok,
        "messages": options.messages,
        "batch_size": options.batch_size,
        "interval_seconds": options.interval,
        "qclusters": options.qclusters,
        "compare_qclusters": options.compare_qclusters,
        "workers_per_qcluster": options.workers,
        "chunk_size": options.chunk_size,
        "concurrency": options.concurrency,
        "baseline_concurrency": options.baseline_concurrency,
        "provider_latency_ms": options.latency_ms,
        "slow_latency_ms": options.slow_latency_ms,
        "opt_outs": options.opt_outs if "cluster-opt-outs" in phases else 0,
        "web_workers": options.web_workers,
        "feed": options.feed,
        "log_level": options.log_level,
        "targets_apply": issue_conditions,
        "ratios": ratios,
        "sender_cpu_cluster_over_baseline": cpu_ratio,
        "median": medians,
        "runs": runs,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=30_000, help="messages queued and sent per phase (N)")
    parser.add_argument("--qclusters", type=int, default=4, help="qcluster processes of the main phase (K)")
    parser.add_argument(
        "--compare-qclusters", type=int, default=1, help="qclusters of the cluster-compare phase (0: skip it)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_qcluster_workers(),
        help="QCLUSTER_WORKERS of each qcluster (default: the service's, one per core and at least 2)",
    )
    parser.add_argument("--batch-size", type=int, default=5000, help="the pace: messages per tick")
    parser.add_argument("--interval", type=int, default=1, help="the pace: seconds between ticks")
    parser.add_argument("--chunk-size", type=int, default=None, help="DISPATCH_CHUNK_SIZE (default: the service's)")
    parser.add_argument("--concurrency", type=int, default=None, help="DISPATCH_CONCURRENCY (default: the service's)")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="provider latency of every phase but the slow one"
    )
    parser.add_argument(
        "--slow-latency-ms", type=float, default=50.0, help="provider latency of cluster-latency (0: skip it)"
    )
    parser.add_argument("--baseline-concurrency", type=int, default=64, help="requests in flight in the baseline")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn sync workers (and enqueueing threads)")
    parser.add_argument("--per-request", type=int, default=1000, help="messages per POST /api/messages/bulk/")
    parser.add_argument(
        "--feed",
        choices=("before", "during"),
        default="before",
        help="queue the messages before the cluster starts (default), or while it sends (cluster phases)",
    )
    parser.add_argument("--phases", default=",".join(DEFAULT_PHASES), help=f"comma-separated, of: {', '.join(PHASES)}")
    parser.add_argument(
        "--opt-outs",
        type=int,
        default=1_000_000,
        help="numbers opted out in the cluster-opt-outs phase (not recipients; 0: skip it)",
    )
    parser.add_argument("--runs", type=int, default=1, help="repeat every phase R times; medians are reported")
    parser.add_argument("--timeout", type=float, default=900, help="give up on a phase after this many seconds")
    parser.add_argument(
        "--stall-seconds", type=float, default=90, help="give up on a phase when no message is sent for this long"
    )
    parser.add_argument("--log-level", default="INFO", help="LOG_LEVEL of the service's processes")
