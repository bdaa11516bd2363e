"""The fake provider's HTTP side: its routes on aiohttp, and starting and stopping it.

It runs on asyncio so that it is never the bottleneck of a throughput
benchmark, and so that latency faults and scripted timeouts wait with
`asyncio.sleep` instead of holding a thread each. For the same reason it is
served by aiohttp's low-level `web.Server` with the small route table below,
not by a `web.Application`: the application's per-request machinery (router,
match info, middlewares) takes about a seventh of a minimal server's time per
request, time the fake provider spends on its own work instead.

Routes:
- `POST` to any path not under `/_fake` answers like the provider (answers.py);
- `GET /_fake/requests`, `/_fake/stats`, `/_fake/faults` read it as JSON;
- `POST /_fake/faults` changes faults, `DELETE /_fake/requests` forgets everything;
- `POST /_fake/reply` sends the service a signed reply "from a phone" (replies.py);
- `GET /` (or `/_fake/`) is the page for people (page.py).

The two control routes refuse what a browser would send from another site's
page: a request whose `Origin` is not the fake provider's own is 403, and faults
must come as `application/json` (415 otherwise), which a cross-site form or a
"simple" fetch cannot send. It answers no CORS preflight, so a foreign page
cannot read what it received either. It is a development tool all the same: it
shows every phone number and text it received to whoever can reach its port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import asdict
from json.encoder import encode_basestring_ascii

from aiohttp import web

from devtools.fakeprovider.answers import ProviderRequest, auth_key_matches, decide_answer, draw_turn
from devtools.fakeprovider.faults import Faults
from devtools.fakeprovider.page import render_requests_page
from devtools.fakeprovider.receipts import ReceiptSender, ReceiptSigner
from devtools.fakeprovider.replies import ReplySender
from devtools.fakeprovider.requestlog import RequestLog
from devtools.fakeprovider.state import AUTH_KEY_HEADER, FakeProviderState, ReceivedRequest, redacted_headers

logger = logging.getLogger(__name__)

# Dispatchers open dozens of connections at once; a short backlog refuses some.
LISTEN_BACKLOG = 1024
# A scripted timeout holds its answer for 15 s; stopping should not wait for it.
SHUTDOWN_SECONDS = 1.0

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def _json_response(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers)


def _answer_response(status: int, body: dict[str, str], headers: dict[str, str] | None) -> web.Response:
    # The same bytes as json.dumps(body), in a third of the time: json.dumps sets up an
    # encoder on every call, which for a two-string answer is most of the work, and the
    # fake provider answers thousands a second.
    quote = encode_basestring_ascii
    members = ", ".join([f"{quote(name)}: {quote(value)}" for name, value in body.items()])
    return web.Response(status=status, body=f"{{{members}}}".encode(), content_type="application/json", headers=headers)


def _foreign_origin(request: web.BaseRequest) -> bool:
    """Sent by a browser from another site's page (Origin is absent from curl, scripts and the service)."""
    origin = request.headers.get("Origin")
    return origin is not None and origin.lower() != f"{request.scheme}://{request.host}".lower()


def _under_fake(path: str) -> bool:
    return path == "/_fake" or path.startswith("/_fake/")


class Endpoints:
    """The route handlers, sharing the state, the receipt sender and the request log."""

    def __init__(
        self,
        state: FakeProviderState,
        receipts: ReceiptSender,
        request_log: RequestLog | None,
        replies: ReplySender | None = None,
    ) -> None:
        self.state = state
        self.receipts = receipts
        self.request_log = request_log
        self.replies = replies or ReplySender(inbound_url="", signer=None)
        # (method, path without its trailing slash) -> handler; `/` is "" then.
        self.routes: dict[tuple[str, str], Handler] = {
            ("GET", ""): self.page,
            ("GET", "/_fake"): self.page,
            ("GET", "/_fake/requests"): self.requests,
            ("DELETE", "/_fake/requests"): self.forget,
            ("GET", "/_fake/stats"): self.stats,
            ("GET", "/_fake/faults"): self.faults,
            ("POST", "/_fake/faults"): self.change_faults,
            ("POST", "/_fake/reply"): self.send_reply,
        }

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if request.method == "POST" and not _under_fake(path):
            return await self.provider_answer(request)
        handler = self.routes.get((request.method, path.rstrip("/")))
        return await handler(request) if handler else _json_response(404, {"message": "Not found"})

    async def provider_answer(self, request: web.BaseRequest) -> web.Response:
        state = self.state
        turn = draw_turn(state)
        raw = await request.read()
        try:
            body = json.loads(raw.decode()) if raw else None
        except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
            body = None  # not UTF-8 JSON: answered 400, as the real provider would
        headers = request.headers
        asked = ProviderRequest.parse(
            body,
            auth_ok=auth_key_matches(headers.get(AUTH_KEY_HEADER), state.auth_key),
            idempotency_key=headers.get("Idempotency-Key"),
        )
        if turn.faults.latency_ms:
            await asyncio.sleep(turn.faults.latency_ms / 1000)
        answer = decide_answer(asked, turn, state)
        if answer.hold_seconds:
            await asyncio.sleep(answer.hold_seconds)
        now = time.time()
        state.record(
            ReceivedRequest(
                received_at=now,
                to=asked.to,
                content=asked.content,
                status=answer.status,
                message_id=answer.message_id,
                auth_ok=asked.auth_ok,
                idempotency_key=asked.idempotency_key,
                duplicate=answer.duplicate,
                headers=redacted_headers(headers),
            )
        )
        if self.request_log is not None:
            self.request_log.request(
                now,
                f"POST {request.path} to={asked.to} key={asked.idempotency_key or '-'} -> {answer.status}"
                f" messageId={answer.message_id or '-'}{' (duplicate dropped)' if answer.duplicate else ''}",
            )
        if turn.faults.receipts_url and answer.message_id and not answer.duplicate:
            self.receipts.schedule(answer.message_id, turn.faults)
        return _answer_response(answer.status, answer.body, answer.headers)

    async def page(self, request: web.BaseRequest) -> web.Response:
        return web.Response(
            text=render_requests_page(self.state, replies=self.replies),
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store"},
        )

    async def requests(self, request: web.BaseRequest) -> web.Response:
        return _json_response(200, [entry.as_json() for entry in self.state.received()])

    async def stats(self, request: web.BaseRequest) -> web.Response:
        return _json_response(200, self.state.stats())

    async def faults(self, request: web.BaseRequest) -> web.Response:
        return _json_response(200, asdict(self.state.faults))

    async def change_faults(self, request: web.BaseRequest) -> web.Response:
        if _foreign_origin(request):
            return _json_response(403, {"message": "faults cannot be changed from another site's page"})
        if request.content_type != "application/json":
            return _json_response(415, {"message": "send the faults as Content-Type: application/json"})
        try:
            changes = json.loads(await request.read())
        except (ValueError, RecursionError):
            changes = None
        if not isinstance(changes, dict):
            return _json_response(400, {"message": "send a JSON object of faults"})
        if changes.get("receipts_url") and not self.receipts.signing:
            return _json_response(
                400, {"message": "receipts need a secret: start with --receipt-secret or FAKE_PROVIDER_RECEIPT_SECRET"}
            )
        try:
            with self.state.lock:
                self.state.faults.update(changes)
        except ValueError as exc:
            return _json_response(400, {"message": str(exc)})
        logger.info("faults now %s", asdict(self.state.faults))
        return _json_response(200, asdict(self.state.faults))

    async def send_reply(self, request: web.BaseRequest) -> web.StreamResponse:
        """JSON `{"from", "text", "to"?}` (curl, tests), or the page's own form (its Origin
        must be this page's: a form is what another site's page could send)."""
        from_page = request.content_type == "application/x-www-form-urlencoded"
        if _foreign_origin(request) or (from_page and request.headers.get("Origin") is None):
            return _json_response(403, {"message": "replies cannot be sent from another site's page"})
        if from_page:
            fields = dict(await request.post())
        elif request.content_type == "application/json":
            try:
                fields = json.loads(await request.read())
            except (ValueError, RecursionError):
                fields = None
        else:
            return _json_response(415, {"message": "send the reply as Content-Type: application/json"})
        if not isinstance(fields, dict):
            return _json_response(400, {"message": 'send a JSON object: {"from": "+1...", "text": "STOP"}'})
        try:
            sent = await self.replies.send(
                from_number=fields.get("from"), text=fields.get("text", ""), to=fields.get("to") or ""
            )
        except ValueError as exc:
            return _json_response(400, {"message": str(exc)})
        logger.info("reply from %s sent to the service: %s", sent.from_number, sent.status or "unreachable")
        if from_page:
            raise web.HTTPSeeOther("/")
        return _json_response(200, {"service_status": sent.status, "service_answer": sent.answer})

    async def forget(self, request: web.BaseRequest) -> web.Response:
        if _foreign_origin(request):
            return _json_response(403, {"message": "the history cannot be cleared from another site's page"})
        self.state.reset()
        return _json_response(200, {"message": "cleared"})


class FakeProvider:
    """The fake provider bound to `host`:`port`; started and stopped from a running event loop."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        state: FakeProviderState,
        receipts: ReceiptSender,
        request_log: RequestLog | None = None,
        replies: ReplySender | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.state = state
        self.receipts = receipts
        self.request_log = request_log
        self.endpoints = Endpoints(state, receipts, request_log, replies)
        self.replies = self.endpoints.replies
        self._runner: web.ServerRunner | None = None
        self._flushing: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def start(self) -> None:
        """Listen (OSError if the port is taken); with port 0, `port` becomes the one chosen."""
        runner = web.ServerRunner(
            web.Server(self.endpoints, access_log=None), handle_signals=False, shutdown_timeout=SHUTDOWN_SECONDS
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=LISTEN_BACKLOG, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        await self.receipts.open()
        if self.request_log is not None:
            self._flushing = asyncio.get_running_loop().create_task(self.request_log.keep_flushing())

    async def stop(self) -> None:
        if self._runner is None:
            return
        await self._runner.cleanup()
        self._runner = None
        await self.receipts.close()
        if self._flushing is not None:
            self._flushing.cancel()
            with suppress(asyncio.CancelledError):
                await self._flushing
            self._flushing = None
        if self.request_log is not None:
            self.request_log.flush()


def make_fake_provider(
    *,
    host: str = "127.0.0.1",
    port: int = 8081,
    faults: Faults | None = None,
    auth_key: str | None = None,
    receipt_secret: str | None = None,
    request_log: RequestLog | None = None,
    inbound_url: str = "http://127.0.0.1:8000/api/inbound/",
    inbound_secret: str | None = None,
) -> FakeProvider:
    """A fake provider, not yet listening; it logs a line per request to `request_log` if given.

    ValueError for a malformed receipt or inbound secret, or for receipts without one.
    """
    try:
        reply_signer = ReceiptSigner(inbound_secret) if inbound_secret else None
    except ValueError as exc:
        raise ValueError(f"inbound secret: {exc}".replace("the receipt secret", "it")) from None
    replies = ReplySender(inbound_url=inbound_url, signer=reply_signer)
    faults = faults or Faults()
    signer = ReceiptSigner(receipt_secret) if receipt_secret else None
    if faults.receipts_url and signer is None:
        raise ValueError("receipts need a secret: --receipt-secret or FAKE_PROVIDER_RECEIPT_SECRET")
    state = FakeProviderState(faults, auth_key)
    receipts = ReceiptSender(state, signer)
    return FakeProvider(host=host, port=port, state=state, receipts=receipts, request_log=request_log, replies=replies)
