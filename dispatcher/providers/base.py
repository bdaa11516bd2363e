from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from messages_app.models import Message


@dataclass(frozen=True)
class ProviderResult:
    message_id: str
    http_status: int | None = None


class ProviderError(Exception):
    """The provider did not accept the message.

    `permanent` says a retry cannot help; `retry_after` (seconds) is the
    provider's own word on when to try again (HTTP Retry-After).
    """

    def __init__(
        self,
        reason: str,
        *,
        permanent: bool = False,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.http_status = http_status
        self.retry_after = retry_after


class BaseProvider:
    """Sends one message; returns the provider's id for it or raises ProviderError.

    A backend must send `message.uuid` as its idempotency key where the
    provider supports one, the same on every attempt, so a retry of a request
    whose answer was lost is dropped by the provider instead of delivered twice.
    """

    def send(self, message: Message) -> ProviderResult:
        raise NotImplementedError

    def close(self) -> None:
        """Release pooled connections; called when a dispatch window ends."""
