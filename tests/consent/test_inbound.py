"""Replies received: POST /api/inbound/ (Standard Webhooks) and Twilio's inbound webhook."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from django.core.cache import caches
from django.test import Client
from standardwebhooks.webhooks import Webhook
from twilio.request_validator import RequestValidator

from consent.models import Consent, ConsentChange, InboundMessage
from consent.selectors import numbers_opted_out
from dispatcher.engine.counters import CACHE_ALIAS, inbound_key
from dispatcher.providers_conf import provider_specs_from_env
from messages_app.models import Message
from tests.factories import make_user

pytestmark = pytest.mark.django_db

SECRET = "whsec_" + base64.b64encode(b"inbound signing key, tests only").decode()
RECEIPT_SECRET = "whsec_" + base64.b64encode(b"receipt signing key, tests only!").decode()
NUMBER = "+12125550123"
OURS = "+15005550006"
AUTH_TOKEN = "twilio-auth-token-for-tests"


@pytest.fixture(autouse=True)
def inbound_secret(settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "INBOUND_SECRET": SECRET, "RECEIPT_SECRET": RECEIPT_SECRET}


def signed(body: str, *, webhook_id: str | None = None, secret: str = SECRET, at: datetime | None = None):
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, at, body),
    }


def post_reply(text: str, *, number: str = NUMBER, headers: dict | None = None, body: str | None = None):
    body = body if body is not None else json.dumps({"from": number, "to": OURS, "text": text, "messageId": "p-1"})
    return Client().post("/api/inbound/", data=body, content_type="application/json", headers=headers or signed(body))


def replies_to(number: str = NUMBER) -> list[Message]:
    return list(Message.objects.filter(recipient_phone_number=number).order_by("id"))


def test_stop_opts_out_and_queues_exactly_one_confirmation():
    answer = post_reply("Stop. Thank you")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert (body["outcome"], body["keyword"]) == ("stored", "opt_out")
    inbound = InboundMessage.objects.get()
    assert (inbound.from_number, inbound.to_number, inbound.text, inbound.provider) == (
        NUMBER,
        OURS,
        "Stop. Thank you",
        "webhook",
    )
    consent = Consent.objects.get()
    assert (consent.status, consent.method, consent.changed_by, consent.inbound_message) == (
        "opted_out",
        "keyword",
        NUMBER,
        inbound,
    )
    [reply] = replies_to()
    assert "unsubscribed" in reply.content and reply.status == "unsent"
    assert inbound.reply_message == reply and body["reply_message_id"] == reply.pk


def test_a_replayed_reply_changes_nothing_and_sends_nothing_more():
    body = json.dumps({"from": NUMBER, "text": "STOP"})
    headers = signed(body, webhook_id="msg_once")
    assert post_reply("", body=body, headers=headers).json()["outcome"] == "stored"
    replay = post_reply("", body=body, headers=signed(body, webhook_id="msg_once"))
    assert replay.status_code == 200 and replay.json()["outcome"] == "replayed"
    assert InboundMessage.objects.count() == 1 and len(replies_to()) == 1
    assert ConsentChange.objects.count() == 1
    assert caches[CACHE_ALIAS].get(inbound_key("replayed")) == 1


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h: {**h, "webhook-signature": "v1,AAAA"},
        lambda h: {k: v for k, v in h.items() if k != "webhook-signature"},
        lambda h: {**h, "webhook-timestamp": str(int((datetime.now(UTC) - timedelta(hours=1)).timestamp()))},
    ],
    ids=["bad signature", "unsigned", "stale"],
)
def test_a_forged_reply_is_401_and_changes_nothing(tamper):
    body = json.dumps({"from": NUMBER, "text": "STOP"})
    assert post_reply("", body=body, headers=tamper(signed(body))).status_code == 401
    assert not InboundMessage.objects.exists() and not Consent.objects.exists() and not Message.objects.exists()


def test_a_reply_signed_with_the_receipts_secret_is_refused():
    body = json.dumps({"from": NUMBER, "text": "STOP"})
    assert post_reply("", body=body, headers=signed(body, secret=RECEIPT_SECRET)).status_code == 401
    assert not Consent.objects.exists()


def test_without_a_secret_every_reply_is_refused(settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "INBOUND_SECRET": ""}
    answer = post_reply("STOP")
    assert answer.status_code == 401 and "INBOUND_WEBHOOK_SECRET" in answer.json()["detail"]


def test_an_ordinary_reply_is_kept_and_changes_nothing():
    assert post_reply("stopped by the store, see you").json()["keyword"] == ""
    assert InboundMessage.objects.get().keyword == ""
    assert not Consent.objects.exists() and not replies_to()


def test_start_opts_back_in_and_help_answers_without_changing_consent():
    post_reply("STOP")
    post_reply("start")
    assert numbers_opted_out(phone_numbers=[NUMBER]) == set()
    post_reply("HELP")
    assert [c.status for c in ConsentChange.objects.order_by("id")] == ["opted_out", "opted_in"]
    assert len(replies_to()) == 3
    assert "Reply STOP" in replies_to()[-1].content


def test_a_french_stop_is_answered_in_french():
    post_reply("Arrêt")
    assert replies_to()[0].content.startswith("Vous êtes désabonné")


@pytest.mark.parametrize(
    "payload",
    [
        {"text": "STOP"},
        {"from": 12125550123, "text": "STOP"},
        {"from": NUMBER, "text": "x" * 1601},
        {"from": NUMBER, "text": "STOP", "timestamp": "yesterday"},
        {"from": NUMBER, "text": "STOP\u0000"},
        {"from": NUMBER, "text": "STOP", "timestamp": "9999-12-31T23:59:59-14:00"},
        {"type": "message.inbound.batch", "messages": [{"id": "a\ud800", "from": NUMBER, "text": "STOP"}]},
        {"type": "message.inbound.batch", "messages": []},
        {"type": "message.inbound.batch", "messages": [{"from": NUMBER, "text": "STOP"}]},
    ],
)
def test_a_signed_reply_that_cannot_be_read_is_400_and_records_nothing(payload):
    body = json.dumps(payload)
    assert post_reply("", body=body).status_code == 400
    assert not InboundMessage.objects.exists() and not Consent.objects.exists()


def test_a_batch_is_recorded_as_one_and_its_replays_known_by_their_ids():
    items = [
        {"id": "r-1", "from": NUMBER, "text": "STOP"},
        {"id": "r-2", "from": "+12125550124", "text": "thanks!"},
        {"id": "r-3", "from": "+12125550125", "text": "help"},
    ]
    body = json.dumps({"type": "message.inbound.batch", "provider": "fake", "messages": items})
    answer = post_reply("", body=body)
    assert answer.json() == {"outcome": "batch", "stored": 3, "replayed": 0}
    assert set(InboundMessage.objects.values_list("provider", flat=True)) == {"fake"}
    body = json.dumps({"type": "message.inbound.batch", "messages": [*items, {"id": "r-4", "from": NUMBER}]})
    assert post_reply("", body=body).json() == {"outcome": "batch", "stored": 1, "replayed": 3}
    assert Message.objects.count() == 2  # the STOP's confirmation and the HELP's answer, once each


def test_a_batch_takes_an_id_it_holds_twice_once_and_its_keywords_in_order():
    items = [
        {"id": "r-1", "from": NUMBER, "text": "STOP"},
        {"id": "r-1", "from": NUMBER, "text": "STOP"},  # the provider's retry inside its own batch
        {"id": "r-2", "from": "+12125550124", "text": "see you"},
        {"id": "r-3", "from": NUMBER, "text": "start"},
    ]
    body = json.dumps({"type": "message.inbound.batch", "messages": items})
    assert post_reply("", body=body).json() == {"outcome": "batch", "stored": 3, "replayed": 1}
    assert Consent.objects.get(phone_number=NUMBER).status == Consent.Status.OPTED_IN
    assert list(
        ConsentChange.objects.filter(consent__phone_number=NUMBER).order_by("pk").values_list("status", flat=True)
    ) == [Consent.Status.OPTED_OUT, Consent.Status.OPTED_IN]
    assert len(replies_to(NUMBER)) == 2  # the STOP's confirmation, then the START's
    assert InboundMessage.objects.get(inbound_id="r-2").keyword == ""


def test_the_list_needs_the_view_permission(client_for, api_client):
    post_reply("STOP")
    assert api_client.get("/api/inbound/").status_code == 403
    reader = client_for(make_user(username="ivy", perms=["consent.view_inboundmessage"]))
    [row] = reader.get("/api/inbound/?keyword=opt_out").json()["results"]
    assert (row["from_number"], row["text"], row["keyword"]) == (NUMBER, "STOP", "opt_out")
    assert Client().get("/api/inbound/").status_code == 401


def test_metrics_count_replies_by_kind():
    post_reply("STOP")
    post_reply("hello")
    operator = Client()
    operator.force_login(make_user(username="ops", staff=True))
    text = operator.get("/metrics").content.decode()
    assert 'messaging_inbound_messages_total{kind="opt_out"} 1.0' in text
    assert 'messaging_inbound_messages_total{kind="reply"} 1.0' in text


# --- Twilio -----------------------------------------------------------------------------------


@pytest.fixture
def twilio_provider(settings):
    env = {
        "PROVIDERS": "backup",
        "PROVIDER_BACKUP_BACKEND": "twilio",
        "PROVIDER_BACKUP_URL": "http://127.0.0.1:9/",
        "PROVIDER_BACKUP_ACCOUNT_SID": "AC" + "0123456789abcdef" * 2,
        "PROVIDER_BACKUP_AUTH_TOKEN": AUTH_TOKEN,
        "PROVIDER_BACKUP_FROM": OURS,
    }
    settings.DISPATCH_PROVIDERS, settings.DISPATCH_PROVIDER_ROUTES = provider_specs_from_env(
        read=env.get, secret=env.get, allow_http=True
    )


def twilio_reply(params: dict[str, str], *, token: str = AUTH_TOKEN, provider: str = "backup"):
    url = f"http://testserver/api/inbound/twilio/{provider}/"
    return Client().post(
        f"/api/inbound/twilio/{provider}/",
        data=urlencode(params),
        content_type="application/x-www-form-urlencoded",
        headers={"X-Twilio-Signature": RequestValidator(token).compute_signature(url, params)},
    )


def test_a_signed_twilio_stop_opts_out_once(twilio_provider):
    params = {"From": NUMBER, "To": OURS, "Body": "STOP", "MessageSid": "SM" + "1" * 32, "AccountSid": "AC1"}
    answer = twilio_reply(params)
    assert answer.status_code == 200 and answer["Content-Type"].startswith("text/xml")
    assert twilio_reply(params).status_code == 200  # Twilio retrying: a replay
    inbound = InboundMessage.objects.get()
    assert (inbound.provider, inbound.provider_message_id) == ("backup", "SM" + "1" * 32)
    assert numbers_opted_out(phone_numbers=[NUMBER]) == {NUMBER}
    assert len(replies_to()) == 1


def test_a_twilio_reply_with_a_wrong_signature_or_provider_changes_nothing(twilio_provider):
    params = {"From": NUMBER, "To": OURS, "Body": "STOP", "MessageSid": "SM" + "2" * 32}
    assert twilio_reply(params, token="not-the-token").status_code == 401
    assert twilio_reply(params, provider="other").status_code == 404
    assert not InboundMessage.objects.exists() and not Consent.objects.exists()
