"""Replies: the fake provider reports a text "from a phone" to the service, as a real
provider reports an incoming SMS, so that STOP, START and HELP can be tried locally.

Asked through `POST /_fake/reply` (JSON `{"from", "text", "to"?}`, or the page's
form), it posts `{"from", "to", "text", "messageId", "timestamp"}` to the
service's `POST /api/inbound/`, signed per Standard Webhooks with the inbound
secret (the service checks it with INBOUND_WEBHOOK_SECRET), and answers with
the service's status and body. The newest few are shown on the page.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from devtools.fakeprovider.receipts import ReceiptSigner

REPLY_TIMEOUT_SECONDS = 10.0
REPLIES_SHOWN = 20
MAX_REPLY_TEXT = 1600


@dataclass(frozen=True)
class SentReply:
    sent_at: float
    from_number: str
    text: str
    status: int  # the service's answer; 0 if it could not be reached
    answer: str


class ReplySender:
    """Posts signed replies to `inbound_url`; `signer` None: replies are not configured."""

    def __init__(self, *, inbound_url: str, signer: ReceiptSigner | None) -> None:
        self.inbound_url = inbound_url
        self._signer = signer
        self._lock = threading.Lock()
        self._sent: deque[SentReply] = deque(maxlen=REPLIES_SHOWN)

    @property
    def signing(self) -> bool:
        return self._signer is not None

    def sent(self) -> list[SentReply]:
        with self._lock:
            return list(reversed(self._sent))

    async def send(self, *, from_number: str, text: str, to: str = "") -> SentReply:
        """Post one reply; ValueError if it is not one (or there is no secret to sign it)."""
        if self._signer is None:
            raise ValueError("replies need a secret: start with --inbound-secret or FAKE_PROVIDER_INBOUND_SECRET")
        if not isinstance(from_number, str) or not from_number.strip() or len(from_number) > 32:
            raise ValueError("from must be a phone number (at most 32 characters)")
        if not isinstance(text, str) or len(text) > MAX_REPLY_TEXT:
            raise ValueError(f"text must be a string of at most {MAX_REPLY_TEXT} characters")
        if not isinstance(to, str) or len(to) > 32:
            raise ValueError("to must be a string of at most 32 characters")
        reply_id = f"fake-in-{uuid.uuid4().hex}"
        body = json.dumps(
            {
                "from": from_number.strip(),
                "to": to,
                "text": text,
                "messageId": reply_id,
                "provider": "fake",
                "timestamp": datetime.now(UTC).isoformat(),
            }
        )
        headers = self._signer.headers(receipt_id=reply_id, body=body)
        now = datetime.now(UTC).timestamp()
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REPLY_TIMEOUT_SECONDS)) as session,
                session.post(self.inbound_url, data=body.encode(), headers=headers) as response,
            ):
                sent = SentReply(now, from_number, text, response.status, (await response.text())[:500])
        except (aiohttp.ClientError, TimeoutError) as exc:
            sent = SentReply(now, from_number, text, 0, f"could not reach {self.inbound_url}: {exc!r}"[:500])
        with self._lock:
            self._sent.append(sent)
        return sent
