"""The routes providers call back (POST /api/receipts/ and the Twilio status callback):
refused callbacks count against the client's address, and over THROTTLE_CALLBACK_FAILURE_RATE
the address is answered 429 with Retry-After before its signature is checked or its body
read; callbacks whose signature checks are never counted, so a provider is never throttled
at its own rate (restapi.callbacks, restapi.throttles; #20, item 13).

Before: no throttle at all. Forged receipts at 709 a second, every one read, checked and
answered 401, raised /healthz's median latency to 298 ms.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from standardwebhooks.webhooks import Webhook
from twilio.request_validator import RequestValidator

from dispatcher.engine.receipts import MAX_RECEIPTS_PER_BATCH
from dispatcher.providers_conf import provider_specs_from_env
from messages_app.models import DeliveryReceipt
from tests.processes import free_port

pytestmark = pytest.mark.django_db

RECEIPTS_URL = "/api/receipts/"
SECRET = "whsec_" + base64.b64encode(b"receipt signing key, tests only!").decode()
FORGER, OTHER_FORGER, PROVIDER = "203.0.113.7", "203.0.113.8", "198.51.100.20"
TWILIO_TOKEN = "twilio-auth-token-for-tests"


@pytest.fixture(autouse=True)
def three_refusals_a_minute(settings):
    """Receipts configured; three refused callbacks a minute per address; counts start at zero."""
    settings.DISPATCHER = {**settings.DISPATCHER, "RECEIPT_SECRET": SECRET}
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "callback_failure": "3/min"},
    }
    cache.clear()


def receipt(message_id: str) -> dict:
    return {"messageId": message_id, "status": "delivered", "errorCode": None, "timestamp": timezone.now().isoformat()}


def signed(body: str, *, secret: str = SECRET) -> dict[str, str]:
    """The Standard Webhooks headers a provider sends with `body` (signed with `secret`)."""
    receipt_id, signed_at = f"msg_{uuid.uuid4().hex}", datetime.now(UTC)
    return {
        "webhook-id": receipt_id,
        "webhook-timestamp": str(int(signed_at.timestamp())),
        "webhook-signature": Webhook(secret).sign(receipt_id, signed_at, body),
    }


FORGED_SECRET = "whsec_" + base64.b64encode(b"not the provider's key, a guess!").decode()


def post_receipt(client: Client, payload: dict, *, secret: str = SECRET):
    body = json.dumps(payload)
    return client.post(RECEIPTS_URL, data=body, content_type="application/json", headers=signed(body, secret=secret))


def forged(client: Client):
    return post_receipt(client, receipt("provider-1"), secret=FORGED_SECRET)


def assert_throttled(response) -> None:
    assert response.status_code == 429, response.content
    assert 1 <= int(response["Retry-After"]) <= 60
    assert response.json()["detail"].startswith("Request was throttled.")


def test_an_address_whose_callbacks_are_refused_is_throttled_before_its_signature_is_checked():
    forger = Client(REMOTE_ADDR=FORGER)
    assert [forged(forger).status_code for _ in range(3)] == [401] * 3

    assert_throttled(forged(forger))
    # Refused before the signature is checked: even a receipt signed right is not read now.
    assert_throttled(post_receipt(forger, receipt("provider-2")))
    assert not DeliveryReceipt.objects.exists()
    # Another address has an allowance of its own, and a provider elsewhere is served.
    assert forged(Client(REMOTE_ADDR=OTHER_FORGER)).status_code == 401
    assert post_receipt(Client(REMOTE_ADDR=PROVIDER), receipt("provider-3")).status_code == 202


def test_a_provider_whose_signatures_check_is_never_throttled_single_receipts_or_batches():
    provider = Client(REMOTE_ADDR=PROVIDER)
    singles = [post_receipt(provider, receipt(f"single-{n}")).status_code for n in range(30)]
    # A provider that reports in batches sends its largest ones, back to back.
    batches = [
        post_receipt(
            provider,
            {
                "type": "message.status.batch",
                "receipts": [
                    {"id": f"r-{k}-{n}", **receipt(f"batched-{k}-{n}")} for n in range(MAX_RECEIPTS_PER_BATCH)
                ],
            },
        )
        for k in range(3)
    ]

    assert singles == [202] * 30
    assert [response.status_code for response in batches] == [200] * 3, batches[0].content
    assert DeliveryReceipt.objects.count() == 30 + 3 * MAX_RECEIPTS_PER_BATCH


def test_a_callback_without_its_signature_headers_is_refused_unread_and_counts(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    forger = Client(REMOTE_ADDR=FORGER)
    big = json.dumps({"padding": "x" * 10_000})

    # 401, not the 413 that reading a body over the limit gives: the body was never read.
    answers = [forger.post(RECEIPTS_URL, data=big, content_type="application/json") for _ in range(3)]

    for response in answers:
        assert response.status_code == 401, response.content
        detail = response.json()["detail"]
        assert detail == "signature check failed: missing webhook-id, webhook-timestamp, webhook-signature"
    assert_throttled(forger.post(RECEIPTS_URL, data=big, content_type="application/json"))


# --- the Twilio status callback ------------------------------------------------------------------


@pytest.fixture
def twilio_provider(settings):
    env = {
        "PROVIDERS": "backup",
        "PROVIDER_BACKUP_BACKEND": "twilio",
        "PROVIDER_BACKUP_URL": f"http://127.0.0.1:{free_port()}/",
        "PROVIDER_BACKUP_ACCOUNT_SID": "AC" + "0" * 32,
        "PROVIDER_BACKUP_AUTH_TOKEN": TWILIO_TOKEN,
        "PROVIDER_BACKUP_FROM": "+12025550100",
        "PROVIDER_BACKUP_STATUS_CALLBACK_URL": "http://testserver/api/receipts/twilio/backup/",
    }
    settings.DISPATCH_PROVIDERS, settings.DISPATCH_PROVIDER_ROUTES = provider_specs_from_env(
        read=env.get, secret=env.get, allow_http=True
    )


def twilio_callback(client: Client, *, provider: str = "backup", token: str = TWILIO_TOKEN, sign: bool = True):
    params = {"MessageSid": f"SM{uuid.uuid4().hex}", "MessageStatus": "delivered"}
    url = f"http://testserver/api/receipts/twilio/{provider}/"
    headers = {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, params)} if sign else {}
    return client.post(
        f"/api/receipts/twilio/{provider}/",
        data=urlencode(params),
        content_type="application/x-www-form-urlencoded",
        headers=headers,
    )


def test_the_twilio_callback_counts_forged_unsigned_and_unknown_provider_callbacks(twilio_provider):
    forger = Client(REMOTE_ADDR=FORGER)
    answers = [
        twilio_callback(forger, token="a guess"),
        twilio_callback(forger, sign=False),
        twilio_callback(forger, provider="nobody"),
    ]
    assert [response.status_code for response in answers] == [401, 401, 404]
    assert answers[1].json() == {"detail": "signature check failed: missing x-twilio-signature"}

    assert_throttled(twilio_callback(forger))  # signed right, but refused before it is checked

    provider = Client(REMOTE_ADDR=PROVIDER)
    assert [twilio_callback(provider).status_code for _ in range(10)] == [202] * 10


def test_with_the_cache_down_callbacks_are_neither_counted_nor_throttled(settings):
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{free_port()}/0"},
    }
    forger = Client(REMOTE_ADDR=FORGER)
    assert [forged(forger).status_code for _ in range(5)] == [401] * 5
    assert post_receipt(forger, receipt("provider-4")).status_code == 202


# --- the replies' routes (issue 22), refused the same way ----------------------------------------


def post_reply(client: Client, *, secret: str = SECRET):
    body = json.dumps({"from": "+12125550123", "text": "hello"})
    return client.post("/api/inbound/", data=body, content_type="application/json", headers=signed(body, secret=secret))


def test_forged_replies_are_throttled_like_receipts_and_a_provider_s_replies_never(settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "INBOUND_SECRET": SECRET}
    forger = Client(REMOTE_ADDR=FORGER)
    assert [post_reply(forger, secret=FORGED_SECRET).status_code for _ in range(3)] == [401] * 3

    assert_throttled(post_reply(forger))  # signed right, but refused before it is checked
    provider = Client(REMOTE_ADDR=PROVIDER)
    assert [post_reply(provider).status_code for _ in range(10)] == [200] * 10
    # The list of replies keeps the API's own rules: a token, no signature, and the API's throttle.
    assert Client(REMOTE_ADDR=FORGER).get("/api/inbound/").status_code == 401


def test_the_twilio_reply_webhook_counts_forged_and_unsigned_callbacks(twilio_provider):
    forger = Client(REMOTE_ADDR=FORGER)
    params = {"From": "+12125550123", "Body": "hello", "MessageSid": "SM" + "1" * 32}
    answers = [
        forger.post(
            "/api/inbound/twilio/backup/",
            data=urlencode(params),
            content_type="application/x-www-form-urlencoded",
            headers={"X-Twilio-Signature": "forged"},
        )
        for _ in range(3)
    ]
    assert [response.status_code for response in answers] == [401] * 3

    assert_throttled(
        forger.post(
            "/api/inbound/twilio/backup/", data=urlencode(params), content_type="application/x-www-form-urlencoded"
        )
    )
