"""Each endpoint's signing secret, and signing an event per Standard Webhooks.

The secret is never stored: it is derived from CALLBACK_SECRET_KEY (the environment;
by default from SECRET_KEY) and the endpoint's random salt, HMAC-SHA256, and written as
`whsec_<base64>` as Standard Webhooks has it. The database alone so gives nobody a
secret; rotating an endpoint draws a new salt, and the previous one keeps signing until
its overlap ends (both signatures in `webhook-signature`, which receivers accept if
either checks).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime

from standardwebhooks.webhooks import Webhook

from callbacks.conf import callback_settings


def secret_salt_new() -> str:
    return secrets.token_hex(16)


def endpoint_secret(*, salt: str, key: str | None = None) -> str:
    """The `whsec_...` secret of the endpoint whose salt is `salt`."""
    key = key if key is not None else callback_settings().secret_key
    digest = hmac.new(key.encode(), f"callback-endpoint:{salt}".encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(digest[:24]).decode()


def signature_headers(*, event_id: str, body: str, at: datetime, salts: list[str], key: str) -> dict[str, str]:
    """The three Standard Webhooks headers for `body`, signed with each salt's secret."""
    signatures = [Webhook(endpoint_secret(salt=salt, key=key)).sign(event_id, at, body) for salt in salts]
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": " ".join(signatures),
    }
