"""Twilio's Messages API through the `twilio` package.

Configured as PROVIDER_<NAME>_BACKEND=twilio with ACCOUNT_SID, AUTH_TOKEN (or
AUTH_TOKEN_FILE), FROM (a number or a Messaging Service SID), optionally URL (the
API base, https://api.twilio.com by default; a local Twilio-compatible fake in
the tests) and STATUS_CALLBACK_URL (where Twilio posts delivery receipts:
`https://<your host>/api/receipts/twilio/<name>/`, checked with Twilio's request
validator and the same auth token).

Twilio's Messages API has no idempotency key of its own; each request carries
`Idempotency-Key: <message uuid>` anyway (a proxy or fake that honours it drops
repeats), and the failover rules never send an unknown outcome elsewhere.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import requests
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from dispatcher.engine.providers.base import BaseProvider, ProviderError, ProviderResult
from dispatcher.engine.providers.webhook import CONNECT_TIMEOUT_SECONDS, parse_retry_after

if TYPE_CHECKING:
    from messages_app.models import Message

TWILIO_API = "https://api.twilio.com"


# "Attempt to send to unsubscribed recipient": the person replied STOP to Twilio.
TWILIO_RECIPIENT_UNSUBSCRIBED = 21610


class _HttpClient(TwilioHttpClient):
    """Twilio's HTTP client, pointed at the configured base URL, with our Idempotency-Key."""

    def __init__(self, *, base_url: str, timeout: float, local: threading.local) -> None:
        super().__init__(timeout=timeout)
        self.base_url = base_url.rstrip("/")
        self._local = local

    def request(self, method, url, params=None, data=None, headers=None, auth=None, timeout=None, **kwargs):
        if url.startswith(TWILIO_API):
            url = self.base_url + url[len(TWILIO_API) :]
        headers = dict(headers or {})
        key = getattr(self._local, "idempotency_key", None)
        if key:
            headers["Idempotency-Key"] = key
        response = super().request(
            method, url, params=params, data=data, headers=headers, auth=auth, timeout=timeout, **kwargs
        )
        # TwilioRestException carries no headers: keep Retry-After for the caller.
        self._local.retry_after = (response.headers or {}).get("Retry-After")
        return response


class TwilioProvider(BaseProvider):
    def __init__(self, spec=None) -> None:
        super().__init__(spec)
        self._local = threading.local()
        self._clients: list[Client] = []
        self._lock = threading.Lock()

    def _client(self) -> Client:
        # One client (and HTTP session) per thread: requests sessions are not thread-safe.
        client = getattr(self._local, "client", None)
        if client is None:
            options = self.spec.options
            http = _HttpClient(
                base_url=self.spec.url or TWILIO_API, timeout=self.spec.timeout_seconds, local=self._local
            )
            client = Client(options["account_sid"], options["auth_token"], http_client=http)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def send(self, message: Message) -> ProviderResult:
        options = self.spec.options
        fields = {"to": message.recipient_phone_number, "body": message.content}
        sender = options["from"]
        fields["messaging_service_sid" if sender.startswith("MG") else "from_"] = sender
        if options.get("status_callback_url"):
            fields["status_callback"] = options["status_callback_url"]
        self._local.idempotency_key = str(message.uuid)
        self._local.retry_after = None
        try:
            created = self._client().messages.create(**fields)
        except TwilioRestException as exc:
            status = exc.status
            raise ProviderError(
                f"Twilio answered HTTP {status} (code {exc.code}): {exc.msg}"[:500],
                permanent=not (status >= 500 or status in (408, 429)),
                http_status=status,
                retry_after=parse_retry_after(getattr(self._local, "retry_after", None)),
                not_sent=status == 429,
                provider_wide=status >= 500 or status == 429,
                recipient_opted_out=exc.code == TWILIO_RECIPIENT_UNSUBSCRIBED,
            ) from None
        except requests.ConnectTimeout:
            raise ProviderError(
                f"could not connect to Twilio within {CONNECT_TIMEOUT_SECONDS:g}s", not_sent=True, provider_wide=True
            ) from None
        except requests.Timeout:
            raise ProviderError("timed out waiting for Twilio", provider_wide=True) from None
        except requests.exceptions.SSLError as exc:
            raise ProviderError(
                f"TLS failed before the request went out: {exc}"[:300], not_sent=True, provider_wide=True
            ) from None
        except requests.ConnectionError as exc:
            text = repr(exc.args[0] if exc.args else exc)
            never_connected = any(m in text for m in ("NewConnectionError", "NameResolutionError", "refused"))
            raise ProviderError(
                f"could not connect to Twilio: {type(exc).__name__}", not_sent=never_connected, provider_wide=True
            ) from None
        finally:
            self._local.idempotency_key = None
        return ProviderResult(message_id=created.sid, http_status=201)

    def close(self) -> None:
        super().close()
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            session = getattr(client.http_client, "session", None)
            if session is not None:
                session.close()
        self._local = threading.local()
