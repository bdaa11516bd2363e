"""Benchmarks of the service. Usage: python -m bench <command> [options]

  chaos       the real service (gunicorn, 4 qclusters, the fake provider with receipts, a
              private PostgreSQL and Redis) under steady enqueue through the API and random
              faults from a seeded RNG: checks none lost, stuck or delivered twice, no
              duplicate from client retries, every receipt applied, the pace held.
  cluster     queue N messages through the API and send them with K real qcluster
              processes at the pace set through the API; the same with one
              qcluster, with a 50 ms provider, and an asyncio baseline against
              the fake provider and a stub: messages/s, latency, RSS, duplicates
              and their ratios.
  latency     lone messages created through the API one every 0.37 s: created to
              provider p50/p99, and the most sends in any interval <= the pace.
  scale       1, 2, 4 and 8 qclusters, each in a CPU cgroup held to 0.2 core (a small
              host of its own): messages/s and CPU-s per 1,000 messages each.
  pacing      run qcluster + the fake provider for some minutes and compare the
              number of messages sent with batch_size x ticks.
  pace-held   the same as a check: 4 qclusters at 50 every 2 s, within one batch.
  throughput  queue N messages (COPY) and time P `dispatcher drain` processes
              sending them all through the fake provider: messages/s, latency,
              peak RSS, duplicates.
  claim       time dispatcher.engine.claiming.claim_batch on tables of several sizes.
  claim-due   check that 100,000 older messages not yet due leave the claim within
              2x of its time without them.
  sentlist    time GET /api/messages/sent/ and /api/messages/, first and deep pages.
  bulk        time POST /api/messages/bulk/.
  idle-xact   a paced run with one transaction held idle against the same without it:
              throughput ratio (at least 0.95) and claim p99 ratio (at most 2).
  history     the claim and the sent list's first page with N final messages in
              history against none (same run): ratios, at most 1.2.
  fakeprovider  requests/s of the fake provider next to a minimal aiohttp stub
              (wrk; no database).
  receipts    post N signed delivery receipts through gunicorn and compare the
              receipts/s with the messages/s of sending N in the same run.
  inbound     post N signed replies in batches through gunicorn: replies/s.
  templates   POST /api/messages/bulk/ from a template against the same bulk with the
              finished content, in the same run: messages/s of each and their ratio.
  callbacks   sending with a status callback for every message against none, and with
              an endpoint that never answers against a healthy one (same run): ratios.

Each run needs PostgreSQL (BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/messaging_bench, created if missing and
migrated; its tables are emptied) and Redis (BENCH_REDIS_URL, default
redis://127.0.0.1:6379/14, flushed by `throughput`), and writes nothing outside
them but logs under --log-dir. Each prints its result as JSON; --record appends
it to bench/RESULTS.md with the command line, the date and the machine.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from bench import (
    callbacks,
    chaos,
    cluster,
    fakeprovider,
    history,
    idle_xact,
    inbound,
    inprocess,
    latency,
    pacing,
    providers,
    receipts,
    scale,
    templates,
    throughput,
)
from bench.common import DEFAULT_LOG_DIR, BenchError, record

COMMANDS = {
    "chaos": (
        chaos.chaos,
        chaos.add_arguments,
        "the service under load and random faults (seeded): none lost, stuck or sent twice, receipts, pace",
    ),
    "cluster": (
        cluster.cluster,
        cluster.add_arguments,
        "the paced mode as run for real (gunicorn, K qclusters, the API) against an asyncio baseline",
    ),
    "latency": (
        latency.latency,
        latency.add_arguments,
        "lone messages at light load: created to provider p50/p99, and the pace held at the provider",
    ),
    "scale": (
        scale.scale,
        scale.add_arguments,
        "1, 2, 4, 8 qclusters each in a CPU cgroup of 0.2 core: messages/s and CPU-s per 1,000",
    ),
    "pacing": (pacing.pacing, pacing.add_arguments, "messages sent over some minutes vs batch size x ticks"),
    "pace-held": (
        pacing.pace_held,
        pacing.add_pace_held_arguments,
        "check: 4 qclusters at 50 every 2 s send 50 x ticks within one batch, no duplicate",
    ),
    "throughput": (
        throughput.throughput,
        throughput.add_arguments,
        "messages/s, latency, RSS and duplicates of P drain processes emptying a queue of N",
    ),
    "claim": (inprocess.claim, inprocess.add_claim_arguments, "claim_batch time against the table's size"),
    "claim-due": (
        inprocess.claim_due,
        inprocess.add_claim_due_arguments,
        "check: claim_batch with 100,000 older not-yet-due messages within 2x of none",
    ),
    "sentlist": (
        inprocess.sentlist,
        inprocess.add_sentlist_arguments,
        "GET /api/messages/sent/ and /api/messages/, first and deep pages",
    ),
    "history": (
        history.history,
        history.add_arguments,
        "check: claim and sent list's first page with N final messages in history within 1.2 x of none",
    ),
    "idle-xact": (
        idle_xact.idle_xact,
        idle_xact.add_arguments,
        "check: paced run with one transaction held idle vs without: throughput >= 0.95 x, claim p99 <= 2 x",
    ),
    "bulk": (inprocess.bulk, inprocess.add_bulk_arguments, "POST /api/messages/bulk/ messages/s"),
    "templates": (
        templates.templates,
        templates.add_arguments,
        "check: bulk from a template at least 0.8 x the same bulk with finished content",
    ),
    "callbacks": (
        callbacks.callbacks,
        callbacks.add_arguments,
        "check: sending with callbacks on at least 0.9 x off; a dead endpoint at least 0.95 x a healthy one",
    ),
    "providers": (providers.providers, providers.add_arguments, "rate-limit accuracy; failover and outage runs"),
    "fakeprovider": (
        fakeprovider.fakeprovider,
        fakeprovider.add_arguments,
        "requests/s of the fake provider next to a minimal aiohttp stub (wrk)",
    ),
    "receipts": (
        receipts.receipts,
        receipts.add_arguments,
        "POST /api/receipts/ receipts/s through gunicorn, against the sending rate of the same run",
    ),
    "inbound": (inbound.inbound, inbound.add_arguments, "POST /api/inbound/ replies/s in batches through gunicorn"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, add_arguments, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.add_argument("--log-dir", default=str(DEFAULT_LOG_DIR), help="where child processes write their logs")
        p.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    options = parser.parse_args(argv)
    # A SIGTERM (a timeout, a test giving up) unwinds like an error, so the processes a
    # benchmark started are stopped by its own clean-up instead of being left running.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    run = COMMANDS[options.command][0]
    try:
        result = run(options)
    except BenchError as exc:
        print(f"bench {options.command}: {exc.code}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    if "line" in result:  # the run's figures on one line, last (bench chaos)
        print(result["line"])
    ok = result.get("ok", True)
    if options.record and ok:
        record(options.command, result, argv)
    elif options.record:
        print(f'bench {options.command}: not recorded, the run failed (see "ok" above)', file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
