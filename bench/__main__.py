"""Benchmarks of the service. Usage: python -m bench <command> [options]

  pacing      run qcluster + the fake provider for some minutes and compare the
              number of messages sent with batch_size x ticks.
  throughput  queue N messages (COPY) and time P `dispatcher drain` processes
              sending them all through the fake provider: messages/s, latency,
              peak RSS, duplicates.
  claim       time dispatcher.engine.claiming.claim_batch on tables of several sizes.
  sentlist    time GET /api/messages/sent/ and /api/messages/, first and deep pages.
  bulk        time POST /api/messages/bulk/.
  fakeprovider  requests/s of the fake provider next to a minimal aiohttp stub
              (wrk; no database).

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
import sys

from bench import fakeprovider, inprocess, pacing, providers, throughput
from bench.common import DEFAULT_LOG_DIR, BenchError, record

COMMANDS = {
    "pacing": (pacing.pacing, pacing.add_arguments, "messages sent over some minutes vs batch size x ticks"),
    "throughput": (
        throughput.throughput,
        throughput.add_arguments,
        "messages/s, latency, RSS and duplicates of P drain processes emptying a queue of N",
    ),
    "claim": (inprocess.claim, inprocess.add_claim_arguments, "claim_batch time against the table's size"),
    "sentlist": (
        inprocess.sentlist,
        inprocess.add_sentlist_arguments,
        "GET /api/messages/sent/ and /api/messages/, first and deep pages",
    ),
    "bulk": (inprocess.bulk, inprocess.add_bulk_arguments, "POST /api/messages/bulk/ messages/s"),
    "providers": (providers.providers, providers.add_arguments, "rate-limit accuracy; failover and outage runs"),
    "fakeprovider": (
        fakeprovider.fakeprovider,
        fakeprovider.add_arguments,
        "requests/s of the fake provider next to a minimal aiohttp stub (wrk)",
    ),
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
    run = COMMANDS[options.command][0]
    try:
        result = run(options)
    except BenchError as exc:
        print(f"bench {options.command}: {exc.code}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    ok = result.get("ok", True)
    if options.record and ok:
        record(options.command, result, argv)
    elif options.record:
        print(f'bench {options.command}: not recorded, the run failed (see "ok" above)', file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
