"""Delivery receipts: some time after accepting a message, the provider says what became of it.

A real provider reports delivery later by calling the sender back, and the
service will check that the call is genuine. So the fake signs each receipt as
Standard Webhooks (https://www.standardwebhooks.com/) says: `webhook-id`,
`webhook-timestamp` and `webhook-signature` (`v1,` and the base64 HMAC-SHA256 of
`{id}.{timestamp}.{body}` under the base64-decoded `whsec_` secret). It can be
told to say "undelivered" for a share of messages, to wait longer, and to sign
with a wrong key, so the receiving side's failure paths can be tested too.

Receipts are tasks on the event loop: a slow or unreachable receiver never
holds up an answer. A receipt that fails (no connection, or not 2xx) is tried
again, a few times, a second apart; the same webhook-id each time, so a
receiver can tell a retry from a new receipt, and a fresh timestamp and
signature each time, as a real sender signs each attempt.

With `receipt_batch_size` above 1 it reports as Infobip and Sinch do: the
receipts that fall due together are gathered, up to that many, and sent in one
signed callback (`{"type": "message.status.batch", "receipts": [...]}`, each
receipt with an `id` of its own); a batch not yet full goes
`receipt_batch_wait_ms` after its first receipt fell due.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import itertools
import json
import logging
import secrets
import time
import uuid
from datetime import UTC, datetime

import aiohttp
from standardwebhooks import Webhook

from devtools.fakeprovider.faults import Faults
from devtools.fakeprovider.state import FakeProviderState

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of every Standard Webhooks secret
RECEIPT_RETRY_SECONDS = 1.0
RECEIPT_TIMEOUT_SECONDS = 5.0
BATCH_TYPE = "message.status.batch"
# Carrier error codes in the numbering providers commonly use (Twilio's): unreachable
# handset, unknown handset, landline or unreachable carrier, unknown error.
UNDELIVERED_ERROR_CODES = ("30003", "30005", "30006", "30008")


class ReceiptSigner:
    """Signs receipts with the secret, or on request with a key nobody has."""

    def __init__(self, secret: str) -> None:
        if not secret.startswith(SECRET_PREFIX):
            raise ValueError(f"the receipt secret must look like {SECRET_PREFIX}<base64>")
        try:
            key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"the receipt secret must be {SECRET_PREFIX} followed by base64") from None
        if not key:
            raise ValueError("the receipt secret is empty")
        self._webhook = Webhook(key)
        self._wrong_webhook = Webhook(secrets.token_bytes(32))

    def __repr__(self) -> str:
        return "ReceiptSigner(secret hidden)"

    def headers(self, *, receipt_id: str, body: str, wrong_key: bool = False) -> dict[str, str]:
        now = int(time.time())
        webhook = self._wrong_webhook if wrong_key else self._webhook
        return {
            "Content-Type": "application/json",
            "webhook-id": receipt_id,
            "webhook-timestamp": str(now),
            "webhook-signature": webhook.sign(receipt_id, datetime.fromtimestamp(now, UTC), body),
        }


def receipt_body(*, message_id: str, error_code: str | None) -> str:
    return json.dumps({"type": "message.status", **_outcome(message_id=message_id, error_code=error_code)})


def batch_body(receipts: list[dict]) -> str:
    return json.dumps({"type": BATCH_TYPE, "receipts": receipts})


def _outcome(*, message_id: str, error_code: str | None, timestamp: str | None = None) -> dict:
    return {
        "messageId": message_id,
        "status": "undelivered" if error_code else "delivered",
        "errorCode": error_code,
        "timestamp": timestamp or _now_iso(),
    }


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ReceiptSender:
    """Posts the receipts of accepted messages to `receipts_url`, counting them in the state."""

    def __init__(
        self, state: FakeProviderState, signer: ReceiptSigner | None, *, retry_seconds: float = RECEIPT_RETRY_SECONDS
    ) -> None:
        self._state = state
        self._signer = signer
        self._retry_seconds = retry_seconds
        self._session: aiohttp.ClientSession | None = None
        # Kept so they can be cancelled on stop, and so the loop does not drop them half-way.
        self._pending: set[asyncio.Task[None]] = set()
        # Batched receipts not yet due, in the order they fall due (one delay per key), and
        # those due and waiting for their batch: by where they go, how they are signed and
        # batched. One timer per key, not one per receipt: at thousands a second the
        # loop's time goes to answering.
        self._not_due: dict[tuple, collections.deque[tuple[float, str, str | None]]] = {}
        self._gathering: dict[tuple, list[dict]] = {}
        self._ids = itertools.count(1)
        self._id_prefix = uuid.uuid4().hex[:12]

    @property
    def signing(self) -> bool:
        return self._signer is not None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=RECEIPT_TIMEOUT_SECONDS))

    async def close(self) -> None:
        for task in self._pending:
            task.cancel()
        if self._pending:
            logger.info("stopping: %d receipts not sent", len(self._pending))
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def schedule(self, message_id: str, faults: Faults) -> None:
        """Send the receipt of a message just accepted, under the faults it was accepted with."""
        if not faults.receipts_url or self._signer is None or self._session is None:
            return
        undelivered = faults.undelivered_rate > 0 and self._state.random.random() < faults.undelivered_rate
        error_code = self._state.random.choice(UNDELIVERED_ERROR_CODES) if undelivered else None
        url, delay_seconds, wrong_key = faults.receipts_url, faults.receipt_delay_ms / 1000, faults.bad_signature
        retries = faults.receipt_retries
        if faults.receipt_batch_size <= 1:
            self._spawn(
                self._send_one(
                    url,
                    delay_seconds=delay_seconds,
                    message_id=message_id,
                    error_code=error_code,
                    wrong_key=wrong_key,
                    retries=retries,
                )
            )
            return
        key = (url, wrong_key, faults.receipt_batch_size, faults.receipt_batch_wait_ms / 1000, delay_seconds, retries)
        loop = asyncio.get_running_loop()
        not_due = self._not_due.setdefault(key, collections.deque())
        not_due.append((loop.time() + delay_seconds, message_id, error_code))
        if len(not_due) == 1:
            loop.call_later(delay_seconds, self._fall_due, key)

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send_one(
        self,
        url: str,
        *,
        delay_seconds: float,
        message_id: str,
        error_code: str | None,
        wrong_key: bool,
        retries: int,
    ) -> None:
        await asyncio.sleep(delay_seconds)
        receipt_id = f"rcpt_{uuid.uuid4()}"
        body = receipt_body(message_id=message_id, error_code=error_code)
        receipts = [(receipt_id, message_id)]
        await self._send(url, receipt_id=receipt_id, body=body, wrong_key=wrong_key, receipts=receipts, retries=retries)

    def _fall_due(self, key: tuple) -> None:
        """The receipts of `key` now due go into their batch, which goes when full or
        `receipt_batch_wait_ms` after its first receipt; the timer is set again for the next."""
        not_due = self._not_due[key]
        if self._session is None or self._session.closed:
            not_due.clear()  # stopping
            return
        loop = asyncio.get_running_loop()
        now, timestamp = loop.time(), _now_iso()
        _, _, batch_size, wait_seconds, *_ = key
        gathering = self._gathering.setdefault(key, [])
        while not_due and not_due[0][0] <= now:
            _, message_id, error_code = not_due.popleft()
            gathering.append(
                {
                    "id": f"rcpt_{self._id_prefix}_{next(self._ids)}",
                    **_outcome(message_id=message_id, error_code=error_code, timestamp=timestamp),
                }
            )
            if len(gathering) == 1:
                loop.call_later(wait_seconds, self._flush, key)
            elif len(gathering) >= batch_size:
                self._flush(key)
                gathering = self._gathering.setdefault(key, [])
        if not_due:
            loop.call_later(max(0.0, not_due[0][0] - now), self._fall_due, key)

    def _flush(self, key: tuple) -> None:
        batch = self._gathering.pop(key, None)
        if not batch:
            return
        url, wrong_key, *_, retries = key
        self._spawn(
            self._send(
                url,
                receipt_id=f"batch_{uuid.uuid4()}",
                body=batch_body(batch),
                wrong_key=wrong_key,
                receipts=[(item["id"], item["messageId"]) for item in batch],
                retries=retries,
            )
        )

    async def _send(
        self, url: str, *, receipt_id: str, body: str, wrong_key: bool, receipts: list[tuple[str, str]], retries: int
    ):
        """POST one callback (`receipt_id` is its webhook-id), trying again on failure up to
        `retries` times; `receipts` are the (receipt id, messageId) it carries, counted and logged."""
        attempts = 1 + retries
        what = _described(receipt_id, receipts)
        for attempt in range(1, attempts + 1):
            problem = await self._post(url, receipt_id=receipt_id, body=body, wrong_key=wrong_key)
            if problem is None:
                self._state.count_receipt(sent=True, count=len(receipts))
                logger.info("%s -> sent (attempt %d)", what, attempt)
                return
            logger.info("%s: %s (attempt %d of %d)", what, problem, attempt, attempts)
            if attempt < attempts:
                await asyncio.sleep(self._retry_seconds)
        self._state.count_receipt(sent=False, count=len(receipts))
        logger.warning("%s not sent after %d attempts", what, attempts)

    async def _post(self, url: str, *, receipt_id: str, body: str, wrong_key: bool) -> str | None:
        """None once the receiver took it (2xx), else what went wrong."""
        assert self._session is not None and self._signer is not None
        headers = self._signer.headers(receipt_id=receipt_id, body=body, wrong_key=wrong_key)
        try:
            async with self._session.post(url, data=body.encode(), headers=headers) as response:
                await response.read()
                return None if 200 <= response.status < 300 else f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"


def _described(callback_id: str, receipts: list[tuple[str, str]]) -> str:
    """A callback for the log: one line of bounded length, at thousands of receipts a second."""
    if len(receipts) == 1:
        return "receipt {} messageId={}".format(*receipts[0])
    return f"batch {callback_id} of {len(receipts)} receipts (messageId {receipts[0][1]} ... {receipts[-1][1]})"
