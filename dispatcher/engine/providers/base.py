from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dispatcher.providers_conf import ProviderSpec, legacy_provider_spec
from restapi.storable import text_escaped_for_storage

if TYPE_CHECKING:
    from messages_app.models import Message


def default_provider_spec() -> ProviderSpec:
    """The one provider of the single-provider settings, as they are now (tests change them)."""
    from dispatcher.conf import dispatcher_settings

    conf = dispatcher_settings()
    return legacy_provider_spec(
        backend=conf.provider_backend,
        url=conf.webhook_url,
        auth_key=conf.webhook_auth_key,
        timeout_seconds=conf.webhook_timeout_seconds,
    )


@dataclass(frozen=True)
class ProviderResult:
    """The provider took the message. `message_id` is its id for it, with any NUL or
    lone surrogate written as its escape (\\u0000), which PostgreSQL could not store:
    the message was taken all the same, so it is recorded as sent, under the id as
    the provider's JSON wrote it, rather than refused as failed (which a requeue
    would send again) or left unrecorded (a lease later, sent again)."""

    message_id: str
    http_status: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "message_id", text_escaped_for_storage(self.message_id))


class ProviderError(Exception):
    """The provider did not accept the message.

    `permanent` says a retry cannot help; `retry_after` (seconds) is the
    provider's own word on when to try again (HTTP Retry-After), kept only if a
    clock can hold it (finite, not negative). `not_sent`
    says the provider provably did not take the message (the connection was
    refused, DNS or TLS failed before the request went out, a 429), so another
    provider may send it without risking a duplicate; otherwise (a read timeout,
    a connection reset after the body went out, a 5xx) the outcome is unknown
    and only the same provider, with the same Idempotency-Key, may try again.
    `provider_wide` marks a failure of the provider rather than of the message
    (it counts towards the provider's circuit breaker).
    """

    def __init__(
        self,
        reason: str,
        *,
        permanent: bool = False,
        http_status: int | None = None,
        retry_after: float | None = None,
        not_sent: bool = False,
        provider_wide: bool = False,
        recipient_opted_out: bool = False,
    ) -> None:
        # The reason is kept as the attempt's error: a provider's NUL must not fail that write.
        reason = text_escaped_for_storage(reason)
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.http_status = http_status
        # Whatever a backend (ours, or one configured by dotted path) puts here, nothing after
        # it sees infinity, NaN or a negative wait: such a Retry-After counts as none.
        self.retry_after = retry_after if retry_after is not None and 0 <= retry_after < math.inf else None
        self.not_sent = not_sent
        self.provider_wide = provider_wide
        # The provider refused it because the recipient opted out with it (Twilio's 21610:
        # a STOP sent to the provider, not to us): recorded as the number's opt-out.
        self.recipient_opted_out = recipient_opted_out


class BaseProvider:
    """Sends one message; returns the provider's id for it or raises ProviderError.

    A backend must send `message.uuid` as its idempotency key where the
    provider supports one, the same on every attempt, so a retry of a request
    whose answer was lost is dropped by the provider instead of delivered twice.
    It is made from its ProviderSpec (name, URL, credentials, timeout).
    """

    _executor: ThreadPoolExecutor | None = None
    _executor_size = 0
    # A backend that can send from an event loop (`send_async`) sets this: a chunk then
    # keeps its sends in flight in one loop instead of a thread each, at a third of the
    # CPU per request. Others are called from threads (`send`).
    sends_async = False
    _as_set = None  # the ProviderSet of this one provider, once made
    # Set from the spec by __init__; a test double that skips it is the one "default" provider.
    name = "default"
    spec: ProviderSpec | None = None

    def __init__(self, spec: ProviderSpec | None = None) -> None:
        self.spec = spec or default_provider_spec()
        self.name = self.spec.name

    def send(self, message: Message) -> ProviderResult:
        raise NotImplementedError

    async def send_async(self, message: Message) -> ProviderResult:
        """`send` from an event loop (only called when `sends_async` is set)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what `send_async` opened, in its event loop."""

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
