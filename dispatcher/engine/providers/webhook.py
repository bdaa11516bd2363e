from __future__ import annotations

import threading
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

import requests
from requests.adapters import HTTPAdapter

from dispatcher.engine.providers.base import BaseProvider, ProviderError, ProviderResult

if TYPE_CHECKING:
    from messages_app.models import Message

# Connecting should be quick even when the provider is slow to answer.
CONNECT_TIMEOUT_SECONDS = 3.05
MAX_ERROR_BODY = 200
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


def _never_connected(exc: requests.ConnectionError) -> bool:
    """Whether the connection failed before any byte of the request went out (refused,
    DNS, unreachable): then the provider cannot have taken it. A reset or a closed
    connection after sending leaves the outcome unknown."""
    text = repr(exc.args[0] if exc.args else exc)
    return any(
        marker in text
        for marker in ("NewConnectionError", "NameResolutionError", "Connection refused", "No route to host")
    )


class WebhookProvider(BaseProvider):
    """POSTs `{"to", "content"}` as JSON to WEBHOOK_URL and expects a `messageId` back.

    Each request carries `Idempotency-Key: <message uuid>`, the same on every attempt.
    """

    def __init__(self, spec=None) -> None:
        super().__init__(spec)
        self.url = self.spec.url
        timeout = self.spec.timeout_seconds
        self.timeout = (min(CONNECT_TIMEOUT_SECONDS, timeout), timeout)
        self._auth_key = self.spec.options.get("auth_key", "")
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    def _session(self) -> requests.Session:
        # One pooled session per thread: requests.Session is not thread-safe.
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=32))
            session.mount("https://", HTTPAdapter(pool_connections=4, pool_maxsize=32))
            # No per-request look-ups of ~/.netrc or proxy variables: the URL is configured.
            session.trust_env = False
            session.headers.update({"Content-Type": "application/json", "Accept": "application/json"})
            if self._auth_key:
                session.headers["x-ins-auth-key"] = self._auth_key
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def send(self, message: Message) -> ProviderResult:
        payload = {"to": message.recipient_phone_number, "content": message.content}
        try:
            response = self._session().post(
                self.url, json=payload, timeout=self.timeout, headers={"Idempotency-Key": str(message.uuid)}
            )
        except requests.ConnectTimeout:
            # The connection never opened: the request was not sent.
            raise ProviderError(
                f"could not connect to the provider within {self.timeout[0]:g}s", not_sent=True, provider_wide=True
            ) from None
        except requests.Timeout:
            # Sent, no answer: it may have been taken. Only this provider may be asked again.
            raise ProviderError(
                f"timed out after {self.timeout[1]:g}s waiting for the provider", provider_wide=True
            ) from None
        except requests.exceptions.SSLError as exc:
            raise ProviderError(
                f"TLS failed before the request went out: {exc}", not_sent=True, provider_wide=True
            ) from None
        except requests.ConnectionError as exc:
            raise ProviderError(
                f"could not connect to the provider: {type(exc).__name__}",
                not_sent=_never_connected(exc),
                provider_wide=True,
            ) from None
        except requests.RequestException as exc:
            raise ProviderError(f"request failed: {exc}") from None

        status = response.status_code
        if not 200 <= status < 300:
            body = response.text[:MAX_ERROR_BODY]
            raise ProviderError(
                f"provider answered HTTP {status}: {body}",
                # 5xx, 408 and 429 may pass; any other answer will be the same next time.
                permanent=not (status >= 500 or status in (408, 429)),
                http_status=status,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                # A 429 is the provider refusing the request: it took nothing.
                not_sent=status == 429,
                provider_wide=status >= 500 or status == 429,
            )
        try:
            data = response.json()
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
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()
