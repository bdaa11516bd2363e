"""A client application's callback endpoint, for trying status callbacks and for the tests.

    python -m devtools.callback_receiver --port 8090 --secret whsec_...

It checks each POST's Standard Webhooks signature with the `standardwebhooks` package
(401 if it does not check), prints one line per event received, and keeps them for
GET /_receiver/events. POST /_receiver/mode {"mode": ...} makes it misbehave, as the
tests need: "ok" (204), "error" (503), "throttle" (429 with Retry-After: `retry_after`),
"reject" (400), "hang" (answers after `delay` seconds), "redirect" (302 to `location`),
"drop" (closes the connection without an answer). A development tool: nothing of the
service imports it.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


class ReceiverState:
    def __init__(self, secrets: list[str], *, quiet: bool = False) -> None:
        self.lock = threading.Lock()
        self.secrets = list(secrets)
        self.quiet = quiet
        self.mode: dict = {"mode": "ok"}
        self.events: list[dict] = []  # verified, in arrival order
        self.requests = 0
        self.attempts: list[dict] = []  # every POST: its webhook-id, when, and how it was answered
        self.refused = 0  # signature did not check

    def verified(self, body: bytes, headers: dict[str, str]) -> dict | None:
        for secret in self.secrets:
            try:
                return Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
        return None


class Handler(BaseHTTPRequestHandler):
    server_version = "callback-receiver/1"
    state: ReceiverState

    def log_message(self, format: str, *args) -> None:
        pass

    def _answer(self, status: int, body: object = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        if self.path.startswith("/_receiver/events"):
            with self.state.lock:
                self._answer(
                    200,
                    {
                        "events": self.state.events,
                        "attempts": self.state.attempts,
                        "requests": self.state.requests,
                        "refused": self.state.refused,
                    },
                )
            return
        self._answer(404, {"detail": "not found"})

    def do_POST(self) -> None:
        body = self._body()
        if self.path.startswith("/_receiver/mode"):
            with self.state.lock:
                self.state.mode = json.loads(body or b"{}")
                if "secrets" in self.state.mode:
                    self.state.secrets = list(self.state.mode["secrets"])
            self._answer(200, self.state.mode)
            return
        with self.state.lock:
            self.state.requests += 1
            mode = dict(self.state.mode)
            kind = mode.get("mode", "ok")
            self.state.attempts.append({"webhook_id": self.headers.get("webhook-id"), "at": time.time(), "mode": kind})
        if kind == "drop":
            self.close_connection = True
            self.connection.close()
            return
        if kind == "hang":
            time.sleep(float(mode.get("delay", 30)))
        if kind == "error":
            self._answer(503, {"detail": "down"})
            return
        if kind == "throttle":
            self._answer(429, {"detail": "slow down"}, {"Retry-After": str(mode.get("retry_after", 2))})
            return
        if kind == "reject":
            self._answer(400, {"detail": "no"})
            return
        if kind == "redirect":
            self._answer(302, None, {"Location": mode.get("location", "http://169.254.169.254/latest/meta-data/")})
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        payload = self.state.verified(body, headers)
        if payload is None:
            with self.state.lock:
                self.state.refused += 1
            self._answer(401, {"detail": "signature does not check"})
            return
        event = {
            "webhook_id": headers.get("webhook-id"),
            "type": payload.get("type"),
            "data": payload.get("data"),
            "path": self.path,
            "received_at": time.time(),
        }
        with self.state.lock:
            self.state.events.append(event)
        if not self.state.quiet:
            data = payload.get("data") or {}
            sys.stdout.write(
                f"verified {event['webhook_id']} {event['type']} message_id={data.get('message_id')} "
                f"client_reference={data.get('client_reference') or '-'} sequence={data.get('sequence')} "
                f"status={data.get('status')}\n"
            )
            sys.stdout.flush()
        self._answer(204)


def receiver_server(*, host: str = "127.0.0.1", port: int = 0, secrets: list[str], quiet: bool = False):
    """A ThreadingHTTPServer (not started); its state at `server.state`."""
    state = ReceiverState(secrets, quiet=quiet)
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.state = state
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.callback_receiver", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--secret", action="append", required=True, help="whsec_... (twice during a rotation)")
    args = parser.parse_args(argv)
    server = receiver_server(host=args.host, port=args.port, secrets=args.secret)
    sys.stdout.write(f"callback receiver on http://{args.host}:{server.server_address[1]}/\n")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
