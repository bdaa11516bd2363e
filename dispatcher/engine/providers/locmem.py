from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dispatcher.engine.providers.base import BaseProvider, ProviderError, ProviderResult

if TYPE_CHECKING:
    from messages_app.models import Message


@dataclass(frozen=True)
class OutboxEntry:
    message_pk: int
    to: str
    content: str
    message_id: str


# Like django.core.mail.outbox: a process-wide list tests can read and clear.
outbox: list[OutboxEntry] = []
# Reasons to fail the next sends with, consumed one per send (tests push onto it).
failures: list[ProviderError] = []
_lock = threading.Lock()


def reset() -> None:
    with _lock:
        outbox.clear()
        failures.clear()


class LocmemProvider(BaseProvider):
    """Keeps sent messages in memory (`outbox`) for tests."""

    def send(self, message: Message) -> ProviderResult:
        with _lock:
            if failures:
                raise failures.pop(0)
            message_id = str(uuid.uuid4())
            outbox.append(
                OutboxEntry(
                    message_pk=message.pk,
                    to=message.recipient_phone_number,
                    content=message.content,
                    message_id=message_id,
                )
            )
        return ProviderResult(message_id=message_id, http_status=202)
