"""Delivery receipts: POST /api/receipts/ (dispatcher.api.DeliveryReceiptView) and
dispatcher.engine.receipts (verify, record, apply the waiting ones).

Receipts are signed here the way a provider signs them (Standard Webhooks, with the
`standardwebhooks` package); every case asserts what ended up on the message's row.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import threading
import uuid
from datetime import UTC, datetime

import pytest
import requests
from django.db import close_old_connections, connections, transaction
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook

from dispatcher.engine.pipeline import send_chunk
from dispatcher.engine.providers import BaseProvider, ProviderResult
from dispatcher.engine.providers.webhook import WebhookProvider
from dispatcher.engine.receipts import (
    WAITING_RECEIPT_HOURS,
    _GroupCommit,
    _record_now,
    receipts_apply_for_sent,
    receipts_apply_waiting,
)
from messages_app.models import DeliveryReceipt, Message
from messages_app.transitions import (
    AttemptRecord,
    ReceiptIn,
    _record_receipts_portable,
    database_now,
    messages_mark_sent,
)
from tests.factories import claimed_message, deliver, make_message, make_user
from tests.processes import fake_provider_in_thread, wait_for

Status = Message.Status
Delivery = Message.Delivery

pytestmark = pytest.mark.django_db

RECEIPTS_URL = "/api/receipts/"
SECRET = "whsec_" + base64.b64encode(b"receipt signing key, tests only!").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"some other provider's signing key").decode()


@pytest.fixture(autouse=True)
def receipt_secret(settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "RECEIPT_SECRET": SECRET}


@pytest.fixture
def client() -> Client:
    """Anonymous: the signature is a receipt's only credential."""
    return Client()


def receipt_body(
    provider_message_id: str,
    status: str = "delivered",
    *,
    error_code: str | int | None = None,
    at: datetime | None = None,
) -> str:
    return json.dumps(
        {
            "type": "message.status",
            "messageId": provider_message_id,
            "status": status,
            "errorCode": error_code,
            "timestamp": (at or timezone.now()).isoformat(),
        }
    )


def signed(body: str, *, receipt_id: str | None = None, signed_at: datetime | None = None, secret: str = SECRET):
    """The Standard Webhooks headers a provider sends with `body`."""
    receipt_id = receipt_id or f"msg_{uuid.uuid4().hex}"
    signed_at = signed_at or datetime.now(UTC)
    return {
        "webhook-id": receipt_id,
        "webhook-timestamp": str(int(signed_at.timestamp())),
        "webhook-signature": Webhook(secret).sign(receipt_id, signed_at, body),
    }


def post_receipt(client: Client, body: str | bytes, headers: dict[str, str] | None = None):
    return client.post(RECEIPTS_URL, data=body, content_type="application/json", headers=headers or {})


def sent_message(**fields) -> Message:
    fields.setdefault("sent_at", timezone.now() - dt.timedelta(seconds=30))
    fields.setdefault("attempts", 1)
    return make_message(status=Status.SENT, **fields)


def delivery(message: Message) -> tuple:
    """What the row says: (dispatch status, delivery status, error code, when)."""
    m = Message.objects.get(pk=message.pk)
    return (m.status, m.delivery_status, m.delivery_error_code, m.delivery_status_at)


def scrape(client: Client) -> dict[tuple[str, tuple], float]:
    """/metrics as an operator reads it (a staff session; receipts themselves need no login)."""
    operator = Client()
    operator.force_login(make_user(username=f"ops-{uuid.uuid4().hex[:8]}", staff=True))
    response = operator.get("/metrics")
    assert response.status_code == 200, response.content
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def receipts_counted(client: Client) -> dict[str, float]:
    return {
        dict(labels)["outcome"]: value
        for (name, labels), value in scrape(client).items()
        if name == "messaging_receipts_total"
    }


# --- signed: applied to the row ---------------------------------------------------------------


def test_a_signed_delivered_receipt_is_recorded_on_the_message(client):
    message = sent_message()
    at = timezone.now().replace(microsecond=0)

    response = post_receipt(
        client, body := receipt_body(message.provider_message_id, at=at), signed(body, receipt_id="r-1")
    )

    assert response.status_code == 200, response.content
    assert response.json() == {"outcome": "applied", "message_id": message.pk}
    assert delivery(message) == (Status.SENT, Delivery.DELIVERED, "", at)
    receipt = DeliveryReceipt.objects.get()
    assert (receipt.receipt_id, receipt.message_id, receipt.status, receipt.occurred_at) == (
        "r-1",
        message.pk,
        Delivery.DELIVERED,
        at,
    )


@pytest.mark.parametrize("error_code", ["30003", 30003], ids=["string", "number"])
def test_a_signed_undelivered_receipt_keeps_the_providers_error_code(client, error_code):
    # Any offset: the time is kept as the instant it names.
    at = datetime(2030, 1, 31, 12, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=3)))
    message = sent_message(sent_at=at - dt.timedelta(seconds=5))
    body = receipt_body(message.provider_message_id, "undelivered", error_code=error_code, at=at)

    response = post_receipt(client, body, signed(body))

    assert response.status_code == 200, response.content
    assert delivery(message) == (Status.SENT, Delivery.UNDELIVERED, "30003", at)
    assert delivery(message)[3] == datetime(2030, 1, 31, 9, 0, 5, tzinfo=UTC)


def test_a_receipt_needs_no_login_and_no_csrf_token():
    message = sent_message()
    client = Client(enforce_csrf_checks=True)

    response = post_receipt(client, body := receipt_body(message.provider_message_id), signed(body))

    assert response.status_code == 200, response.content
    assert delivery(message)[1] == Delivery.DELIVERED


def test_the_dispatch_status_is_unchanged_and_the_message_stays_in_the_sent_lists(client, api_client):
    message = sent_message()
    before = Message.objects.get(pk=message.pk)
    body = receipt_body(message.provider_message_id, "undelivered", error_code="30005")
    assert post_receipt(client, body, signed(body)).status_code == 200

    after = Message.objects.get(pk=message.pk)
    assert (after.status, after.sent_at, after.attempts, after.provider_message_id) == (
        before.status,
        before.sent_at,
        before.attempts,
        before.provider_message_id,
    )
    sent_list = api_client.get("/api/messages/sent/").json()["results"]
    assert [(m["id"], m["status"], m["delivery_status"], m["delivery_error_code"]) for m in sent_list] == [
        (message.pk, "sent", "undelivered", "30005")
    ]
    # The seed route lists it as before, in the Go service's shape: no delivery fields.
    seed = api_client.get("/messages")
    assert seed.status_code == 200
    [listed] = seed.json()["success"]
    assert listed["id"] == message.pk and listed["status"] == "sent"
    assert not {"delivery_status", "delivery_error_code", "delivery_status_at", "segments"} & set(listed)
    # The status filter still finds it as sent.
    assert [m["id"] for m in api_client.get("/api/messages/?status=sent").json()["results"]] == [message.pk]


def test_a_newer_outcome_is_not_overwritten_by_an_older_receipt(client):
    message = sent_message()
    earlier, later = timezone.now() - dt.timedelta(seconds=20), timezone.now() - dt.timedelta(seconds=10)
    newer = receipt_body(message.provider_message_id, "undelivered", error_code="30006", at=later)
    older = receipt_body(message.provider_message_id, "delivered", at=earlier)

    assert post_receipt(client, newer, signed(newer)).status_code == 200
    assert post_receipt(client, older, signed(older)).status_code == 200

    assert delivery(message) == (Status.SENT, Delivery.UNDELIVERED, "30006", later)
    # Both receipts are on record; the older one simply did not win.
    assert DeliveryReceipt.objects.filter(message=message).count() == 2


def test_a_later_receipt_replaces_an_earlier_outcome(client):
    message = sent_message()
    earlier, later = timezone.now() - dt.timedelta(seconds=20), timezone.now() - dt.timedelta(seconds=10)
    first = receipt_body(message.provider_message_id, "undelivered", error_code="30003", at=earlier)
    second = receipt_body(message.provider_message_id, "delivered", at=later)

    post_receipt(client, first, signed(first))
    post_receipt(client, second, signed(second))

    assert delivery(message) == (Status.SENT, Delivery.DELIVERED, "", later)


# --- refused: 401 and nothing changes -----------------------------------------------------------


def assert_nothing_recorded(message: Message) -> None:
    assert delivery(message) == (Status.SENT, "", "", None)
    assert not DeliveryReceipt.objects.exists()


def test_an_unsigned_receipt_is_refused(client):
    message = sent_message()

    response = post_receipt(client, receipt_body(message.provider_message_id))

    assert response.status_code == 401
    assert_nothing_recorded(message)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_receipt_missing_one_signature_header_is_refused(client, missing):
    message = sent_message()
    body = receipt_body(message.provider_message_id)
    headers = signed(body)
    del headers[missing]

    assert post_receipt(client, body, headers).status_code == 401
    assert_nothing_recorded(message)


def test_a_receipt_signed_with_another_secret_is_refused(client):
    message = sent_message()
    body = receipt_body(message.provider_message_id)

    response = post_receipt(client, body, signed(body, secret=OTHER_SECRET))

    assert response.status_code == 401
    assert "signature" in response.json()["detail"]
    assert_nothing_recorded(message)


def test_a_receipt_whose_body_was_changed_after_signing_is_refused(client):
    message = sent_message()
    headers = signed(receipt_body(message.provider_message_id, "undelivered", error_code="30003"))
    tampered = receipt_body(message.provider_message_id, "delivered")

    assert post_receipt(client, tampered, headers).status_code == 401
    assert_nothing_recorded(message)


def test_a_signature_moved_to_another_receipt_id_is_refused(client):
    message = sent_message()
    body = receipt_body(message.provider_message_id)
    headers = signed(body, receipt_id="r-original")
    headers["webhook-id"] = "r-other"

    assert post_receipt(client, body, headers).status_code == 401
    assert_nothing_recorded(message)


@pytest.mark.parametrize(
    "signature",
    ["", "garbage", "v1,not-base64!!", "v2,AAAA", "v1," + base64.b64encode(b"x" * 32).decode()],
    ids=["empty", "no-version", "bad-base64", "unknown-version", "wrong-mac"],
)
def test_a_malformed_signature_is_refused_not_an_error(client, signature):
    message = sent_message()
    body = receipt_body(message.provider_message_id)
    headers = {**signed(body), "webhook-signature": signature}

    assert post_receipt(client, body, headers).status_code == 401
    assert_nothing_recorded(message)


@pytest.mark.parametrize(
    ("offset", "why"),
    [(dt.timedelta(minutes=-6), "stale"), (dt.timedelta(minutes=6), "future")],
    ids=["stale", "future"],
)
def test_a_receipt_signed_outside_five_minutes_is_refused(client, offset, why):
    message = sent_message()
    body = receipt_body(message.provider_message_id)

    response = post_receipt(client, body, signed(body, signed_at=datetime.now(UTC) + offset))

    assert response.status_code == 401, why
    assert_nothing_recorded(message)


def test_a_receipt_signed_four_minutes_ago_is_still_accepted(client):
    message = sent_message()
    body = receipt_body(message.provider_message_id)

    response = post_receipt(client, body, signed(body, signed_at=datetime.now(UTC) - dt.timedelta(minutes=4)))

    assert response.status_code == 200
    assert delivery(message)[1] == Delivery.DELIVERED


def test_receipts_are_refused_while_no_secret_is_configured(client, settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "RECEIPT_SECRET": ""}
    message = sent_message()
    body = receipt_body(message.provider_message_id)

    response = post_receipt(client, body, signed(body))

    assert response.status_code == 401
    assert "RECEIPT_WEBHOOK_SECRET" in response.json()["detail"]
    assert_nothing_recorded(message)


# --- signed but unreadable: 400 -------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"status": "delivered", "timestamp": "2030-01-01T00:00:00+00:00"},
        {"messageId": "", "status": "delivered", "timestamp": "2030-01-01T00:00:00+00:00"},
        {"messageId": 42, "status": "delivered", "timestamp": "2030-01-01T00:00:00+00:00"},
        {"messageId": "p-1", "status": "read", "timestamp": "2030-01-01T00:00:00+00:00"},
        {"messageId": "p-1", "status": "delivered", "timestamp": "2030-01-01T00:00:00"},
        {"messageId": "p-1", "status": "delivered", "timestamp": "yesterday"},
        {"messageId": "p-1", "status": "delivered"},
        {"messageId": "p-1", "status": "undelivered", "errorCode": ["30003"], "timestamp": "2030-01-01T00:00:00Z"},
    ],
    ids=[
        "not-an-object",
        "no-messageId",
        "empty-messageId",
        "numeric-messageId",
        "unknown-status",
        "naive-timestamp",
        "unparsable-timestamp",
        "no-timestamp",
        "list-errorCode",
    ],
)
def test_a_signed_receipt_that_cannot_be_read_is_400_and_records_nothing(client, payload):
    message = sent_message(provider_message_id="p-1")
    body = json.dumps(payload)

    response = post_receipt(client, body, signed(body))

    assert response.status_code == 400, response.content
    assert_nothing_recorded(message)


def test_a_signed_body_that_is_not_json_is_400_not_a_signature_failure(client):
    message = sent_message()
    body = "delivered, probably"

    response = post_receipt(client, body, signed(body))

    assert response.status_code == 400, response.content
    assert_nothing_recorded(message)


# --- signed, but holding what PostgreSQL or Python cannot: 400, and the rows stay readable ---------

UNSTORABLE = {
    # The year 10000 in UTC, and the year 0 (a Go zero time with a positive offset): psycopg
    # cannot read either back, so the message's pages would answer 500 from then on.
    "timestamp-year-10000-in-utc": ({"timestamp": "9999-12-31T23:59:59-14:00"}, "timestamp: "),
    "timestamp-year-0-in-utc": ({"timestamp": "0001-01-01T00:00:00+14:00"}, "timestamp: "),
    "timestamp-unix-epoch": ({"timestamp": "1970-01-01T00:00:00Z"}, "timestamp: "),
    "timestamp-offset-23-59": ({"timestamp": "2030-01-01T00:00:00+23:59"}, "timestamp: "),
    "timestamp-impossible-date": ({"timestamp": "2030-02-30T00:00:00Z"}, "timestamp "),
    "timestamp-other-digits": ({"timestamp": "\u0662\u0660\u0663\u0660-01-01T00:00:00Z"}, "timestamp "),
    "messageId-nul": ({"messageId": "p-1\x00"}, "messageId "),
    "messageId-lone-surrogate": ({"messageId": "p-1\ud800"}, "messageId "),
    "errorCode-nul": ({"status": "undelivered", "errorCode": "30003\x00"}, "errorCode "),
    "errorCode-lone-surrogate": ({"status": "undelivered", "errorCode": "\udfff"}, "errorCode "),
}


@pytest.mark.parametrize(("fields", "named"), UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_a_receipt_holding_what_the_database_cannot_is_400_naming_the_field(client, api_client, fields, named):
    message = sent_message(provider_message_id="p-1")
    body = json.dumps({**json.loads(receipt_body("p-1")), **fields})

    response = post_receipt(client, body, signed(body))

    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith(named), response.json()
    assert_nothing_recorded(message)
    assert api_client.get(f"/api/messages/{message.pk}/").status_code == 200


def test_a_webhook_id_holding_a_nul_is_400(client):
    message = sent_message()
    body = receipt_body(message.provider_message_id)

    # gunicorn refuses a header holding a NUL before we see it; the service does not count on that.
    response = post_receipt(client, body, signed(body, receipt_id="r-\x00"))

    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith("webhook-id ")
    assert_nothing_recorded(message)


@pytest.mark.parametrize(
    ("item", "named"),
    [
        ({"id": "b-\x00"}, "receipts[1].id "),
        ({"id": "b-\udc80"}, "receipts[1].id "),
        ({"messageId": "p-\x00"}, "receipts[1]: messageId "),
        ({"errorCode": "\x00"}, "receipts[1]: errorCode "),
        ({"timestamp": "0001-01-01T00:00:00+14:00"}, "receipts[1]: timestamp: "),
    ],
    ids=["id-nul", "id-lone-surrogate", "messageId-nul", "errorCode-nul", "timestamp-year-0"],
)
def test_a_batch_item_holding_what_the_database_cannot_refuses_the_batch(client, item, named):
    message = sent_message()
    body = batch_body(
        batch_item("b-1", message.provider_message_id), {**batch_item("b-2", message.provider_message_id), **item}
    )

    response = post_receipt(client, body, signed(body))

    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith(named), response.json()
    assert_nothing_recorded(message)


@pytest.mark.parametrize("opener", ["[", "{"])
def test_a_signed_receipt_nested_100000_deep_is_400_not_a_crash(client, opener):
    message = sent_message()
    body = ('{"a":' * 100_000 + "1" + "}" * 100_000) if opener == "{" else ("[" * 100_000 + "]" * 100_000)

    response = post_receipt(client, body, signed(body))

    assert response.status_code == 400, response.content[:300]
    assert "nested deeper than" in response.json()["detail"]
    assert_nothing_recorded(message)


def test_a_signed_receipt_with_an_integer_too_long_to_read_is_a_plain_400(client):
    message = sent_message()
    body = json.dumps({**json.loads(receipt_body(message.provider_message_id)), "errorCode": 0})
    body = body.replace('"errorCode": 0', '"errorCode": ' + "9" * 5001)

    response = post_receipt(client, body, signed(body))

    assert response.status_code == 400, response.content[:300]
    assert "set_int_max_str_digits" not in response.json()["detail"]
    assert_nothing_recorded(message)


# --- long receipt ids: kept whole, as their digest --------------------------------------------------

LONG_ID = "msg_" + "x" * 300


def test_two_long_receipt_ids_alike_in_their_first_255_characters_are_two_receipts(client):
    first, second = sent_message(), sent_message()
    one, two = receipt_body(first.provider_message_id), receipt_body(second.provider_message_id)

    answers = [
        post_receipt(client, one, signed(one, receipt_id=LONG_ID + "-1")),
        post_receipt(client, two, signed(two, receipt_id=LONG_ID + "-2")),
    ]

    assert [(a.status_code, a.json()["outcome"]) for a in answers] == [(200, "applied"), (200, "applied")]
    assert delivery(first)[1] == delivery(second)[1] == Delivery.DELIVERED
    assert DeliveryReceipt.objects.count() == 2


def test_a_long_receipt_id_sent_again_is_still_a_replay(client):
    message = sent_message()
    body = receipt_body(message.provider_message_id)
    assert post_receipt(client, body, signed(body, receipt_id=LONG_ID)).json()["outcome"] == "applied"

    again = post_receipt(client, body, signed(body, receipt_id=LONG_ID))

    assert again.json() == {"outcome": "replayed", "message_id": None}
    assert DeliveryReceipt.objects.count() == 1
    # Kept as its digest: short enough for the column, the same for the same id.
    assert DeliveryReceipt.objects.get().receipt_id == "sha256:" + hashlib.sha256(LONG_ID.encode()).hexdigest()


def test_long_ids_in_a_batch_alike_in_their_first_255_characters_are_two_receipts(client):
    first, second = sent_message(), sent_message()
    body = batch_body(
        batch_item(LONG_ID + "-1", first.provider_message_id), batch_item(LONG_ID + "-2", second.provider_message_id)
    )

    response = post_receipt(client, body, signed(body))

    assert response.json() == {"outcome": "batch", "applied": 2, "waiting": 0, "replayed": 0}
    assert DeliveryReceipt.objects.count() == 2


# --- replays and duplicates -------------------------------------------------------------------------


def test_a_replayed_receipt_id_is_ignored_even_with_another_body(client):
    message = sent_message()
    at = timezone.now() - dt.timedelta(seconds=5)
    first = receipt_body(message.provider_message_id, "delivered", at=at)
    assert post_receipt(client, first, signed(first, receipt_id="r-1")).status_code == 200

    same = post_receipt(client, first, signed(first, receipt_id="r-1"))
    # A replay carrying a newer outcome under the same id changes nothing either.
    other = receipt_body(message.provider_message_id, "undelivered", error_code="30003", at=timezone.now())
    changed = post_receipt(client, other, signed(other, receipt_id="r-1"))

    assert (same.status_code, same.json()) == (200, {"outcome": "replayed", "message_id": None})
    assert (changed.status_code, changed.json()["outcome"]) == (200, "replayed")
    assert delivery(message) == (Status.SENT, Delivery.DELIVERED, "", at)
    assert DeliveryReceipt.objects.count() == 1
    assert receipts_counted(client) == {"delivered": 1, "undelivered": 0, "unmatched": 0, "replayed": 2}


@pytest.mark.django_db(transaction=True)
def test_the_same_receipt_delivered_twice_at_once_is_recorded_once():
    message = sent_message()
    body = receipt_body(message.provider_message_id, "undelivered", error_code="30007")
    headers = signed(body, receipt_id="r-twice")
    answers: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def provider_retries() -> None:
        try:
            start.wait(10)
            response = post_receipt(Client(), body, headers)
            answers.append((response.status_code, response.json()["outcome"]))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=provider_retries) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert not errors, errors
    assert sorted(answers) == [(200, "applied"), (200, "replayed"), (200, "replayed"), (200, "replayed")]
    assert DeliveryReceipt.objects.filter(receipt_id="r-twice").count() == 1
    assert delivery(message)[:3] == (Status.SENT, Delivery.UNDELIVERED, "30007")


# --- unknown messageId ----------------------------------------------------------------------------


def test_a_receipt_for_an_unknown_message_id_is_accepted_counted_and_logged(client, caplog):
    message = sent_message()
    body = receipt_body("nobody-sent-this", "delivered")

    with caplog.at_level(logging.WARNING, logger="dispatcher.engine.receipts"):
        response = post_receipt(client, body, signed(body, receipt_id="r-unknown"))

    # 2xx, so the provider stops retrying it.
    assert response.status_code == 202, response.content
    assert response.json() == {"outcome": "waiting", "message_id": None}
    kept = DeliveryReceipt.objects.get()
    assert (kept.receipt_id, kept.provider_message_id, kept.message_id) == ("r-unknown", "nobody-sent-this", None)
    assert delivery(message) == (Status.SENT, "", "", None)
    assert receipts_counted(client) == {"delivered": 0, "undelivered": 0, "unmatched": 1, "replayed": 0}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("nobody-sent-this" in line and "r-unknown" in line for line in warnings), warnings


def test_a_receipt_for_a_message_that_is_not_sent_is_not_applied_to_it(client):
    failed = make_message(status=Status.FAILED, provider_message_id="p-failed")
    body = receipt_body("p-failed")

    assert post_receipt(client, body, signed(body)).status_code == 202

    assert delivery(failed) == (Status.FAILED, "", "", None)


# --- before the send is recorded (a fast provider) -------------------------------------------------


class FastReceiptProvider(BaseProvider):
    """A provider so fast that its receipt reaches us before `send` has returned,
    so before the pipeline records the message as sent."""

    def __init__(
        self, client: Client, status: str = "delivered", error_code: str | None = None, *, batch: bool = False
    ) -> None:
        self.client = client
        self.status = status
        self.error_code = error_code
        self.batch = batch  # in a batch of one, as a provider that reports in batches sends it
        self.answers: list[tuple[int, dict]] = []
        self.receipt_times: list[datetime] = []

    def send(self, message: Message) -> ProviderResult:
        provider_message_id = f"fast-{message.uuid}"
        at = timezone.now()
        self.receipt_times.append(at)
        body = receipt_body(provider_message_id, self.status, error_code=self.error_code, at=at)
        if self.batch:
            body = batch_body({"id": f"fast-{message.uuid}-receipt", **json.loads(body)})
        response = post_receipt(self.client, body, signed(body))
        self.answers.append((response.status_code, response.json()))
        return ProviderResult(message_id=provider_message_id, http_status=202)


def test_a_receipt_that_comes_before_the_send_is_recorded_is_applied_when_it_is(client):
    message = claimed_message()
    provider = FastReceiptProvider(client, "undelivered", error_code="30008")

    report = send_chunk(message_ids=[message.pk], claim_token=message.claim_token, provider=provider)

    assert [o.outcome for o in report.outcomes] == ["sent"]
    # While the message was still being sent, the receipt was kept (202), not lost.
    assert provider.answers == [(202, {"outcome": "waiting", "message_id": None})]
    # Recording the send applied it.
    assert delivery(message) == (Status.SENT, Delivery.UNDELIVERED, "30008", provider.receipt_times[0])
    assert DeliveryReceipt.objects.get().message_id == message.pk
    assert receipts_apply_waiting() == 0  # nothing left waiting


def test_waiting_receipts_apply_oldest_first_so_the_latest_outcome_stays(client):
    message = claimed_message()
    provider_message_id = "p-fast"
    earlier, later = timezone.now() - dt.timedelta(seconds=2), timezone.now() - dt.timedelta(seconds=1)
    # They arrive in the wrong order, both before the send is recorded.
    for status, at in (("delivered", later), ("undelivered", earlier)):
        body = receipt_body(provider_message_id, status, error_code="30003" if status == "undelivered" else None, at=at)
        assert post_receipt(client, body, signed(body)).status_code == 202

    messages_mark_sent(
        claim_token=message.claim_token,
        attempts=[AttemptRecord(message.pk, 1, timezone.now(), provider_message_id=provider_message_id)],
        sent_at=database_now(),
        delivery_cache_pending=False,
    )
    # What recording a send does next (dispatcher.engine.recording.record_results).
    assert receipts_apply_for_sent(provider_message_ids=[provider_message_id]) == 2

    assert delivery(message) == (Status.SENT, Delivery.DELIVERED, "", later)
    assert set(DeliveryReceipt.objects.values_list("message_id", flat=True)) == {message.pk}


@pytest.mark.django_db(transaction=True)
def test_a_receipt_that_crosses_the_send_being_recorded_is_applied_by_the_sweep():
    """The receipt comes while the transaction recording the send is open: neither sees
    the other, so the receipt waits; `receipts_apply_waiting` (run by the pacing window
    every few seconds) applies it."""
    message = claimed_message()
    recording = threading.Event()
    receipt_answered = threading.Event()
    errors: list[BaseException] = []

    def record_the_send() -> None:
        try:
            with transaction.atomic():
                moved = messages_mark_sent(
                    claim_token=message.claim_token,
                    attempts=[AttemptRecord(message.pk, 1, timezone.now(), provider_message_id="p-crossed")],
                    sent_at=database_now(),
                    delivery_cache_pending=False,
                )
                assert moved == {message.pk}
                recording.set()
                assert receipt_answered.wait(10)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    worker = threading.Thread(target=record_the_send)
    worker.start()
    assert recording.wait(10), errors
    body = receipt_body("p-crossed", "delivered")
    response = post_receipt(Client(), body, signed(body))
    receipt_answered.set()
    worker.join(10)
    close_old_connections()

    assert not errors, errors
    assert response.status_code == 202  # the send was not committed yet
    assert delivery(message)[:2] == (Status.SENT, "")  # and it missed the receipt: the race
    assert receipts_apply_waiting() == 1
    assert delivery(message)[:2] == (Status.SENT, Delivery.DELIVERED)
    assert DeliveryReceipt.objects.get().message_id == message.pk
    assert receipts_apply_waiting() == 0


def test_the_sweep_applies_a_waiting_receipt_and_keeps_unknown_ones_waiting(client):
    message = claimed_message()
    for provider_message_id in ("p-later-sent", "p-never-sent"):
        body = receipt_body(provider_message_id, "delivered")
        assert post_receipt(client, body, signed(body)).status_code == 202
    # The send is recorded by a path that did not see the receipt (a crossed transaction).
    Message.objects.filter(pk=message.pk).update(
        status=Status.SENT, provider_message_id="p-later-sent", sent_at=timezone.now(), claim_token=None
    )

    assert receipts_apply_waiting() == 1

    assert delivery(message)[:2] == (Status.SENT, Delivery.DELIVERED)
    assert DeliveryReceipt.objects.get(provider_message_id="p-never-sent").message_id is None


def test_the_sweep_leaves_receipts_older_than_the_waiting_window(client):
    message = sent_message(provider_message_id="p-old")
    DeliveryReceipt.objects.create(
        receipt_id="r-old", provider_message_id="p-old", status=Delivery.DELIVERED, occurred_at=timezone.now()
    )
    DeliveryReceipt.objects.filter(receipt_id="r-old").update(
        received_at=timezone.now() - dt.timedelta(hours=WAITING_RECEIPT_HOURS, minutes=1)
    )

    assert receipts_apply_waiting() == 0
    assert delivery(message)[1] == ""


# --- /metrics ------------------------------------------------------------------------------------


def test_metrics_count_receipts_by_outcome_and_the_time_from_sent_to_outcome(client):
    now = timezone.now()
    first = sent_message(sent_at=now - dt.timedelta(seconds=4))
    second = sent_message(sent_at=now - dt.timedelta(seconds=70))
    bodies = [
        receipt_body(first.provider_message_id, "delivered", at=now),  # 4 s after sending
        receipt_body(second.provider_message_id, "undelivered", error_code="30003", at=now),  # 70 s
        receipt_body("unknown-id", "delivered", at=now),
    ]
    for body in bodies:
        post_receipt(client, body, signed(body, receipt_id=f"r-{bodies.index(body)}"))
    post_receipt(client, bodies[0], signed(bodies[0], receipt_id="r-0"))  # a replay

    samples = scrape(client)

    assert receipts_counted(client) == {"delivered": 1, "undelivered": 1, "unmatched": 1, "replayed": 1}
    latency = "messaging_delivery_latency_seconds"
    assert samples[(f"{latency}_count", ())] == 2
    assert samples[(f"{latency}_sum", ())] == pytest.approx(74, abs=0.01)
    assert samples[(f"{latency}_bucket", (("le", "2.5"),))] == 0
    assert samples[(f"{latency}_bucket", (("le", "5.0"),))] == 1
    assert samples[(f"{latency}_bucket", (("le", "60.0"),))] == 1
    assert samples[(f"{latency}_bucket", (("le", "300.0"),))] == 2


def test_metrics_count_a_receipt_applied_after_the_send_by_its_outcome(client):
    message = claimed_message()
    provider = FastReceiptProvider(client, "delivered")
    send_chunk(message_ids=[message.pk], claim_token=message.claim_token, provider=provider)
    assert delivery(message)[1] == Delivery.DELIVERED

    samples = scrape(client)

    assert receipts_counted(client)["delivered"] == 1
    assert samples[("messaging_delivery_latency_seconds_count", ())] == 1


# --- a provider's batch of receipts in one callback -----------------------------------------------


def receipt_in(receipt_id: str) -> ReceiptIn:
    return ReceiptIn(receipt_id, "p-1", "delivered", "", timezone.now())


def batch_item(receipt_id: str, provider_message_id: str, status: str = "delivered", **fields) -> dict:
    return {"id": receipt_id, **json.loads(receipt_body(provider_message_id, status, **fields))}


def batch_body(*items: dict) -> str:
    return json.dumps({"type": "message.status.batch", "receipts": list(items)})


def test_a_signed_batch_records_each_receipt_on_its_message(client):
    at = timezone.now().replace(microsecond=0) - dt.timedelta(seconds=2)
    delivered, undelivered, later = sent_message(), sent_message(), sent_message()
    body = batch_body(
        batch_item("b-1", delivered.provider_message_id, at=at),
        batch_item("b-2", undelivered.provider_message_id, "undelivered", error_code=30005, at=at),
        batch_item("b-3", "not-sent-yet", at=at),
    )

    response = post_receipt(client, body, signed(body, receipt_id="callback-1"))

    assert response.status_code == 200, response.content
    assert response.json() == {"outcome": "batch", "applied": 2, "waiting": 1, "replayed": 0}
    assert delivery(delivered) == (Status.SENT, Delivery.DELIVERED, "", at)
    assert delivery(undelivered) == (Status.SENT, Delivery.UNDELIVERED, "30005", at)
    assert delivery(later) == (Status.SENT, "", "", None)
    kept = dict(DeliveryReceipt.objects.values_list("receipt_id", "message_id"))
    assert kept == {"b-1": delivered.pk, "b-2": undelivered.pk, "b-3": None}
    assert receipts_counted(client) == {"delivered": 1, "undelivered": 1, "unmatched": 1, "replayed": 0}


def test_a_batch_knows_a_replay_by_each_receipts_own_id(client):
    message, other = sent_message(), sent_message()
    at = timezone.now() - dt.timedelta(seconds=5)
    single = receipt_body(message.provider_message_id, at=at)
    assert post_receipt(client, single, signed(single, receipt_id="r-known")).status_code == 200
    body = batch_body(
        # Already taken one by one, and given twice in this batch: replays, whatever they say.
        batch_item("r-known", message.provider_message_id, "undelivered", error_code="30003"),
        batch_item("b-new", other.provider_message_id, at=at),
        batch_item("b-new", other.provider_message_id, "undelivered", error_code="30003"),
    )

    first = post_receipt(client, body, signed(body, receipt_id="callback-1"))
    again = post_receipt(client, body, signed(body, receipt_id="callback-1"))  # the provider retries it

    assert first.json() == {"outcome": "batch", "applied": 1, "waiting": 0, "replayed": 2}
    assert again.json() == {"outcome": "batch", "applied": 0, "waiting": 0, "replayed": 3}
    assert delivery(message) == (Status.SENT, Delivery.DELIVERED, "", at)
    assert delivery(other) == (Status.SENT, Delivery.DELIVERED, "", at)
    assert DeliveryReceipt.objects.count() == 2


def test_of_two_receipts_for_one_message_in_a_batch_the_latest_outcome_stays(client):
    message = sent_message()
    earlier, latest = timezone.now() - dt.timedelta(seconds=9), timezone.now() - dt.timedelta(seconds=1)
    body = batch_body(
        batch_item("b-late", message.provider_message_id, "delivered", at=latest),
        batch_item("b-early", message.provider_message_id, "undelivered", error_code="30008", at=earlier),
    )

    response = post_receipt(client, body, signed(body))

    assert response.json() == {"outcome": "batch", "applied": 2, "waiting": 0, "replayed": 0}
    assert delivery(message) == (Status.SENT, Delivery.DELIVERED, "", latest)


BAD_BATCHES = {
    "no list": {"type": "message.status.batch", "receipts": "b-1"},
    "empty": {"type": "message.status.batch", "receipts": []},
    "too many": {"type": "message.status.batch", "receipts": [{"id": f"b-{n}"} for n in range(1001)]},
    "not an object": {"type": "message.status.batch", "receipts": ["b-1"]},
    "no id": {"type": "message.status.batch", "receipts": [{"messageId": "p-1", "status": "delivered"}]},
    "id not a string": {"type": "message.status.batch", "receipts": [{"id": 42}]},
}


@pytest.mark.parametrize("payload", BAD_BATCHES.values(), ids=BAD_BATCHES.keys())
def test_a_batch_that_cannot_be_read_is_400_and_records_nothing(client, payload):
    message = sent_message()
    body = json.dumps(payload)

    response = post_receipt(client, body, signed(body))

    assert response.status_code == 400, response.content
    assert "receipts" in response.json()["detail"]
    assert DeliveryReceipt.objects.count() == 0
    assert delivery(message) == (Status.SENT, "", "", None)


def test_one_unreadable_receipt_refuses_the_whole_batch(client):
    message = sent_message()
    body = batch_body(
        batch_item("b-1", message.provider_message_id),
        batch_item("b-2", message.provider_message_id, "lost in the post"),
    )

    response = post_receipt(client, body, signed(body))

    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith("receipts[1]: status must be")
    assert DeliveryReceipt.objects.count() == 0
    assert delivery(message) == (Status.SENT, "", "", None)


def test_a_badly_signed_batch_is_refused_and_records_nothing(client):
    message = sent_message()
    body = batch_body(batch_item("b-1", message.provider_message_id))

    response = post_receipt(client, body, signed(body, secret=OTHER_SECRET))

    assert response.status_code == 401, response.content
    assert DeliveryReceipt.objects.count() == 0
    assert delivery(message) == (Status.SENT, "", "", None)


def test_a_waiting_receipt_from_a_batch_is_applied_when_its_send_is_recorded(client):
    message = claimed_message()
    provider = FastReceiptProvider(client, "undelivered", "30003", batch=True)

    send_chunk(message_ids=[message.pk], claim_token=message.claim_token, provider=provider)

    assert provider.answers == [(200, {"outcome": "batch", "applied": 0, "waiting": 1, "replayed": 0})]
    assert delivery(message)[:3] == (Status.SENT, Delivery.UNDELIVERED, "30003")
    assert DeliveryReceipt.objects.get().message_id == message.pk


def test_sqlite_records_a_batch_as_postgresql_does(client):
    """The portable path (a transaction with a savepoint per receipt), run here on
    PostgreSQL against the same cases as the one-statement path."""
    message, other = sent_message(), sent_message()
    at = timezone.now() - dt.timedelta(seconds=3)
    DeliveryReceipt.objects.create(
        receipt_id="r-known", provider_message_id=message.provider_message_id, status="delivered", occurred_at=at
    )
    receipts = [
        ReceiptIn("r-known", message.provider_message_id, "undelivered", "30003", at),
        ReceiptIn("b-1", other.provider_message_id, "undelivered", "30005", at),
        ReceiptIn("b-2", "not-sent-yet", "delivered", "", at),
    ]

    kept = _record_receipts_portable(receipts)

    assert set(kept) == {"b-1", "b-2"}
    assert (kept["b-1"].message_id, kept["b-2"].message_id) == (other.pk, None)
    assert delivery(other) == (Status.SENT, Delivery.UNDELIVERED, "30005", at)
    assert delivery(message) == (Status.SENT, "", "", None)


@pytest.mark.django_db(transaction=True)
def test_the_fake_providers_batched_receipts_reach_every_message_through_a_real_server(live_server, settings):
    """Messages sent through the webhook to the fake provider, which calls the live
    server back with signed batches (up to 8 receipts each, some undelivered)."""
    with fake_provider_in_thread(receipt_secret=SECRET) as fake:
        settings.DISPATCHER = {**settings.DISPATCHER, "WEBHOOK_URL": fake.url}
        fake.server.state.faults.update(
            {
                "receipts_url": live_server.url + RECEIPTS_URL,
                "receipt_delay_ms": 50,
                "receipt_batch_size": 8,
                "undelivered_rate": 0.3,
            }
        )
        messages = [claimed_message(content=f"batched receipt {n}") for n in range(30)]
        provider = WebhookProvider()
        try:
            for message in messages:
                assert deliver(message, provider).outcome == "sent"
        finally:
            provider.close()

        def all_recorded() -> bool:
            return not Message.objects.filter(pk__in=[m.pk for m in messages], delivery_status="").exists()

        wait_for(all_recorded, timeout=20, what="every receipt")
        # The last answers may still be on their way back to the fake provider.
        wait_for(lambda: fake.server.state.stats()["receipts_sent"] >= 30, timeout=5, what="the answers")
        stats = fake.server.state.stats()

    rows = list(Message.objects.filter(pk__in=[m.pk for m in messages]).values_list("status", "delivery_status"))
    assert {status for status, _ in rows} == {Status.SENT}
    assert {outcome for _, outcome in rows} <= {Delivery.DELIVERED, Delivery.UNDELIVERED}
    assert (stats["receipts_sent"], stats["receipts_failed"]) == (30, 0)
    kept = DeliveryReceipt.objects.filter(message__in=[m.pk for m in messages])
    assert kept.count() == 30 and kept.values("message").distinct().count() == 30


# --- receipts from concurrent requests are written together -----------------------------------------


def test_receipts_arriving_during_a_write_are_written_together_next():
    """dispatcher.engine.receipts._GroupCommit with a writer that holds its first write
    until three more requests are queued: those three go in one write, each request
    gets its own answers."""
    first_write_started, release_first_write = threading.Event(), threading.Event()
    writes: list[list[str]] = []

    def write(receipts):
        writes.append([r.receipt_id for r in receipts])
        if len(writes) == 1:
            first_write_started.set()
            assert release_first_write.wait(10)
        return [f"answer for {r.receipt_id}" for r in receipts]

    group = _GroupCommit(write)
    answers: dict[str, list[str]] = {}

    def request(*receipt_ids: str) -> None:
        answers[receipt_ids[0]] = group.record([receipt_in(receipt_id) for receipt_id in receipt_ids])

    first = threading.Thread(target=request, args=("r-1",))
    first.start()
    assert first_write_started.wait(10)
    others = [threading.Thread(target=request, args=ids) for ids in (("r-2",), ("r-3", "r-4"), ("r-5",))]
    for thread in others:
        thread.start()
    wait_for(lambda: len(group._queue) == 3, timeout=10, what="three queued requests")
    release_first_write.set()
    for thread in [first, *others]:
        thread.join(10)

    assert writes[0] == ["r-1"]
    assert sorted(writes[1]) == ["r-2", "r-3", "r-4", "r-5"] and len(writes) == 2
    assert answers == {
        "r-1": ["answer for r-1"],
        "r-2": ["answer for r-2"],
        "r-3": ["answer for r-3", "answer for r-4"],
        "r-5": ["answer for r-5"],
    }
    assert group._queue == [] and not group._writing


def test_a_failed_group_write_fails_each_of_its_requests_and_the_next_one_writes():
    first_write_started, release_first_write = threading.Event(), threading.Event()
    calls: list[int] = []

    def write(receipts):
        calls.append(len(receipts))
        if len(calls) == 1:
            first_write_started.set()
            assert release_first_write.wait(10)
        if len(calls) == 2:
            raise RuntimeError("the database went away")
        return ["ok"] * len(receipts)

    group = _GroupCommit(write)
    outcomes: dict[str, object] = {}

    def request(receipt_id: str) -> None:
        try:
            outcomes[receipt_id] = group.record([receipt_in(receipt_id)])
        except RuntimeError as exc:
            outcomes[receipt_id] = str(exc)

    threads = [threading.Thread(target=request, args=("r-1",))]
    threads[0].start()
    assert first_write_started.wait(10)
    threads += [threading.Thread(target=request, args=(f"r-{n}",)) for n in (2, 3)]
    for thread in threads[1:]:
        thread.start()
    wait_for(lambda: len(group._queue) == 2, timeout=10, what="two queued requests")
    release_first_write.set()
    for thread in threads:
        thread.join(10)

    assert outcomes == {"r-1": ["ok"], "r-2": "the database went away", "r-3": "the database went away"}
    assert not group._writing
    assert group.record([receipt_in("r-4")]) == ["ok"]  # nobody is left holding the turn


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("bad_id", "error"), [("p-\x00", "DataError"), ("p-\ud800", "UnicodeEncodeError")], ids=["nul", "lone-surrogate"]
)
def test_a_receipt_the_database_refuses_fails_only_its_own_request_not_the_others_of_its_group(bad_id, error):
    """The real writer (one statement on PostgreSQL): three requests queued behind a first
    write go together, and the middle one carries text PostgreSQL cannot store (intake
    refuses it too; this is the write's own guard). The other two are recorded all the same."""
    messages = {name: sent_message() for name in ("r-1", "r-2", "r-4")}
    first_write_started, release_first_write = threading.Event(), threading.Event()
    writes: list[int] = []

    def write(receipts):
        writes.append(len(receipts))
        if len(writes) == 1:
            first_write_started.set()
            assert release_first_write.wait(10)
        return _record_now(receipts)

    group = _GroupCommit(write)
    answers: dict[str, object] = {}

    def request(receipt_id: str, provider_message_id: str) -> None:
        try:
            receipt = ReceiptIn(receipt_id, provider_message_id, "delivered", "", timezone.now())
            answers[receipt_id] = [result.outcome for result in group.record([receipt])]
        except Exception as exc:  # the refused request's own answer
            answers[receipt_id] = type(exc).__name__
        finally:
            connections.close_all()

    threads = [threading.Thread(target=request, args=("r-1", messages["r-1"].provider_message_id))]
    threads[0].start()
    assert first_write_started.wait(10)
    later = [
        ("r-2", messages["r-2"].provider_message_id),
        ("r-3", bad_id),
        ("r-4", messages["r-4"].provider_message_id),
    ]
    for queued, (receipt_id, provider_message_id) in enumerate(later, start=1):
        threads.append(threading.Thread(target=request, args=(receipt_id, provider_message_id)))
        threads[-1].start()
        # One at a time, so that the group is written in this order.
        wait_for(lambda queued=queued: len(group._queue) == queued, timeout=10, what="a queued request")
    release_first_write.set()
    for thread in threads:
        thread.join(10)

    assert answers == {"r-1": ["applied"], "r-2": ["applied"], "r-3": error, "r-4": ["applied"]}
    assert all(delivery(message)[1] == Delivery.DELIVERED for message in messages.values())
    assert set(DeliveryReceipt.objects.values_list("receipt_id", flat=True)) == {"r-1", "r-2", "r-4"}
    assert not group._writing and group._queue == []


@pytest.mark.django_db(transaction=True)
def test_concurrent_single_receipts_through_a_real_server_each_get_their_answer(live_server):
    """40 receipts (4 of them sent twice) from 8 threads at once against the live
    server: written in groups, each answered as if alone, each row right."""
    messages = [sent_message() for _ in range(36)]
    bodies = [
        (f"r-{n}", receipt_body(m.provider_message_id, "undelivered" if n % 3 == 0 else "delivered", error_code=None))
        for n, m in enumerate(messages)
    ]
    bodies += [bodies[n] for n in (0, 5, 10, 15)]  # the provider retried these
    bodies.append(("r-unknown", receipt_body("nobody-sent-this")))
    work = list(enumerate(bodies))
    answers: dict[int, tuple[int, str]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)
    lock = threading.Lock()

    def provider() -> None:
        try:
            start.wait(10)
            with requests.Session() as session:
                while True:
                    with lock:
                        if not work:
                            return
                        index, (receipt_id, body) = work.pop()
                    headers = {"Content-Type": "application/json", **signed(body, receipt_id=receipt_id)}
                    response = session.post(live_server.url + RECEIPTS_URL, data=body, headers=headers, timeout=30)
                    answers[index] = (response.status_code, response.json()["outcome"])
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=provider) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert not errors, errors
    outcomes = sorted(answers.values())
    assert outcomes.count((200, "applied")) == 36
    assert outcomes.count((200, "replayed")) == 4
    assert outcomes.count((202, "waiting")) == 1
    for n, message in enumerate(messages):
        assert delivery(message)[1] == (Delivery.UNDELIVERED if n % 3 == 0 else Delivery.DELIVERED)
    assert DeliveryReceipt.objects.count() == 37
