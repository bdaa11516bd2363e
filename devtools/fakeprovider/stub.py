"""The least an aiohttp server can do to answer like the provider: the yardstick for the fake provider.

The fake provider checks, records and logs each request; this answers every
POST with 202 and a new messageId, and does nothing else: one route on a plain
`web.Application`, as anyone would write it. `python -m bench fakeprovider`
serves both under the same load, so the fake provider's cost shows.

    python -m devtools.fakeprovider.stub --port 8082
"""

from __future__ import annotations

import argparse
import json
import uuid

from aiohttp import web


async def accepted(request: web.Request) -> web.Response:
    await request.read()
    body = json.dumps({"message": "Accepted", "messageId": str(uuid.uuid4())}).encode()
    return web.Response(status=202, body=body, content_type="application/json")


def make_stub_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/{path:.*}", accepted)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    options = parser.parse_args()
    web.run_app(make_stub_app(), host=options.host, port=options.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
