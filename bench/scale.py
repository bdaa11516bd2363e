"""`python -m bench scale`: scale-out shown on capped hosts.

Two cores cannot show what 8 hosts would do, but a CPU cgroup per qcluster can: each
qcluster (main, sentinel, workers, monitor, pusher) runs in a cgroup of its own held to
`--cpus-per-qcluster` of a core (0.2 by default), as a small host of its own would be;
PostgreSQL, Redis, gunicorn and the fake provider stay outside the cgroups. The same
paced workload (`cluster`'s phase: N messages queued through the API, the pace set and
the dispatcher started through it) is run with 1, 2, 4 and 8 qclusters, and each reports
messages/s and the CPU seconds its cgroups used per 1,000 messages. `ratios` compares each
with one qcluster. Fails with a clear error when no CPU cgroup can be made (bench/cgroups.py).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack

from bench import cluster
from bench.cgroups import CpuCgroups
from bench.common import BenchError, median

TARGETS = {4: 3.6, 8: 6.5}


def scale(options: argparse.Namespace) -> dict:
    counts = sorted({int(c) for c in options.qclusters_list.split(",") if c.strip()})
    if not counts or counts[0] < 1 or options.messages < 1:
        raise BenchError("--qclusters-list must list counts of at least 1, --messages must be at least 1")
    # Made first: a machine without them stops here, before anything is started.
    probe = CpuCgroups(1, cpus=options.cpus_per_qcluster, name="bench-scale-probe")
    version = probe.version
    probe.remove()
    phase_options = _cluster_options(options)
    runs: list[dict[int, dict]] = []
    with ExitStack() as stack:
        env, api, logs = cluster.service_for_phases(phase_options, stack)
        for run_index in range(options.runs):
            run: dict[int, dict] = {}
            for count in counts:
                print(
                    f"scale: run {run_index + 1} of {options.runs}: {count} qcluster(s) at "
                    f"{options.cpus_per_qcluster:g} core each",
                    file=sys.stderr,
                    flush=True,
                )
                groups = CpuCgroups(count, cpus=options.cpus_per_qcluster)
                try:
                    phase = cluster._run_cluster_phase(
                        f"scale-{count}",
                        qclusters=count,
                        latency_ms=options.latency_ms,
                        options=phase_options,
                        env=env,
                        api=api,
                        logs=logs,
                        cgroups=groups,
                    )
                finally:
                    groups.remove()
                if not phase["ok"]:
                    raise BenchError(f"scale: {count} qclusters did not send every message exactly once: {phase}")
                run[count] = _summary(phase)
            runs.append(run)
    return _report(options, counts, runs, version)


def _summary(phase: dict) -> dict:
    cpu = phase["cgroups"]
    return {
        "messages_per_s": phase["messages_per_s"],
        "messages_per_s_from_start": phase["messages_per_s_from_start"],
        "cgroup_cpu_s_per_1000_messages": cpu["cpu_s_per_1000_messages"],
        "cgroup_cpu_s_each": cpu["cpu_s_each"],
        "machine_busy_cores": cpu["machine_busy_cores"],
        "process_cpu_s_per_1000_messages": phase["cpu"]["per_1000_messages_s"],
        "postgresql_cpu_s_per_1000": phase["cpu"]["per_1000_messages_s"].get("postgresql"),
        "fakeprovider_cpu_s_per_1000": phase["cpu"]["per_1000_messages_s"].get("fakeprovider"),
        "duplicates": phase["duplicates"],
        "behind": phase["behind"],
        "latency_p50_ms": phase["latency_p50_ms"],
    }


def _report(options: argparse.Namespace, counts: list[int], runs: list[dict[int, dict]], version: str) -> dict:
    medians = {
        count: {
            "messages_per_s": median([run[count]["messages_per_s"] for run in runs]),
            "cgroup_cpu_s_per_1000_messages": median([run[count]["cgroup_cpu_s_per_1000_messages"] for run in runs]),
            "machine_busy_cores": median([run[count]["machine_busy_cores"] for run in runs]),
        }
        for count in counts
    }
    one = medians[counts[0]]["messages_per_s"]
    ratios = {
        f"{count}_over_{counts[0]}": {
            "ratio": round(medians[count]["messages_per_s"] / one, 2) if one else None,
            "target": TARGETS.get(count) if counts[0] == 1 else None,
        }
        for count in counts[1:]
    }
    for ratio in ratios.values():
        ratio["met"] = None if ratio["target"] is None or ratio["ratio"] is None else ratio["ratio"] >= ratio["target"]
    duplicates = sum(run[count]["duplicates"] for run in runs for count in counts)
    rates = ", ".join(f"{c}: {medians[c]['messages_per_s']}/s" for c in counts)
    cpu = ", ".join(f"{c}: {medians[c]['cgroup_cpu_s_per_1000_messages']}" for c in counts)
    return {
        "summary": (
            f"scale: qclusters at {options.cpus_per_qcluster:g} core each (cgroup {version}), "
            f"{options.messages} messages at {options.batch_size} every {options.interval} s: messages/s {rates}; "
            f"CPU-s per 1,000 in the cgroups {cpu}; machine cores busy "
            + ", ".join(f"{c}: {medians[c]['machine_busy_cores']}" for c in counts)
            + "; "
            + ", ".join(f"{name} {r['ratio']}" for name, r in ratios.items())
            + f"; duplicates {duplicates}"
        ),
        "ok": duplicates == 0,
        "cgroup_version": version,
        "cpus_per_qcluster": options.cpus_per_qcluster,
        "messages": options.messages,
        "batch_size": options.batch_size,
        "interval_seconds": options.interval,
        "workers_per_qcluster": options.workers,
        "median": medians,
        "ratios": ratios,
        "duplicates": duplicates,
        "runs": [{str(count): figures for count, figures in run.items()} for run in runs],
    }


def _cluster_options(options: argparse.Namespace) -> argparse.Namespace:
    """`cluster`'s options at their defaults, with this command's."""
    parser = argparse.ArgumentParser()
    cluster.add_arguments(parser)
    merged = parser.parse_args([])
    names = (
        "messages",
        "workers",
        "batch_size",
        "interval",
        "chunk_size",
        "latency_ms",
        "log_level",
        "timeout",
        "log_dir",
    )
    for name in names:
        setattr(merged, name, getattr(options, name))
    merged.per_request = min(merged.per_request, options.messages)
    merged.feed = "before"
    return merged


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--qclusters-list", default="1,2,4,8", help="qcluster counts to run, comma-separated")
    parser.add_argument("--cpus-per-qcluster", type=float, default=0.2, help="each qcluster's cgroup CPU share")
    parser.add_argument("--messages", type=int, default=6000, help="messages queued and sent per count")
    parser.add_argument("--workers", type=int, default=2, help="QCLUSTER_WORKERS of each qcluster")
    parser.add_argument("--batch-size", type=int, default=5000, help="the pace: messages per tick")
    parser.add_argument("--interval", type=int, default=1, help="the pace: seconds between ticks")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=100,
        help="DISPATCH_CHUNK_SIZE: a tick's chunks spread over every qcluster's workers (the service's 500 "
        "gives 8 qclusters fewer chunks than workers)",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the fake provider's latency")
    parser.add_argument("--runs", type=int, default=1, help="repeat every count R times; medians are reported")
    parser.add_argument("--timeout", type=float, default=900, help="give up on a count after this many seconds")
    parser.add_argument("--log-level", default="INFO", help="LOG_LEVEL of the service's processes")
