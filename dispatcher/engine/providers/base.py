from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
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

    _executor: ThreadPoolExecutor | None = None
    _executor_size = 0

    def send(self, message: Message) -> ProviderResult:
        raise NotImplementedError

    def executor(self, concurrency: int) -> ThreadPoolExecutor:
        """Threads for concurrent sends, kept for the provider's life so their
        pooled connections stay open from one batch to the next."""
        if self._executor is None or self._executor_size != concurrency:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="provider-send")
            self._executor_size = concurrency
        return self._executor

    def close(self) -> None:
        """Release threads and pooled connections; called when a window or drain ends."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
