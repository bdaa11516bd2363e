"""Delivery receipts: signed per Standard Webhooks, checked here with the `standardwebhooks` package."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise

import pytest
import requests
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from devtools.fakeprovider.receipts import UNDELIVERED_ERROR_CODES
from tests.processes import fake_provider, fake_provider_in_thread, free_port, http_json, wait_for

SECRET = "whsec_" + base64.b64encode(b"a receipt secret of 32 bytes!!!!").decode()
MESSAGE = {"to": "+905551112233", "content": "hi"}


@dataclass
class Receiver:
    """An HTTP server that keeps every POST it gets and answers the next of `statuses` (then 204)."""

    url: str
    statuses: list[int]
    received: list[tuple[float, dict[str, str], str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def receipts(self) -> list[tuple[float, dict[str, str], str]]:
        with self.lock:
            return list(self.received)


@contextmanager
def receiver(*statuses: int) -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            with state.lock:
                state.received.append((time.monotonic(), dict(self.headers), body))
                status = state.statuses.pop(0) if state.statuses else 204
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state = Receiver(f"http://127.0.0.1:{server.server_address[1]}/receipts", list(statuses))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def set_faults(fake, **faults) -> dict:
    response = requests.post(fake.url + "_fake/faults", json=faults, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def send(fake, **headers: str) -> str:
    response = requests.post(fake.url, json=MESSAGE, headers=headers, timeout=5)
    assert response.status_code == 202
    return response.json()["messageId"]


def verified(headers: dict[str, str], body: str) -> dict:
    return Webhook(SECRET).verify(body, headers)


@pytest.fixture
def fake():
    with fake_provider_in_thread(receipt_secret=SECRET) as provider:
        yield provider


def test_an_accepted_message_gets_a_signed_delivered_receipt(fake):
    with receiver() as rx:
        set_faults(fake, receipts_url=rx.url, receipt_delay_ms=100)
        accepted_at = time.monotonic()
        message_id = send(fake)
        wait_for(lambda: rx.receipts(), timeout=5, what="the receipt")
        [(arrived_at, headers, body)] = rx.receipts()

    assert arrived_at - accepted_at >= 0.1
    receipt = verified(headers, body)
    assert receipt == {
        "type": "message.status",
        "messageId": message_id,
        "status": "delivered",
        "errorCode": None,
        "timestamp": receipt["timestamp"],
    }
    sent_at = datetime.fromisoformat(receipt["timestamp"])
    assert sent_at.tzinfo is not None and sent_at.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - sent_at).total_seconds()) < 5
    assert headers["webhook-id"].startswith("rcpt_")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["Content-Type"] == "application/json"
    assert "Authorization" not in headers
    stats = fake.state.stats()
    assert (stats["receipts_sent"], stats["receipts_failed"]) == (1, 0)


def test_the_signature_is_the_standard_webhooks_hmac(fake):
    # Checked by hand too, so the test does not rest on the package the fake provider signs with.
    with receiver() as rx:
        set_faults(fake, receipts_url=rx.url, receipt_delay_ms=0)
        send(fake)
        wait_for(lambda: rx.receipts(), timeout=5, what="the receipt")
        [(_, headers, body)] = rx.receipts()
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.{body}".encode()
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"


def test_every_receipt_has_its_own_id_and_duplicates_get_none(fake):
    with receiver() as rx:
        set_faults(fake, receipts_url=rx.url, receipt_delay_ms=0)
        first = send(fake, **{"Idempotency-Key": "key-1"})
        assert send(fake, **{"Idempotency-Key": "key-1"}) == first  # a duplicate, dropped: no second receipt
        second = send(fake, **{"Idempotency-Key": "key-2"})
        wait_for(lambda: len(rx.receipts()) >= 2, timeout=5, what="two receipts")
        time.sleep(0.3)  # time enough for a wrong third one to arrive
        receipts = rx.receipts()
    assert sorted(verified(h, b)["messageId"] for _, h, b in receipts) == sorted([first, second])
    assert len({h["webhook-id"] for _, h, _ in receipts}) == 2


def test_no_receipts_for_failed_or_unidentified_answers(fake):
    with receiver() as rx:
        set_faults(fake, receipts_url=rx.url, receipt_delay_ms=0, error_rate=1.0)
        assert requests.post(fake.url, json=MESSAGE, timeout=5).status_code == 500
        set_faults(fake, error_rate=0.0, missing_message_id=True)
        assert requests.post(fake.url, json=MESSAGE, timeout=5).status_code == 202
        assert requests.post(fake.url, data=b"not json", timeout=5).status_code == 400
        time.sleep(0.3)
        assert rx.receipts() == []


def test_undelivered_rate_reports_undelivered_with_an_error_code(fake):
    with receiver() as rx:
        set_faults(fake, receipts_url=rx.url, receipt_delay_ms=0, undelivered_rate=1.0)
        message_id = send(fake)
        wait_for(lambda: rx.receipts(), timeout=5, what="the receipt")
        [(_, headers, body)] = rx.receipts()
    receipt = verified(headers, body)
    assert (receipt["messageId"], receipt["status"]) == (message_id, "undelivered")
    assert receipt["errorCode"] in UNDELIVERED_ERROR_CODES


def test_bad_signature_signs_with_a_wrong_key(fake):
    with receiver() as rx:
        set_faults(fake, receipts_url=rx.url, receipt_delay_ms=0, bad_signature=True)
        message_id = send(fake)
        wait_for(lambda: rx.receipts(), timeout=5, what="the receipt")
        [(_, headers, body)] = rx.receipts()
    with pytest.raises(WebhookVerificationError):
        verified(headers, body)
    assert json.loads(body)["messageId"] == message_id  # the receipt is right, only its signature is not


def test_a_failing_receiver_is_retried_a_second_apart_with_the_same_id(fake):
    with receiver(500, 503) as rx:
        set_faults(fake, receipts_url=rx.url, receipt_delay_ms=0)
        send(fake)
        wait_for(lambda: len(rx.receipts()) == 3, timeout=10, what="three attempts")
        attempts = rx.receipts()
    assert len({h["webhook-id"] for _, h, _ in attempts}) == 1
    assert all(later[0] - earlier[0] >= 0.9 for earlier, later in pairwise(attempts))
    verified(attempts[-1][1], attempts[-1][2])
    wait_for(lambda: fake.state.stats()["receipts_sent"] == 1, timeout=2, what="the count")
    assert fake.state.stats()["receipts_failed"] == 0


def test_a_receipt_is_given_up_after_three_retries():
    with fake_provider_in_thread(receipt_secret=SECRET) as fake, receiver(500, 500, 500, 500, 500) as rx:
        set_faults(fake, receipts_url=rx.url, receipt_delay_ms=0)
        send(fake)
        wait_for(lambda: fake.state.stats()["receipts_failed"] == 1, timeout=10, what="the receipt to fail")
        assert len(rx.receipts()) == 4  # the first attempt and three retries
        assert http_json("GET", fake.url + "_fake/stats")["receipts_sent"] == 0


def test_receipt_retries_says_how_many_times_a_receipt_is_tried_again(fake):
    # A real provider keeps trying for hours; `python -m bench chaos` kills the receiver for seconds.
    with receiver(500, 500, 500, 500, 500) as rx:
        set_faults(fake, receipts_url=rx.url, receipt_delay_ms=0, receipt_retries=5)
        send(fake)
        wait_for(lambda: fake.state.stats()["receipts_sent"] == 1, timeout=10, what="the sixth attempt")
        assert len(rx.receipts()) == 6
    assert fake.state.stats()["receipts_failed"] == 0


def test_an_unreachable_receiver_counts_as_failed(fake):
    set_faults(fake, receipts_url=f"http://127.0.0.1:{free_port()}/", receipt_delay_ms=0)
    send(fake)
    wait_for(lambda: fake.state.stats()["receipts_failed"] == 1, timeout=10, what="the receipt to fail")
    assert fake.state.stats()["receipts_sent"] == 0


def test_the_secret_is_never_shown_nor_changed_over_http(fake):
    key_text = SECRET.removeprefix("whsec_")
    for path in ("_fake/faults", "_fake/stats", "_fake/requests", ""):
        assert key_text not in requests.get(fake.url + path, timeout=5).text
    response = requests.post(fake.url + "_fake/faults", json={"receipt_secret": "whsec_AAAA"}, timeout=5)
    assert response.status_code == 400


def test_receipts_need_a_secret():
    with fake_provider_in_thread() as fake, receiver() as rx:
        response = requests.post(fake.url + "_fake/faults", json={"receipts_url": rx.url}, timeout=5)
        assert response.status_code == 400
        assert "secret" in response.json()["message"]
        assert http_json("GET", fake.url + "_fake/faults")["receipts_url"] is None


@pytest.mark.parametrize(
    "faults",
    [
        {"receipts_url": "ftp://example.com/"},
        {"receipts_url": "not a url"},
        {"receipts_url": 42},
        {"receipt_delay_ms": -1},
        {"undelivered_rate": 1.5},
        {"bad_signature": "yes"},
        {"receipt_batch_size": 0},
        {"receipt_batch_size": 1001},
        {"receipt_batch_size": "10"},
        {"receipt_batch_wait_ms": -1},
        {"receipt_retries": -1},
        {"receipt_retries": 86_401},
        {"receipt_retries": "3"},
    ],
)
def test_bad_receipt_faults_are_refused(fake, faults):
    response = requests.post(fake.url + "_fake/faults", json=faults, timeout=5)
    assert response.status_code == 400


def test_receipts_can_be_turned_off_again(fake):
    with receiver() as rx:
        set_faults(fake, receipts_url=rx.url, receipt_delay_ms=0)
        assert set_faults(fake, receipts_url=None)["receipts_url"] is None
        send(fake)
        time.sleep(0.3)
        assert rx.receipts() == []


# --- receipts in batches, as Infobip and Sinch report ---------------------------------------------


def batches(rx: Receiver) -> list[tuple[str, list[dict]]]:
    """Each callback's webhook-id and the receipts it carried, each checked by its signature."""
    found = []
    for _, headers, body in rx.receipts():
        payload = verified(headers, body)
        assert set(payload) == {"type", "receipts"} and payload["type"] == "message.status.batch"
        found.append((headers["webhook-id"], payload["receipts"]))
    return found


def test_receipts_due_together_come_in_one_signed_callback_up_to_the_batch_size(fake):
    with receiver() as rx:
        # "Together": within a second here, so a slow machine sending the seven cannot split them.
        set_faults(fake, receipts_url=rx.url, receipt_delay_ms=200, receipt_batch_size=3, receipt_batch_wait_ms=1000)
        message_ids = [send(fake) for _ in range(7)]  # all due within the same few ms
        wait_for(lambda: sum(len(r) for _, r in batches(rx)) >= 7, timeout=5, what="seven receipts")
        time.sleep(0.3)  # time enough for a wrong eighth one to arrive
        found = batches(rx)

    assert sorted(len(receipts) for _, receipts in found) == [1, 3, 3]
    items = [item for _, receipts in found for item in receipts]
    assert sorted(item["messageId"] for item in items) == sorted(message_ids)
    assert all(set(item) == {"id", "messageId", "status", "errorCode", "timestamp"} for item in items)
    assert len({item["id"] for item in items}) == 7
    assert len({webhook_id for webhook_id, _ in found}) == 3
    assert fake.state.stats()["receipts_sent"] == 7


def test_a_batch_not_yet_full_goes_its_wait_after_its_first_receipt_fell_due(fake):
    with receiver() as rx:
        set_faults(fake, receipts_url=rx.url, receipt_delay_ms=0, receipt_batch_size=100, receipt_batch_wait_ms=400)
        accepted_at = time.monotonic()
        message_id = send(fake)
        wait_for(lambda: rx.receipts(), timeout=5, what="the batch")
        [(arrived_at, _, _)] = rx.receipts()
        [(_, [item])] = batches(rx)
    assert item["messageId"] == message_id
    assert 0.4 <= arrived_at - accepted_at < 3


def test_a_failed_batch_is_retried_whole_under_the_same_ids(fake):
    with receiver(503) as rx:
        set_faults(fake, receipts_url=rx.url, receipt_delay_ms=0, receipt_batch_size=5)
        send(fake)
        send(fake)
        wait_for(lambda: sum(len(r) for _, r in batches(rx)) >= 4, timeout=10, what="the retried batch")
        first, again = batches(rx)[:2]
    assert first[0] == again[0]
    assert [item["id"] for item in first[1]] == [item["id"] for item in again[1]]
    wait_for(lambda: fake.state.stats()["receipts_sent"] == 2, timeout=2, what="the count")


@pytest.mark.process
def test_the_command_signs_with_the_secret_from_its_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_PROVIDER_RECEIPT_SECRET", SECRET)
    with receiver() as rx:
        with fake_provider(tmp_path, "--receipts-url", rx.url, "--receipt-delay-ms", "50") as process:
            response = requests.post(process.url, json=MESSAGE, timeout=5)
            wait_for(lambda: rx.receipts(), timeout=10, what="the receipt")
            stats = http_json("GET", process.url + "_fake/stats")
            assert process.stop() == 0, process.log()
        [(_, headers, body)] = rx.receipts()
    assert verified(headers, body)["messageId"] == response.json()["messageId"]
    assert stats["receipts_sent"] == 1
    assert SECRET.removeprefix("whsec_") not in process.log()
