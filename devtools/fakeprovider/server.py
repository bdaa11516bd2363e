"""A local stand-in for the SMS provider's webhook, with faults on request.

It answers like the real provider (202 `{"message": "Accepted", "messageId":
<uuid>}`), logs each request, and can be told to be slow, to fail a share of
requests, to answer another status, or to leave out the messageId: at start-up
(command-line options) or while running (`POST /_fake/faults` with JSON).
A `script` of answers (`[500, "timeout", 429, 202]`) is played one per request
before the other faults apply.

It honours `Idempotency-Key` as a careful provider would: a key it has already
accepted gets the first answer's messageId again and is counted as a duplicate
it dropped, not delivered twice.

`GET /_fake/requests` lists what it received and `GET /_fake/stats` counts it;
`DELETE /_fake/requests` forgets everything. `GET /` (or `/_fake/`) is the same
list as a page for people, newest first, that reloads itself every 2 s.
"""

from __future__ import annotations

import html
import json
import logging
import random
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

logger = logging.getLogger("devtools.fakeprovider.server")

MAX_BODY_BYTES = 1_000_000
KEPT_REQUESTS = 10_000
# The page re-renders every 2 s; the newest requests are what anyone watches,
# and the full list is at /_fake/requests.
PAGE_REQUESTS = 500
PAGE_REFRESH_SECONDS = 2


@dataclass
class Faults:
    latency_ms: float = 0.0
    error_rate: float = 0.0  # share of requests answered with error_status
    error_status: int = 500
    status_code: int = 202  # status of answers that are not errors
    missing_message_id: bool = False
    retry_after: float = 0.0  # if > 0, sent as Retry-After on 429 and 503 answers
    timeout_ms: float = 15_000.0  # how long a "timeout" script step keeps the client waiting
    script: list = field(default_factory=list)  # answers to play first: statuses or "timeout"

    def update(self, changes: dict) -> None:
        """Apply all of `changes` or, if any is invalid, none of them (ValueError)."""
        known = {f.name: f.type for f in fields(self)}
        candidate = replace(self)
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(known)}")
            current = getattr(candidate, name)
            if name == "script":
                if not isinstance(value, list) or not all(
                    step == "timeout" or (isinstance(step, int) and not isinstance(step, bool) and 100 <= step <= 599)
                    for step in value
                ):
                    raise ValueError('script must be a list of HTTP statuses (100-599) or "timeout"')
                candidate.script = list(value)
                continue
            if isinstance(current, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be true or false")
            elif not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"{name} must be a number")
            setattr(candidate, name, type(current)(value))
        if not 0.0 <= candidate.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        for name in ("latency_ms", "retry_after", "timeout_ms"):
            if getattr(candidate, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("error_status", "status_code"):
            if not 100 <= getattr(candidate, name) <= 599:
                raise ValueError(f"{name} must be an HTTP status (100-599)")
        for name in known:
            setattr(self, name, getattr(candidate, name))


@dataclass
class ReceivedRequest:
    received_at: float
    to: str | None
    content: str | None
    auth_key: str | None
    status: int
    message_id: str | None
    idempotency_key: str | None = None
    duplicate: bool = False  # a repeat of an accepted Idempotency-Key, answered without delivering


class FakeProviderState:
    def __init__(self, faults: Faults, auth_key: str | None) -> None:
        self.faults = faults
        self.auth_key = auth_key
        self.requests: list[ReceivedRequest] = []
        self.accepted: dict[str, str] = {}  # Idempotency-Key -> messageId it was accepted with
        self.duplicates_dropped = 0
        self.lock = threading.Lock()
        self.random = random.Random()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.accepted.clear()
            self.duplicates_dropped = 0

    def stats(self) -> dict:
        with self.lock:
            by_status: dict[str, int] = {}
            for entry in self.requests:
                by_status[str(entry.status)] = by_status.get(str(entry.status), 0) + 1
            return {
                "requests": len(self.requests),
                "accepted": len(self.accepted),
                "duplicates_dropped": self.duplicates_dropped,
                "by_status": by_status,
            }

    def record(self, entry: ReceivedRequest) -> None:
        with self.lock:
            self.requests.append(entry)
            if len(self.requests) > KEPT_REQUESTS:
                del self.requests[: len(self.requests) - KEPT_REQUESTS]


def _cell(value: object) -> str:
    return "&mdash;" if value is None else html.escape(str(value), quote=True)


def render_requests_page(state: FakeProviderState) -> str:
    """The received requests as an HTML page, newest first, every value escaped."""
    stats = state.stats()
    with state.lock:
        newest = state.requests[-PAGE_REQUESTS:][::-1]
        faults = asdict(state.faults)
    rows = []
    for entry in newest:
        received = datetime.fromtimestamp(entry.received_at, UTC)
        rows.append(
            f'<tr class="received-request{" duplicate" if entry.duplicate else ""}"'
            f' data-status="{entry.status}" data-message-id="{_cell(entry.message_id)}">'
            f'<td class="time"><time datetime="{received.isoformat()}">{received:%Y-%m-%d %H:%M:%S.%f}</time></td>'
            f'<td class="to">{_cell(entry.to)}</td>'
            f'<td class="content">{_cell(entry.content)}</td>'
            f'<td class="status">{entry.status}</td>'
            f'<td class="message-id">{_cell(entry.message_id)}</td>'
            f'<td class="duplicate-flag">{"duplicate, dropped" if entry.duplicate else ""}</td>'
            "</tr>"
        )
    if not rows:
        rows.append('<tr id="no-requests"><td colspan="6">Nothing received yet.</td></tr>')
    shown = f"the newest {len(newest)} of {stats['requests']}" if stats["requests"] > len(newest) else "all of them"
    by_status = ", ".join(f"{_cell(k)}: {v}" for k, v in sorted(stats["by_status"].items())) or "none"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{PAGE_REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Fake provider: {stats["requests"]} received</title>
<style>
  body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }}
  table {{ border-collapse: collapse; width: 100%; }}
  th, td {{ border-bottom: 1px solid #ddd; padding: 0.3rem 0.5rem; text-align: left; vertical-align: top; }}
  th {{ background: #f3f3f3; }}
  td.content {{ white-space: pre-wrap; overflow-wrap: anywhere; }}
  td.time, td.message-id {{ font-family: ui-monospace, monospace; font-size: 12px; }}
  tr.duplicate {{ background: #fff6d6; }}
  .stats span {{ margin-right: 1.2rem; }}
  .quiet {{ color: #666; }}
</style>
</head>
<body>
<h1>Fake provider</h1>
<p class="stats" id="stats">
  <span>received: <strong id="stat-requests">{stats["requests"]}</strong></span>
  <span>accepted: <strong id="stat-accepted">{stats["accepted"]}</strong></span>
  <span>duplicates dropped: <strong id="stat-duplicates">{stats["duplicates_dropped"]}</strong></span>
  <span>by status: {by_status}</span>
</p>
<p class="quiet">Faults: <code id="faults">{_cell(json.dumps(faults))}</code></p>
<p class="quiet">Newest first, {shown}; this page reloads every {PAGE_REFRESH_SECONDS} s.
  As JSON: <a href="/_fake/requests">/_fake/requests</a>, <a href="/_fake/stats">/_fake/stats</a>.</p>
<table id="received">
<thead>
<tr><th>Time (UTC)</th><th>To</th><th>Content</th><th>Status</th><th>messageId</th><th>Duplicate</th></tr>
</thead>
<tbody>
{"".join(rows)}
</tbody>
</table>
</body>
</html>
"""


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a valid but unnamed status, such as 520
        return "Error"


class FakeProviderHandler(BaseHTTPRequestHandler):
    server: FakeProviderServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY the body waits for the client's
    # delayed ACK, adding ~40 ms to every request on a kept-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args) -> None:
        pass  # we log one line per request ourselves, with the message details

    def _send_json(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _send_html(self, status: int, page: str) -> None:
        payload = page.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _read_json(self) -> object:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ValueError("body too large")
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw or b"null")

    def do_GET(self) -> None:
        state = self.server.state
        if urlsplit(self.path).path.rstrip("/") in ("", "/_fake"):
            self._send_html(200, render_requests_page(state))
        elif self.path.rstrip("/") == "/_fake/requests":
            with state.lock:
                self._send_json(200, [asdict(r) for r in state.requests])
        elif self.path.rstrip("/") == "/_fake/faults":
            self._send_json(200, asdict(state.faults))
        elif self.path.rstrip("/") == "/_fake/stats":
            self._send_json(200, state.stats())
        else:
            self._send_json(404, {"message": "Not found"})

    def do_DELETE(self) -> None:
        if self.path.rstrip("/") == "/_fake/requests":
            self.server.state.reset()
            self._send_json(200, {"message": "cleared"})
        else:
            self._send_json(404, {"message": "Not found"})

    def do_POST(self) -> None:
        state = self.server.state
        try:
            body = self._read_json()
        except ValueError:
            body = None  # not JSON: answered 400 below, like the real provider would
        if self.path.rstrip("/") == "/_fake/faults":
            try:
                if not isinstance(body, dict):
                    raise ValueError("send a JSON object of faults")
                with state.lock:
                    state.faults.update(body)
            except ValueError as exc:
                self._send_json(400, {"message": str(exc)})
                return
            logger.info("faults now %s", asdict(state.faults))
            self._send_json(200, asdict(state.faults))
            return
        self._provider_answer(state, body)

    def _provider_answer(self, state: FakeProviderState, body: object) -> None:
        with state.lock:
            faults = replace(state.faults, script=[])
            step = state.faults.script.pop(0) if state.faults.script else None
            fail = step is None and state.random.random() < faults.error_rate
        if faults.latency_ms:
            time.sleep(faults.latency_ms / 1000)
        to = body.get("to") if isinstance(body, dict) else None
        content = body.get("content") if isinstance(body, dict) else None
        auth_key = self.headers.get("x-ins-auth-key")
        key = self.headers.get("Idempotency-Key")
        message_id = None
        duplicate = False
        headers: dict[str, str] = {}
        if state.auth_key and auth_key != state.auth_key:
            status, answer = 401, {"message": "Unauthorized"}
        elif not isinstance(to, str) or not isinstance(content, str):
            status, answer = 400, {"message": 'Bad request: expected JSON {"to": str, "content": str}'}
        elif step == "timeout":
            # Keep the client waiting past its timeout; what we answer then is never read.
            time.sleep(faults.timeout_ms / 1000)
            status, answer = 504, {"message": "Gateway Timeout"}
        elif fail or (isinstance(step, int) and not 200 <= step < 300):
            status = step if isinstance(step, int) else faults.error_status
            answer = {"message": _phrase(status)}
            if status in (429, 503) and faults.retry_after:
                headers["Retry-After"] = f"{faults.retry_after:g}"
        else:
            status, answer = (step if isinstance(step, int) else faults.status_code), {"message": "Accepted"}
            if not faults.missing_message_id:
                with state.lock:
                    if key and key in state.accepted:
                        message_id, duplicate = state.accepted[key], True
                        state.duplicates_dropped += 1
                    else:
                        message_id = str(uuid.uuid4())
                        if key:
                            state.accepted[key] = message_id
                answer["messageId"] = message_id
        state.record(ReceivedRequest(time.time(), to, content, auth_key, status, message_id, key, duplicate))
        logger.info(
            "POST %s to=%s key=%s -> %d messageId=%s%s",
            self.path,
            to,
            key or "-",
            status,
            message_id or "-",
            " (duplicate dropped)" if duplicate else "",
        )
        try:
            self._send_json(status, answer, headers)
        except (BrokenPipeError, ConnectionResetError):
            logger.info("client went away before the answer for key=%s", key or "-")


class FakeProviderServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Dispatchers open dozens of connections at once; the default backlog of 5 refuses them.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], state: FakeProviderState) -> None:
        super().__init__(address, FakeProviderHandler)
        self.state = state


def make_fake_provider(
    *, host: str = "127.0.0.1", port: int = 8081, faults: Faults | None = None, auth_key: str | None = None
) -> FakeProviderServer:
    return FakeProviderServer((host, port), FakeProviderState(faults or Faults(), auth_key))
