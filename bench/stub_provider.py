"""A minimal provider for the benchmarks: asyncio + aiohttp, one process, every POST
answered 202 `{"message": "Accepted", "messageId": <uuid4>}`.

It does what the fake provider (devtools/fakeprovider) does on the success path
and nothing else: no faults, no log line or kept record per request, no page.
Run against both, a sender shows how much of its rate the fake provider costs.
Like the fake provider it remembers each `Idempotency-Key` it accepted, answers a
repeat with the first messageId and counts it, and serves those counts at
`GET /_fake/stats`, so a benchmark checks duplicates the same way against either.

    python -m bench.stub_provider --port 8082 [--latency-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections import Counter

from aiohttp import web

STATS = web.AppKey("stats", dict)


async def accept(request: web.Request) -> web.Response:
    stats = request.app[STATS]
    await request.read()  # a kept-alive connection needs the body consumed
    latency = stats["latency_s"]
    if latency:
        await asyncio.sleep(latency)
    key = request.headers.get("Idempotency-Key")
    accepted: dict[str, str] = stats["accepted"]
    if key and key in accepted:
        message_id = accepted[key]
        stats["duplicates_dropped"] += 1
    else:
        message_id = str(uuid.uuid4())
        if key:
            accepted[key] = message_id
    stats["by_status"]["202"] += 1
    return web.json_response({"message": "Accepted", "messageId": message_id}, status=202)


async def stats_view(request: web.Request) -> web.Response:
    stats = request.app[STATS]
    return web.json_response(
        {
            "accepted": len(stats["accepted"]),
            "duplicates_dropped": stats["duplicates_dropped"],
            "requests": sum(stats["by_status"].values()),
            "by_status": dict(stats["by_status"]),
        }
    )


def make_app(*, latency_ms: float = 0.0) -> web.Application:
    app = web.Application()
    app[STATS] = {"accepted": {}, "duplicates_dropped": 0, "by_status": Counter(), "latency_s": latency_ms / 1000}
    app.router.add_get("/_fake/stats", stats_view)
    app.router.add_post("/{tail:.*}", accept)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stub_provider", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before every answer")
    options = parser.parse_args(argv)
    # run_app stops cleanly on SIGTERM and SIGINT; no access log (one line per request is what we leave out).
    web.run_app(
        make_app(latency_ms=options.latency_ms),
        host=options.host,
        port=options.port,
        access_log=None,
        print=lambda text: print(text, flush=True),
    )


if __name__ == "__main__":
    main()
