from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from dispatcher.engine.providers.base import BaseProvider, ProviderError, ProviderResult

if TYPE_CHECKING:
    from messages_app.models import Message

# Connecting should be quick even when the provider is slow to answer.
CONNECT_TIMEOUT_SECONDS = 3.05
MAX_ERROR_BODY = 200
# Connections kept open per provider host: as many as a worker sends at once.
POOL_SIZE = 32
MAX_MESSAGE_ID_LENGTH = 255  # the width of Message.provider_message_id


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from an HTTP Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class WebhookProvider(BaseProvider):
    """POSTs `{"to", "content"}` as JSON to WEBHOOK_URL and expects a `messageId` back.

    Each request carries `Idempotency-Key: <message uuid>`, the same on every attempt.

    Straight on urllib3 (what requests is built on): one thread-safe connection pool
    shared by the worker's sending threads. requests' sessions cost twice the CPU
    per call (hooks, cookies, settings merged per request), and the sending worker's
    CPU is what limits a cluster's throughput.
    """

    def __init__(self, spec=None) -> None:
        super().__init__(spec)
        self.url = self.spec.url
        timeout = self.spec.timeout_seconds
        self.timeout = urllib3.Timeout(connect=min(CONNECT_TIMEOUT_SECONDS, timeout), read=timeout)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth_key := self.spec.options.get("auth_key", ""):
            self._headers["x-ins-auth-key"] = auth_key
        # No retries of ours: a request that may have been taken is retried by the
        # pipeline with its Idempotency-Key, never silently here.
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=POOL_SIZE, retries=False, timeout=self.timeout)

    def send(self, message: Message) -> ProviderResult:
        body = json.dumps({"to": message.recipient_phone_number, "content": message.content}).encode()
        try:
            response = self._pool.request(
                "POST",
                self.url,
                body=body,
                headers={**self._headers, "Idempotency-Key": str(message.uuid)},
                # A redirect answers the POST (a 3xx is not acceptance), rather than being followed.
                redirect=False,
            )
        except NewConnectionError as exc:
            # Refused, unreachable, or the name did not resolve: no byte of the request went out.
            raise ProviderError(
                f"could not connect to the provider: {str(exc).rsplit(': ', 1)[-1]}", not_sent=True, provider_wide=True
            ) from None
        except ConnectTimeoutError:
            # The connection never opened: the request was not sent.
            raise ProviderError(
                f"could not connect to the provider within {self.timeout.connect_timeout:g}s",
                not_sent=True,
                provider_wide=True,
            ) from None
        except ReadTimeoutError:
            # Sent, no answer: it may have been taken. Only this provider may be asked again.
            raise ProviderError(
                f"timed out after {self.timeout.read_timeout:g}s waiting for the provider", provider_wide=True
            ) from None
        except SSLError as exc:
            raise ProviderError(
                f"TLS failed before the request went out: {exc}", not_sent=True, provider_wide=True
            ) from None
        except ProtocolError as exc:
            # The connection broke (reset, closed) after the request went out: the outcome is unknown.
            raise ProviderError(
                f"the connection to the provider broke: {type(exc.args[1] if len(exc.args) > 1 else exc).__name__}",
                provider_wide=True,
            ) from None
        except HTTPError as exc:
            raise ProviderError(f"request failed: {exc}") from None

        status = response.status
        if not 200 <= status < 300:
            text = response.data[: MAX_ERROR_BODY * 4].decode("utf-8", "replace")[:MAX_ERROR_BODY]
            raise ProviderError(
                f"provider answered HTTP {status}: {text}",
                # 5xx, 408 and 429 may pass; any other answer will be the same next time.
                permanent=not (status >= 500 or status in (408, 429)),
                http_status=status,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                # A 429 is the provider refusing the request: it took nothing.
                not_sent=status == 429,
                provider_wide=status >= 500 or status == 429,
            )
        try:
            data = json.loads(response.data)
        except ValueError:
            raise ProviderError(
                f"provider answered HTTP {status} with a body that is not JSON", permanent=True, http_status=status
            ) from None
        message_id = data.get("messageId") if isinstance(data, dict) else None
        if not isinstance(message_id, str) or not message_id.strip():
            raise ProviderError(
                f"provider answered HTTP {status} without a messageId", permanent=True, http_status=status
            )
        if len(message_id) > MAX_MESSAGE_ID_LENGTH:
            raise ProviderError(
                f"provider answered HTTP {status} with a messageId of {len(message_id)} characters "
                f"(at most {MAX_MESSAGE_ID_LENGTH} can be stored)",
                permanent=True,
                http_status=status,
            )
        return ProviderResult(message_id=message_id, http_status=status)

    def close(self) -> None:
        super().close()
        self._pool.clear()
