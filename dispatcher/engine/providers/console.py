from __future__ import annotations

import sys
import uuid
from typing import TYPE_CHECKING

from dispatcher.engine.providers.base import BaseProvider, ProviderResult

if TYPE_CHECKING:
    from messages_app.models import Message


class ConsoleProvider(BaseProvider):
    """Prints each message to stdout instead of sending it; for trying things out."""

    def send(self, message: Message) -> ProviderResult:
        message_id = str(uuid.uuid4())
        sys.stdout.write(
            f"[console provider] to={message.recipient_phone_number} id={message.pk} "
            f"messageId={message_id}\n{message.content}\n"
        )
        sys.stdout.flush()
        return ProviderResult(message_id=message_id)
