"""The Twilio backend (dispatcher/engine/providers/twilio.py) against a local Twilio-compatible fake
(no test reaches the internet), and Twilio's status callbacks (POST /api/receipts/twilio/<name>/),
checked with Twilio's own request validator."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode

import pytest
from django.test import Client
from twilio.request_validator import RequestValidator

from dispatcher.engine.providers import ProviderError, ProviderSet, build_provider
from dispatcher.engine.providers.twilio import TwilioProvider
from dispatcher.providers_conf import provider_specs_from_env
from messages_app.models import DeliveryAttempt, DeliveryReceipt, Message
from messages_app.transitions import database_now
from tests.factories import claimed_message, deliver, make_message
from tests.processes import fake_provider_in_thread, free_port

Status = Message.Status
Delivery = Message.Delivery

pytestmark = pytest.mark.django_db

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-auth-token-for-tests"
FROM = "+15005550006"
CALLBACK = "http://testserver/api/receipts/twilio/backup/"


# --- a local Twilio: POST /2010-04-01/Accounts/<sid>/Messages.json ---------------------------


@dataclass
class TwilioRequest:
    path: str
    fields: dict[str, str]
    authorized: bool
    idempotency_key: str | None
    answered: int = 0


@dataclass
class FakeTwilio:
    url: str
    requests: list[TwilioRequest] = field(default_factory=list)
    # Answers to play first: a status (an error in Twilio's shape), or ("latency", seconds).
    script: list = field(default_factory=list)
    retry_after: str | None = None
    sid: str | None = None  # the sid to answer instead of a new one each time
    lock: threading.Lock = field(default_factory=threading.Lock)


class _TwilioHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def _answer(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        fake: FakeTwilio = self.server.fake
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        fields = {k: v[0] for k, v in parse_qs(body).items()}
        expected = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
        entry = TwilioRequest(
            path=self.path,
            fields=fields,
            authorized=self.headers.get("Authorization") == expected,
            idempotency_key=self.headers.get("Idempotency-Key"),
        )
        with fake.lock:
            fake.requests.append(entry)
            step = fake.script.pop(0) if fake.script else None
        if isinstance(step, tuple) and step[0] == "error":  # ("error", status, Twilio's code)
            entry.answered = step[1]
            return self._answer(step[1], {"code": step[2], "message": f"error {step[2]}", "status": step[1]})
        if isinstance(step, tuple):  # ("latency", seconds): answer late, the message taken all the same
            time.sleep(step[1])
            step = None
        if self.path != f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json":
            entry.answered = 404
            return self._answer(404, {"code": 20404, "message": "The requested resource was not found", "status": 404})
        if not entry.authorized:
            entry.answered = 401
            return self._answer(401, {"code": 20003, "message": "Authenticate", "status": 401})
        if step is not None:
            entry.answered = step
            headers = {"Retry-After": fake.retry_after} if step == 429 and fake.retry_after else None
            code = {400: 21211, 429: 20429}.get(step, 20500)
            return self._answer(step, {"code": code, "message": f"error {step}", "status": step}, headers)
        if "To" not in fields or "Body" not in fields or not ({"From", "MessagingServiceSid"} & set(fields)):
            entry.answered = 400
            return self._answer(400, {"code": 21604, "message": "A 'To' phone number is required.", "status": 400})
        sid = fake.sid or "SM" + uuid.uuid4().hex
        entry.answered = 201
        self._answer(
            201,
            {
                "sid": sid,
                "account_sid": ACCOUNT_SID,
                "api_version": "2010-04-01",
                "body": fields["Body"],
                "direction": "outbound-api",
                "from": fields.get("From"),
                "messaging_service_sid": fields.get("MessagingServiceSid"),
                "num_segments": "1",
                "status": "queued",
                "to": fields["To"],
                "error_code": None,
                "error_message": None,
                "price": None,
                "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json",
            },
        )


@contextmanager
def fake_twilio():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TwilioHandler)
    server.daemon_threads = True
    server.fake = FakeTwilio(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.fake
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def twilio():
    with fake_twilio() as fake:
        yield fake


def twilio_env(url: str, **more: str) -> dict[str, str]:
    return {
        "PROVIDERS": "backup",
        "PROVIDER_BACKUP_BACKEND": "twilio",
        "PROVIDER_BACKUP_URL": url,
        "PROVIDER_BACKUP_ACCOUNT_SID": ACCOUNT_SID,
        "PROVIDER_BACKUP_AUTH_TOKEN": AUTH_TOKEN,
        "PROVIDER_BACKUP_FROM": FROM,
        "PROVIDER_BACKUP_STATUS_CALLBACK_URL": CALLBACK,
        "PROVIDER_BACKUP_TIMEOUT_SECONDS": "1",
        **more,
    }


@pytest.fixture
def configure(settings):
    """configure(env) -> the ProviderSet of the providers `env` configures (as start-up reads it)."""
    made: list[ProviderSet] = []

    def make(env: dict[str, str]) -> ProviderSet:
        specs, routes = provider_specs_from_env(read=env.get, secret=env.get, allow_http=True)
        settings.DISPATCH_PROVIDERS, settings.DISPATCH_PROVIDER_ROUTES = specs, routes
        providers = ProviderSet.configured()
        made.append(providers)
        return providers

    yield make
    for providers in made:
        providers.close()


def a_message(**fields) -> Message:
    fields.setdefault("recipient_phone_number", "+12025550123")
    fields.setdefault("content", "Hello from the tests")
    return Message(pk=1, **fields)


def send_error(provider, message=None) -> ProviderError:
    with pytest.raises(ProviderError) as raised:
        provider.send(message or a_message())
    return raised.value


# --- sending ---------------------------------------------------------------------------------


def test_twilio_backend_creates_the_message_with_a_status_callback(twilio, configure):
    providers = configure(twilio_env(twilio.url))
    provider = providers.providers["backup"]
    assert isinstance(provider, TwilioProvider)
    message = a_message()

    result = provider.send(message)

    [request] = twilio.requests
    assert request.authorized and request.answered == 201
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    assert request.fields == {
        "To": "+12025550123",
        "From": FROM,
        "Body": "Hello from the tests",
        "StatusCallback": CALLBACK,
    }
    assert request.idempotency_key == str(message.uuid)
    assert result.message_id.startswith("SM") and result.http_status == 201


def test_a_messaging_service_sid_is_sent_as_such(twilio, configure):
    providers = configure(twilio_env(twilio.url, PROVIDER_BACKUP_FROM="MG" + "1" * 32))
    providers.providers["backup"].send(a_message())
    [request] = twilio.requests
    assert request.fields["MessagingServiceSid"] == "MG" + "1" * 32
    assert "From" not in request.fields


def test_the_same_idempotency_key_on_every_attempt(twilio, configure):
    provider = configure(twilio_env(twilio.url)).providers["backup"]
    message = a_message()
    provider.send(message)
    provider.send(message)
    provider.send(a_message())
    first, again, other = (r.idempotency_key for r in twilio.requests)
    assert first == again == str(message.uuid) != other


def test_a_message_sent_through_twilio_is_on_record_with_its_provider(twilio, configure):
    providers = configure(twilio_env(twilio.url))
    message = claimed_message(recipient_phone_number="+12025550123")

    outcome = deliver(message, providers)

    message.refresh_from_db()
    assert outcome.outcome == "sent"
    assert (message.status, message.provider) == (Status.SENT, "backup")
    assert message.provider_message_id.startswith("SM")
    [attempt] = DeliveryAttempt.objects.filter(message=message)
    assert (attempt.provider, attempt.outcome, attempt.http_status) == ("backup", "sent", 201)
    assert attempt.provider_message_id == message.provider_message_id


def test_a_sid_postgresql_cannot_store_is_recorded_as_sent_with_it_escaped(twilio, configure):
    providers = configure(twilio_env(twilio.url))
    twilio.sid = "SM\x00" + "a" * 31
    message = claimed_message(recipient_phone_number="+12025550123")

    outcome = deliver(message, providers)

    message.refresh_from_db()
    assert outcome.outcome == "sent"
    assert (message.status, message.provider_message_id) == (Status.SENT, "SM\\u0000" + "a" * 31)


# --- Twilio's errors, classified like the webhook's --------------------------------------------


def test_wrong_credentials_are_a_permanent_401(twilio, configure):
    provider = configure(twilio_env(twilio.url, PROVIDER_BACKUP_AUTH_TOKEN="wrong")).providers["backup"]
    error = send_error(provider)
    assert (error.http_status, error.permanent, error.not_sent) == (401, True, False)
    assert "20003" in error.reason


def test_an_invalid_number_is_permanent(twilio, configure):
    twilio.script = [400]
    error = send_error(configure(twilio_env(twilio.url)).providers["backup"])
    assert (error.http_status, error.permanent, error.provider_wide) == (400, True, False)
    assert "21211" in error.reason


def test_an_unsubscribed_recipient_is_permanent_and_says_so(twilio, configure):
    twilio.script = [("error", 400, 21610)]
    error = send_error(configure(twilio_env(twilio.url)).providers["backup"])
    assert (error.http_status, error.permanent, error.recipient_opted_out) == (400, True, True)
    twilio.script = [400]  # any other refusal is not an opt-out
    assert send_error(configure(twilio_env(twilio.url)).providers["backup"]).recipient_opted_out is False


@pytest.mark.parametrize("status", [500, 503])
def test_a_5xx_is_a_provider_failure_with_an_unknown_outcome(twilio, configure, status):
    twilio.script = [status]
    error = send_error(configure(twilio_env(twilio.url)).providers["backup"])
    assert (error.http_status, error.permanent, error.not_sent, error.provider_wide) == (status, False, False, True)


def test_a_429_was_not_taken(twilio, configure):
    twilio.script = [429]
    error = send_error(configure(twilio_env(twilio.url)).providers["backup"])
    assert (error.http_status, error.permanent, error.not_sent, error.provider_wide) == (429, False, True, True)


def test_a_429_honours_twilios_retry_after_header(twilio, configure):
    twilio.script, twilio.retry_after = [429], "7"
    error = send_error(configure(twilio_env(twilio.url)).providers["backup"])
    assert error.retry_after == 7.0


@pytest.mark.parametrize("retry_after", ["1e999", "inf", "nan", "-5", "9" * 400])
def test_a_retry_after_no_clock_can_hold_is_refused_and_the_429_pauses_a_second(twilio, configure, retry_after):
    # Infinity, not a number, negative, or beyond any float: the header is dropped where it is read,
    # and the 429 counts as one without Retry-After. 1e999 used to raise OverflowError as its deferral
    # was written, leave the message in processing, and keep this worker paused for good.
    twilio.script, twilio.retry_after = [429], retry_after
    providers = configure(twilio_env(twilio.url))
    message = claimed_message()

    outcome = deliver(message, providers)

    message.refresh_from_db()
    assert outcome.outcome == "deferred"
    assert (message.status, message.attempts) == (Status.UNSENT, 0)
    assert 0.5 <= (message.next_attempt_at - database_now()).total_seconds() <= 1.0
    assert 0.5 <= providers.gates["backup"].rate.paused_for() <= 1.0


def test_connection_refused_was_not_taken(configure):
    error = send_error(configure(twilio_env(f"http://127.0.0.1:{free_port()}")).providers["backup"])
    assert (error.permanent, error.not_sent, error.provider_wide) == (False, True, True)


def test_a_read_timeout_leaves_the_outcome_unknown(twilio, configure):
    twilio.script = [("latency", 2.0)]
    provider = configure(twilio_env(twilio.url, PROVIDER_BACKUP_TIMEOUT_SECONDS="0.5")).providers["backup"]
    started = time.monotonic()
    error = send_error(provider)
    assert time.monotonic() - started < 1.5
    assert (error.permanent, error.not_sent, error.provider_wide) == (False, False, True)
    assert "timed out" in error.reason


def test_a_tls_failure_was_not_taken(configure):
    with fake_provider_in_thread() as plain_http:
        https_to_plain = plain_http.url.replace("http://", "https://").rstrip("/")
        error = send_error(configure(twilio_env(https_to_plain)).providers["backup"])
    assert (error.permanent, error.provider_wide) == (False, True)
    assert error.not_sent is True


def test_twilio_refusing_fails_over_to_a_webhook_secondary(configure):
    with fake_provider_in_thread() as webhook:
        env = {
            **twilio_env(f"http://127.0.0.1:{free_port()}"),
            "PROVIDERS": "backup,web",
            "PROVIDER_WEB_URL": webhook.url,
        }
        providers = configure(env)
        message = claimed_message()
        deliver(message, providers)
        message.refresh_from_db()
        assert (message.status, message.provider) == (Status.SENT, "web")
        assert [r.idempotency_key for r in webhook.requests()] == [str(message.uuid)]


# --- status callbacks ------------------------------------------------------------------------


def callback(client: Client, params: dict[str, str], *, provider: str = "backup", token: str = AUTH_TOKEN):
    url = f"http://testserver/api/receipts/twilio/{provider}/"
    signature = RequestValidator(token).compute_signature(url, params)
    return client.post(
        f"/api/receipts/twilio/{provider}/",
        data=urlencode(params),
        content_type="application/x-www-form-urlencoded",
        headers={"X-Twilio-Signature": signature},
    )


def status_params(sid: str, status: str, **more: str) -> dict[str, str]:
    return {
        "AccountSid": ACCOUNT_SID,
        "From": FROM,
        "To": "+12025550123",
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "ApiVersion": "2010-04-01",
        **more,
    }


@pytest.fixture
def twilio_configured(twilio, configure):
    return configure(twilio_env(twilio.url))


def test_a_signed_status_callback_records_the_delivery(twilio, twilio_configured):
    message = claimed_message(recipient_phone_number="+12025550123")
    deliver(message, twilio_configured)
    message.refresh_from_db()
    [request] = twilio.requests
    # What Twilio would post to the StatusCallback the message was created with.
    assert request.fields["StatusCallback"] == CALLBACK

    response = callback(Client(), status_params(message.provider_message_id, "delivered"))

    assert response.status_code == 200, response.content
    assert response.json() == {"outcome": "applied", "message_id": message.pk}
    message.refresh_from_db()
    assert message.delivery_status == Delivery.DELIVERED
    assert message.status == Status.SENT


def test_undelivered_and_failed_with_their_error_code(twilio_configured):
    undelivered = make_message(status=Status.SENT, provider_message_id="SM" + "a" * 32)
    failed = make_message(status=Status.SENT, provider_message_id="SM" + "b" * 32)
    client = Client()
    assert (
        callback(client, status_params(undelivered.provider_message_id, "undelivered", ErrorCode="30005")).status_code
        == 200
    )
    assert callback(client, status_params(failed.provider_message_id, "failed", ErrorCode="30008")).status_code == 200
    undelivered.refresh_from_db()
    failed.refresh_from_db()
    assert (undelivered.delivery_status, undelivered.delivery_error_code) == (Delivery.UNDELIVERED, "30005")
    assert (failed.delivery_status, failed.delivery_error_code) == (Delivery.UNDELIVERED, "30008")


@pytest.mark.parametrize("status", ["queued", "sending", "sent", "accepted"])
def test_statuses_that_are_not_an_outcome_are_ignored(twilio_configured, status):
    message = make_message(status=Status.SENT, provider_message_id="SM" + "c" * 32)
    response = callback(Client(), status_params(message.provider_message_id, status))
    assert response.status_code == 200
    assert response.json()["outcome"] == "ignored"
    message.refresh_from_db()
    assert message.delivery_status == Delivery.UNKNOWN
    assert not DeliveryReceipt.objects.exists()


def test_a_callback_before_the_send_is_recorded_waits(twilio_configured):
    response = callback(Client(), status_params("SM" + "d" * 32, "delivered"))
    assert response.status_code == 202
    assert response.json()["outcome"] == "waiting"


def test_a_replayed_callback_is_ignored(twilio_configured):
    message = make_message(status=Status.SENT, provider_message_id="SM" + "e" * 32)
    client = Client()
    params = status_params(message.provider_message_id, "delivered")
    assert callback(client, params).json()["outcome"] == "applied"
    assert callback(client, params).json()["outcome"] == "replayed"
    assert DeliveryReceipt.objects.count() == 1


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p, sign: sign(p, token="another-token"),  # signed with another account's token
        lambda p, sign: sign({**p, "MessageStatus": "undelivered"}, signed=p),  # changed after signing
        lambda p, sign: sign(p, header=""),  # no signature
    ],
)
def test_a_badly_signed_callback_is_401_and_changes_nothing(twilio_configured, tamper):
    message = make_message(status=Status.SENT, provider_message_id="SM" + "f" * 32)
    client = Client()

    def sign(params, *, token=AUTH_TOKEN, signed=None, header=None):
        url = "http://testserver/api/receipts/twilio/backup/"
        signature = RequestValidator(token).compute_signature(url, signed or params) if header is None else header
        return client.post(
            "/api/receipts/twilio/backup/",
            data=urlencode(params),
            content_type="application/x-www-form-urlencoded",
            headers={"X-Twilio-Signature": signature},
        )

    response = tamper(status_params(message.provider_message_id, "delivered"), sign)
    assert response.status_code == 401
    message.refresh_from_db()
    assert message.delivery_status == Delivery.UNKNOWN
    assert not DeliveryReceipt.objects.exists()


def test_a_callback_signed_for_another_url_is_401(twilio_configured):
    message = make_message(status=Status.SENT, provider_message_id="SM" + "9" * 32)
    params = status_params(message.provider_message_id, "delivered")
    signature = RequestValidator(AUTH_TOKEN).compute_signature("https://elsewhere.example/hook", params)
    response = Client().post(
        "/api/receipts/twilio/backup/",
        data=urlencode(params),
        content_type="application/x-www-form-urlencoded",
        headers={"X-Twilio-Signature": signature},
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"MessageSid": "SM\x00" + "a" * 31, "SmsSid": "SM\x00" + "a" * 31}, "MessageSid "),
        ({"MessageStatus": "undelivered", "ErrorCode": "30005\x00"}, "ErrorCode "),
    ],
    ids=["MessageSid-nul", "ErrorCode-nul"],
)
def test_a_callback_holding_a_nul_is_400_and_changes_nothing(twilio_configured, fields, named):
    message = make_message(status=Status.SENT, provider_message_id="SM" + "a" * 32)

    response = callback(Client(), {**status_params(message.provider_message_id, "delivered"), **fields})

    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith(named)
    message.refresh_from_db()
    assert message.delivery_status == Delivery.UNKNOWN
    assert not DeliveryReceipt.objects.exists()


def test_an_unknown_provider_is_404(twilio_configured):
    response = callback(Client(), status_params("SM" + "0" * 32, "delivered"), provider="nosuch")
    assert response.status_code == 404


def test_a_provider_that_is_not_twilio_is_404(configure):
    configure({"PROVIDERS": "web", "PROVIDER_WEB_URL": "http://127.0.0.1:9/"})
    response = callback(Client(), status_params("SM" + "0" * 32, "delivered"), provider="web")
    assert response.status_code == 404


def test_build_provider_from_a_spec_needs_no_settings(twilio):
    (spec,), _ = provider_specs_from_env(
        read=twilio_env(twilio.url).get, secret=twilio_env(twilio.url).get, allow_http=True
    )
    provider = build_provider(spec)
    try:
        assert provider.send(a_message()).message_id.startswith("SM")
    finally:
        provider.close()
