"""What the fake provider remembers: the requests it received, the keys it accepted, its counts.

It is all in memory and read by people (the page, `/_fake/requests`) and by
tests, which may look from another thread than the one serving; hence the lock.
The x-ins-auth-key a request carried is never kept: only whether it matched,
and its header with the value replaced, so nothing it shows gives the key away.
"""

from __future__ import annotations

import random
import threading
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from multidict import CIMultiDict

from devtools.fakeprovider.faults import Faults

# A bounded history: a throughput run sends hundreds of thousands of requests.
KEPT_REQUESTS = 10_000
AUTH_KEY_HEADER = "x-ins-auth-key"
REDACTED = "[redacted]"
# A UUID's version (4) and variant (RFC 4122) bits, set in 128 random bits.
_UUID4_KEEP = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID4_SET = (0x4 << 76) | (0x2 << 62)


@dataclass(slots=True)
class ReceivedRequest:
    received_at: float
    to: object  # as sent (a str unless the answer was 400); None when the body was not a JSON object
    content: object
    status: int
    message_id: str | None
    auth_ok: bool | None = None  # did x-ins-auth-key match; None when no key is required
    idempotency_key: str | None = None
    duplicate: bool = False  # a repeat of an accepted Idempotency-Key, answered without delivering
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)  # as sent, but the auth key's value redacted

    def as_json(self) -> dict[str, object]:
        return {
            "received_at": self.received_at,
            "to": self.to,
            "content": self.content,
            "status": self.status,
            "message_id": self.message_id,
            "auth_ok": self.auth_ok,
            "idempotency_key": self.idempotency_key,
            "duplicate": self.duplicate,
            "headers": dict(self.headers),
        }


def redacted_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """A copy of `headers` with the auth key's value hidden."""
    kept = CIMultiDict(headers)
    if AUTH_KEY_HEADER in kept:
        kept[AUTH_KEY_HEADER] = REDACTED
    return kept


class FakeProviderState:
    def __init__(self, faults: Faults, auth_key: str | None) -> None:
        self.faults = faults
        self.auth_key = auth_key
        self.requests: deque[ReceivedRequest] = deque(maxlen=KEPT_REQUESTS)
        self.accepted: dict[str, str] = {}  # Idempotency-Key -> messageId it was accepted with
        self.duplicates_dropped = 0
        self.receipts_sent = 0
        self.receipts_failed = 0
        self.lock = threading.Lock()
        self.random = random.Random()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.accepted.clear()
            self.duplicates_dropped = 0
            self.receipts_sent = 0
            self.receipts_failed = 0

    def record(self, entry: ReceivedRequest) -> None:
        with self.lock:
            self.requests.append(entry)

    def received(self) -> list[ReceivedRequest]:
        """The kept requests, oldest first."""
        with self.lock:
            return list(self.requests)

    def accept(self, idempotency_key: str | None) -> tuple[str, bool]:
        """The messageId for an accepted message, and whether its key was accepted before (a duplicate)."""
        with self.lock:
            if idempotency_key and idempotency_key in self.accepted:
                self.duplicates_dropped += 1
                return self.accepted[idempotency_key], True
            message_id = self._new_message_id()
            if idempotency_key:
                self.accepted[idempotency_key] = message_id
            return message_id, False

    def _new_message_id(self) -> str:
        """A random UUID4 string, like the provider's messageIds.

        Built from one getrandbits() call: str(uuid.uuid4()) costs a system call and a UUID
        object, four times as long, and at thousands of messages a second that shows.
        """
        digits = f"{(self.random.getrandbits(128) & _UUID4_KEEP) | _UUID4_SET:032x}"
        return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"

    def count_receipt(self, *, sent: bool, count: int = 1) -> None:
        with self.lock:
            if sent:
                self.receipts_sent += count
            else:
                self.receipts_failed += count

    def stats(self) -> dict[str, object]:
        with self.lock:
            by_status = Counter(str(entry.status) for entry in self.requests)
            return {
                "requests": len(self.requests),
                "accepted": len(self.accepted),
                "duplicates_dropped": self.duplicates_dropped,
                "by_status": dict(by_status),
                "receipts_sent": self.receipts_sent,
                "receipts_failed": self.receipts_failed,
            }
