from __future__ import annotations

import asyncio
import json
import math
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

import aiohttp
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


# Delta-seconds: ASCII digits (RFC 9110), and a fraction some providers send. Not a sign, an
# exponent, "inf" or "nan", which float() would read.
_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from an HTTP Retry-After header (delta-seconds or an HTTP date); None
    when it is neither, or a number no clock can hold (beyond any float). How much of the wait
    is honoured is the dispatcher's to cap (PROVIDER_MAX_PAUSE_SECONDS, a message's day)."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class WebhookProvider(BaseProvider):
    """POSTs `{"to", "content"}` as JSON to WEBHOOK_URL and expects a `messageId` back.

    Each request carries `Idempotency-Key: <message uuid>`, the same on every attempt.

    A chunk sends from an event loop (`send_async`, aiohttp, one keep-alive session
    per worker): a third of the CPU per request of a blocking client in a thread, and
    the sending workers' CPU is what limits a cluster's throughput. `send` (urllib3,
    one thread-safe pool; requests' sessions cost twice its CPU) serves callers
    that send one message from a thread. Both read the answer the same way
    (`_answer`), and neither retries or follows a redirect by itself.
    """

    sends_async = True

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
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    def _body(self, message: Message) -> tuple[bytes, dict[str, str]]:
        body = json.dumps({"to": message.recipient_phone_number, "content": message.content}).encode()
        return body, {**self._headers, "Idempotency-Key": str(message.uuid)}

    def send(self, message: Message) -> ProviderResult:
        body, headers = self._body(message)
        try:
            response = self._pool.request(
                "POST",
                self.url,
                body=body,
                headers=headers,
                # A redirect answers the POST (a 3xx is not acceptance), rather than being followed.
                redirect=False,
            )
        except NewConnectionError as exc:
            raise self._could_not_connect(str(exc).rsplit(": ", 1)[-1]) from None
        except ConnectTimeoutError:
            # The connection never opened: the request was not sent.
            raise self._connect_timed_out() from None
        except ReadTimeoutError:
            # Sent, no answer: it may have been taken. Only this provider may be asked again.
            raise self._read_timed_out() from None
        except SSLError as exc:
            raise self._tls_failed(exc) from None
        except ProtocolError as exc:
            # The connection broke (reset, closed) after the request went out: the outcome is unknown.
            raise self._broke(exc.args[1] if len(exc.args) > 1 else exc) from None
        except HTTPError as exc:
            raise self._request_failed(exc) from None
        return self._answer(response.status, response.data, response.headers.get("Retry-After"))

    async def send_async(self, message: Message) -> ProviderResult:
        body, headers = self._body(message)
        session = self._async_session()
        try:
            async with session.post(self.url, data=body, headers=headers, allow_redirects=False) as response:
                status, data = response.status, await response.read()
                retry_after = response.headers.get("Retry-After")
        except aiohttp.ClientSSLError as exc:  # before ClientConnectorError: a TLS failure is both
            raise self._tls_failed(exc) from None
        except aiohttp.ClientConnectorError as exc:
            raise self._could_not_connect(exc.os_error.strerror or str(exc.os_error)) from None
        except aiohttp.ConnectionTimeoutError:
            raise self._connect_timed_out() from None
        except TimeoutError:  # aiohttp's SocketTimeoutError included: sent, no answer in time
            raise self._read_timed_out() from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError) as exc:
            raise self._broke(exc) from None
        except aiohttp.ClientError as exc:
            raise self._request_failed(exc) from None
        return self._answer(status, data, retry_after)

    def _async_session(self) -> aiohttp.ClientSession:
        """The keep-alive session of the event loop sending now (one loop per worker, ProviderSet)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session_loop is not loop:
            self._session = aiohttp.ClientSession(
                # In flight at once is the chunk's concurrency; the pool need not cap it again.
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(
                    sock_connect=self.timeout.connect_timeout, sock_read=self.timeout.read_timeout
                ),
                # Proxies and .netrc from the environment apply to neither backend path.
                trust_env=False,
            )
            self._session_loop = loop
        return self._session

    # --- what each failure means (the same for both ways of sending) ---

    @staticmethod
    def _could_not_connect(why: str) -> ProviderError:
        # Refused, unreachable, or the name did not resolve: no byte of the request went out.
        return ProviderError(f"could not connect to the provider: {why}", not_sent=True, provider_wide=True)

    def _connect_timed_out(self) -> ProviderError:
        return ProviderError(
            f"could not connect to the provider within {self.timeout.connect_timeout:g}s",
            not_sent=True,
            provider_wide=True,
        )

    def _read_timed_out(self) -> ProviderError:
        return ProviderError(
            f"timed out after {self.timeout.read_timeout:g}s waiting for the provider", provider_wide=True
        )

    @staticmethod
    def _tls_failed(exc: Exception) -> ProviderError:
        return ProviderError(f"TLS failed before the request went out: {exc}", not_sent=True, provider_wide=True)

    @staticmethod
    def _broke(exc: BaseException) -> ProviderError:
        return ProviderError(f"the connection to the provider broke: {type(exc).__name__}", provider_wide=True)

    @staticmethod
    def _request_failed(exc: Exception) -> ProviderError:
        # Not str(exc): the clients' texts name the URL, and a provider's credentials may be in it
        # (user info, ?api_key=); the reason goes to the log and to the message's last_error.
        detail = type(exc).__name__
        if isinstance(exc, aiohttp.ClientResponseError):  # an answer that could not be read
            detail += f" {exc.status}: {' '.join(str(exc.message).split())}"[:MAX_ERROR_BODY]
        return ProviderError(f"request failed: {detail}")

    @staticmethod
    def _answer(status: int, data: bytes, retry_after: str | None) -> ProviderResult:
        """The provider's answer: its messageId, or a ProviderError saying what it means."""
        if not 200 <= status < 300:
            text = data[: MAX_ERROR_BODY * 4].decode("utf-8", "replace")[:MAX_ERROR_BODY]
            raise ProviderError(
                f"provider answered HTTP {status}: {text}",
                # 5xx, 408 and 429 may pass; any other answer will be the same next time.
                permanent=not (status >= 500 or status in (408, 429)),
                http_status=status,
                retry_after=parse_retry_after(retry_after),
                # A 429 is the provider refusing the request: it took nothing.
                not_sent=status == 429,
                provider_wide=status >= 500 or status == 429,
            )
        try:
            parsed = json.loads(data)
        except ValueError:
            raise ProviderError(
                f"provider answered HTTP {status} with a body that is not JSON", permanent=True, http_status=status
            ) from None
        message_id = parsed.get("messageId") if isinstance(parsed, dict) else None
        if not isinstance(message_id, str) or not message_id.strip():
            raise ProviderError(
                f"provider answered HTTP {status} without a messageId", permanent=True, http_status=status
            )
        result = ProviderResult(message_id=message_id, http_status=status)  # kept storable
        if len(result.message_id) > MAX_MESSAGE_ID_LENGTH:
            raise ProviderError(
                f"provider answered HTTP {status} with a messageId of {len(result.message_id)} characters "
                f"(at most {MAX_MESSAGE_ID_LENGTH} can be stored)",
                permanent=True,
                http_status=status,
            )
        return result

    async def aclose(self) -> None:
        if self._session is not None and self._session_loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = self._session_loop = None

    def close(self) -> None:
        super().close()
        self._pool.clear()
        loop = self._session_loop
        if loop is not None and not loop.is_closed() and not loop.is_running():
            loop.run_until_complete(self.aclose())
        self._session = self._session_loop = None
