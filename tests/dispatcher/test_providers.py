"""Provider backends, and the fake provider they are tested against (real HTTP on localhost)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from dispatcher.engine.pipeline import run_tick_here, send_chunk
from dispatcher.engine.providers import ProviderError, ProviderResult, ProviderSet, get_provider
from dispatcher.engine.providers.console import ConsoleProvider
from dispatcher.engine.providers.locmem import LocmemProvider
from dispatcher.engine.providers.webhook import WebhookProvider
from dispatcher.engine.sending import Unsent, send_concurrently
from dispatcher.providers_conf import BACKEND_ALIASES, ProviderSpec
from dispatcher.state import dispatcher_state_ensure
from messages_app.models import DeliveryAttempt, Message
from messages_app.transitions import messages_claim
from tests.factories import make_message
from tests.processes import fake_provider, fake_provider_in_thread, free_port, http_json

AUTH_KEY = "INS.me1x9uMcyYGlhKKQVPoc.bO3j9aZwRTOcA2Ywo"


def a_message(**fields) -> Message:
    # Providers only read the message; it need not be saved.
    fields.setdefault("recipient_phone_number", "+905551112233")
    fields.setdefault("content", "Insider - Project")
    return Message(pk=fields.pop("pk", 1), **fields)


@pytest.fixture
def fake():
    with fake_provider_in_thread() as provider:
        yield provider


class _FromEventLoop:
    """A WebhookProvider whose `send` goes through `send_async` in its ProviderSet's event
    loop, as a chunk sends: every webhook test below runs both ways."""

    def __init__(self, provider: WebhookProvider) -> None:
        self.provider = provider

    def send(self, message: Message) -> ProviderResult:
        return ProviderSet.of(self.provider).event_loop().run_until_complete(self.provider.send_async(message))

    def close(self) -> None:
        ProviderSet.of(self.provider).close()


@pytest.fixture(params=["thread", "event loop"])
def webhook_at(settings, request):
    """webhook_at(url, **DISPATCHER overrides) -> a WebhookProvider configured for that URL,
    sending from this thread (`send`) or from an event loop (`send_async`)."""
    made: list = []

    def make(url: str, **overrides):
        settings.DISPATCHER = {
            **settings.DISPATCHER,
            "WEBHOOK_URL": url,
            "WEBHOOK_AUTH_KEY": AUTH_KEY,
            "WEBHOOK_TIMEOUT_SECONDS": 5.0,
            **overrides,
        }
        provider = WebhookProvider() if request.param == "thread" else _FromEventLoop(WebhookProvider())
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


def set_faults(fake, **faults) -> None:
    response = requests.post(fake.url + "_fake/faults", json=faults, timeout=5)
    assert response.status_code == 200, response.text


# --- the webhook provider ------------------------------------------------------------


def test_webhook_posts_json_with_the_auth_key_and_returns_the_message_id(webhook_at):
    with fake_provider_in_thread(auth_key=AUTH_KEY) as fake:
        provider = webhook_at(fake.url)

        result = provider.send(a_message(recipient_phone_number="+905551112233", content="Merhaba dünya"))

        [received] = fake.requests()
    assert isinstance(result, ProviderResult)
    assert result.http_status == 202
    uuid.UUID(result.message_id)  # the fake answers a fresh UUID
    assert (received.to, received.content) == ("+905551112233", "Merhaba dünya")
    assert received.auth_ok is True
    assert received.status == 202
    assert received.message_id == result.message_id
    assert received.headers["Content-Type"] == "application/json"
    # The fake provider keeps that the key was sent and matched, never the key.
    assert received.headers["x-ins-auth-key"] == "[redacted]"


def test_webhook_reuses_its_connection_and_works_from_several_threads(fake, settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "WEBHOOK_URL": fake.url, "WEBHOOK_AUTH_KEY": AUTH_KEY}
    provider = WebhookProvider()
    results: list[str] = []
    lock = threading.Lock()

    def send_some(offset: int) -> None:
        for i in range(5):
            result = provider.send(a_message(content=f"thread message {offset + i}"))
            with lock:
                results.append(result.message_id)

    threads = [threading.Thread(target=send_some, args=(i * 10,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(set(results)) == 15
    assert sorted(r.content for r in fake.requests()) == sorted(
        f"thread message {t * 10 + i}" for t in range(3) for i in range(5)
    )
    provider.close()


def test_a_chunk_sends_through_the_webhook_from_one_event_loop_without_threads(fake, settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "WEBHOOK_URL": fake.url, "WEBHOOK_AUTH_KEY": AUTH_KEY}
    providers = ProviderSet([WebhookProvider()])
    messages = [a_message(pk=i, uuid=uuid.uuid4(), content=f"loop message {i}") for i in range(1, 41)]
    unsent = Unsent(messages=[])
    try:
        results = [
            result
            for batch in send_concurrently(
                messages, provider=providers, concurrency=8, should_stop=lambda: False, unsent=unsent
            )
            for result in batch
        ]
        assert providers._executor is None  # no sending thread was started
        # The loop is kept for the next chunk, and its connections with it.
        assert providers.event_loop() is providers.event_loop()
    finally:
        providers.close()
    assert len(results) == 40 and all(r.result is not None for r in results)
    assert len({r.result.message_id for r in results}) == 40
    assert sorted(r.content for r in fake.requests()) == sorted(f"loop message {i}" for i in range(1, 41))
    assert unsent.messages == []


def test_a_chunk_told_to_stop_in_the_event_loop_lets_sends_in_flight_finish_and_gives_back_the_rest(fake, settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "WEBHOOK_URL": fake.url, "WEBHOOK_AUTH_KEY": AUTH_KEY}
    set_faults(fake, latency_ms=200)
    providers = ProviderSet([WebhookProvider()])
    messages = [a_message(pk=i, uuid=uuid.uuid4()) for i in range(1, 21)]
    unsent = Unsent(messages=[])
    started = time.monotonic()
    try:
        results = [
            result
            for batch in send_concurrently(
                messages,
                provider=providers,
                concurrency=5,
                should_stop=lambda: time.monotonic() - started > 0.1,
                unsent=unsent,
            )
            for result in batch
        ]
    finally:
        providers.close()
    assert len(results) == 5 and all(r.result is not None for r in results)  # the first five, in flight
    assert [m.pk for m in unsent.messages] == list(range(6, 21))
    assert len(fake.requests()) == 5


def test_webhook_without_an_auth_key_sends_no_auth_header(fake, webhook_at):
    provider = webhook_at(fake.url, WEBHOOK_AUTH_KEY="")
    provider.send(a_message())
    [received] = fake.requests()
    assert "x-ins-auth-key" not in received.headers
    assert received.auth_ok is None  # this fake requires no key


@pytest.mark.parametrize(("status", "permanent"), [(500, False), (503, False), (408, False), (429, False)])
def test_webhook_retryable_http_errors(fake, webhook_at, status, permanent):
    set_faults(fake, error_rate=1.0, error_status=status)
    with pytest.raises(ProviderError) as raised:
        webhook_at(fake.url).send(a_message())
    assert raised.value.permanent is permanent
    assert raised.value.http_status == status
    assert f"HTTP {status}" in raised.value.reason


@pytest.mark.parametrize("status", [400, 404, 422])
def test_webhook_client_errors_are_permanent(fake, webhook_at, status):
    set_faults(fake, error_rate=1.0, error_status=status)
    with pytest.raises(ProviderError) as raised:
        webhook_at(fake.url).send(a_message())
    assert raised.value.permanent is True
    assert raised.value.http_status == status


def test_webhook_wrong_auth_key_is_a_permanent_401(webhook_at):
    with fake_provider_in_thread(auth_key="the-right-key") as fake:
        with pytest.raises(ProviderError) as raised:
            webhook_at(fake.url, WEBHOOK_AUTH_KEY="the-wrong-key").send(a_message())
        assert raised.value.http_status == 401
        assert raised.value.permanent is True
        assert [(r.status, r.auth_ok) for r in fake.requests()] == [(401, False)]
        assert webhook_at(fake.url, WEBHOOK_AUTH_KEY="the-right-key").send(a_message()).http_status == 202


@pytest.mark.parametrize("status", [200, 201, 202])
def test_webhook_accepts_any_2xx_with_a_message_id(fake, webhook_at, status):
    set_faults(fake, status_code=status)
    result = webhook_at(fake.url).send(a_message())
    assert result.http_status == status
    assert result.message_id


def test_webhook_2xx_without_message_id_is_permanent(fake, webhook_at):
    set_faults(fake, missing_message_id=True)
    with pytest.raises(ProviderError) as raised:
        webhook_at(fake.url).send(a_message())
    assert raised.value.permanent is True
    assert raised.value.http_status == 202
    assert "messageId" in raised.value.reason


class _CannedHandler(BaseHTTPRequestHandler):
    """Answers every POST with the server's canned status and raw body."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, body = self.server.canned
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def canned_server():
    """canned_server(status, body) -> URL of a server answering every POST with that."""
    servers = []

    def start(status: int, body: bytes) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _CannedHandler)
        server.daemon_threads = True
        server.canned = (status, body)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "body", [b"OK", b"<html>accepted</html>", b"", b'["a list", "not an object"]', b'{"messageId": 42}']
)
def test_webhook_2xx_with_an_unusable_body_is_permanent(canned_server, webhook_at, body):
    url = canned_server(202, body)
    with pytest.raises(ProviderError) as raised:
        webhook_at(url).send(a_message())
    assert raised.value.permanent is True
    assert raised.value.http_status == 202


def test_webhook_error_body_is_cut_short_in_the_reason(canned_server, webhook_at):
    url = canned_server(502, b"x" * 5000)
    with pytest.raises(ProviderError) as raised:
        webhook_at(url).send(a_message())
    assert raised.value.permanent is False
    assert len(raised.value.reason) < 300


# --- answers PostgreSQL cannot store: the outcome is recorded all the same ----------------------


def claimed_chunk(count: int) -> tuple[list[Message], uuid.UUID]:
    """`count` unsent messages claimed by one tick (one claim token), as a chunk task gets them."""
    messages = [
        Message.objects.create(recipient_phone_number=f"+9055511122{n:02d}", content="hi") for n in range(count)
    ]
    token = uuid.uuid4()
    messages_claim(message_ids=[m.pk for m in messages], claim_token=token, lease_seconds=60)
    return messages, token


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("message_id", "kept"),
    [("SM-1\x00tail", "SM-1\\u0000tail"), ("SM-1\udc80tail", "SM-1\\udc80tail")],
    ids=["nul", "lone-surrogate"],
)
def test_a_2xx_whose_message_id_postgresql_cannot_store_is_recorded_as_sent_with_it_escaped(
    canned_server, settings, message_id, kept
):
    """The provider took the messages (2xx): they are sent, whatever their id holds. Before, the
    write of the chunk's outcomes failed: all ten stayed processing until their lease ran out
    and were sent again."""
    url = canned_server(200, json.dumps({"messageId": message_id}).encode())
    settings.DISPATCHER = {**settings.DISPATCHER, "WEBHOOK_URL": url}
    messages, token = claimed_chunk(10)
    provider = WebhookProvider()
    try:
        report = send_chunk(message_ids=[m.pk for m in messages], claim_token=token, provider=provider)
    finally:
        provider.close()

    assert [o.outcome for o in report.outcomes] == ["sent"] * 10
    stored = Message.objects.filter(pk__in=[m.pk for m in messages])
    assert {(m.status, m.provider_message_id, m.attempts) for m in stored} == {(Message.Status.SENT, kept, 1)}
    assert set(DeliveryAttempt.objects.values_list("outcome", "provider_message_id")) == {("sent", kept)}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body", [b"bad\x00gateway", "bad \udc80 gateway".encode("utf-8", "surrogatepass")], ids=["nul", "surrogate-bytes"]
)
def test_an_error_answer_holding_a_nul_is_recorded_with_it_escaped(canned_server, settings, body):
    url = canned_server(502, body)
    settings.DISPATCHER = {**settings.DISPATCHER, "WEBHOOK_URL": url}
    messages, token = claimed_chunk(3)
    provider = WebhookProvider()
    try:
        report = send_chunk(message_ids=[m.pk for m in messages], claim_token=token, provider=provider)
    finally:
        provider.close()

    assert [o.outcome for o in report.outcomes] == ["retry"] * 3
    for message in Message.objects.filter(pk__in=[m.pk for m in messages]):
        assert message.status == Message.Status.UNSENT
        assert message.last_error.startswith("provider answered HTTP 502: bad")
        assert "\x00" not in message.last_error


def test_provider_answers_keep_nothing_postgresql_cannot_store():
    """What every backend returns or raises (ProviderResult, ProviderError) is made storable
    where it is made, so a backend of one's own gets the same."""
    assert ProviderResult(message_id="a\x00b\ud800c").message_id == "a\\u0000b\\ud800c"
    assert ProviderError("said \x00 and \udfff").reason == "said \\u0000 and \\udfff"
    assert ProviderResult(message_id="SM\U0001f600").message_id == "SM\U0001f600"  # a whole character stays


def test_webhook_timeout(fake, webhook_at):
    set_faults(fake, latency_ms=2000)
    provider = webhook_at(fake.url, WEBHOOK_TIMEOUT_SECONDS=0.3)
    started = time.monotonic()
    with pytest.raises(ProviderError) as raised:
        provider.send(a_message())
    assert time.monotonic() - started < 1.5
    assert "timed out" in raised.value.reason
    assert raised.value.permanent is False


def test_webhook_connection_refused(webhook_at):
    provider = webhook_at(f"http://127.0.0.1:{free_port()}/")
    started = time.monotonic()
    with pytest.raises(ProviderError) as raised:
        provider.send(a_message())
    assert time.monotonic() - started < 3
    assert "could not connect" in raised.value.reason
    assert raised.value.permanent is False
    assert raised.value.http_status is None


@pytest.fixture
def garbling_server():
    """The URL of a server that answers every request with a status line no client can read."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 2x0 WHAT\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stopping.set()
    thread.join(5)
    server.close()


def test_a_failure_is_told_without_the_credentials_in_the_url(garbling_server, webhook_at):
    # Issue 20: aiohttp's error text names the URL, and it went into the reason, so into the
    # dispatcher's log lines and the message's last_error, ?api_key= and all.
    url = garbling_server.replace("http://", "http://user:hunter2@") + "/send?api_key=SECRETQ"
    with pytest.raises(ProviderError) as raised:
        webhook_at(url).send(a_message())
    assert raised.value.reason
    assert "hunter2" not in raised.value.reason and "SECRETQ" not in raised.value.reason


@pytest.mark.django_db
def test_the_dispatchers_log_and_the_messages_never_show_the_credentials_in_the_url(garbling_server, settings, caplog):
    url = garbling_server.replace("http://", "http://user:hunter2@") + "/send?api_key=SECRETQ"
    settings.DISPATCH_PROVIDERS = (ProviderSpec(name="primary", backend=BACKEND_ALIASES["webhook"], url=url),)
    dispatcher_state_ensure()
    messages = [make_message(), make_message()]  # more than one: sent from the event loop, as a chunk is

    with caplog.at_level(logging.INFO, logger="dispatcher"):
        outcomes = run_tick_here()

    assert sorted((o.message_id, o.outcome) for o in outcomes) == [(m.pk, "retry") for m in messages]
    last_errors = "".join(Message.objects.values_list("last_error", flat=True))
    assert f"retrying message id={messages[0].pk} " in caplog.text and "request failed" in last_errors
    for written in (caplog.text, last_errors):
        assert "hunter2" not in written and "SECRETQ" not in written


# --- the fake provider itself ----------------------------------------------------------


def test_fake_provider_answers_like_the_real_one(fake):
    response = requests.post(fake.url, json={"to": "+905551112233", "content": "hi"}, timeout=5)
    assert response.status_code == 202
    body = response.json()
    assert body["message"] == "Accepted"
    uuid.UUID(body["messageId"])


def test_fake_provider_lists_and_clears_requests(fake):
    requests.post(fake.url, json={"to": "+905551112233", "content": "one"}, timeout=5)
    requests.post(fake.url, json={"to": "+905551112244", "content": "two"}, timeout=5)

    listed = http_json("GET", fake.url + "_fake/requests")
    assert [(r["to"], r["content"], r["status"]) for r in listed] == [
        ("+905551112233", "one", 202),
        ("+905551112244", "two", 202),
    ]
    assert all(r["message_id"] for r in listed)

    assert requests.delete(fake.url + "_fake/requests", timeout=5).status_code == 200
    assert http_json("GET", fake.url + "_fake/requests") == []


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"{}",
        json.dumps({"to": "+905551112233"}).encode(),
        json.dumps({"to": 905551112233, "content": "x"}).encode(),
        json.dumps(["+905551112233", "x"]).encode(),
    ],
)
def test_fake_provider_rejects_a_bad_body(fake, body):
    response = requests.post(fake.url, data=body, headers={"Content-Type": "application/json"}, timeout=5)
    assert response.status_code == 400
    assert fake.requests()[-1].status == 400


def test_fake_provider_checks_the_auth_key_when_given_one():
    with fake_provider_in_thread(auth_key="secret") as fake:
        message = {"to": "+905551112233", "content": "hi"}
        assert requests.post(fake.url, json=message, timeout=5).status_code == 401
        assert requests.post(fake.url, json=message, headers={"x-ins-auth-key": "nope"}, timeout=5).status_code == 401
        assert requests.post(fake.url, json=message, headers={"x-ins-auth-key": "secret"}, timeout=5).status_code == 202
        assert [(r.status, r.auth_ok) for r in fake.requests()] == [(401, False), (401, False), (202, True)]


def test_fake_provider_faults_can_be_read_and_changed(fake):
    assert http_json("GET", fake.url + "_fake/faults")["error_rate"] == 0.0
    response = requests.post(fake.url + "_fake/faults", json={"error_rate": 1.0, "error_status": 503}, timeout=5)
    assert response.status_code == 200
    assert response.json()["error_status"] == 503
    assert http_json("GET", fake.url + "_fake/faults")["error_rate"] == 1.0
    assert requests.post(fake.url, json={"to": "+905551112233", "content": "x"}, timeout=5).status_code == 503

    set_faults(fake, error_rate=0.0)
    assert requests.post(fake.url, json={"to": "+905551112233", "content": "x"}, timeout=5).status_code == 202


@pytest.mark.parametrize(
    "faults",
    [
        {"no_such_fault": 1},
        {"error_rate": 1.5},
        {"error_rate": "high"},
        {"latency_ms": -1},
        {"missing_message_id": 1},
        {"error_status": 700},
        {"status_code": 42},
        {"error_rate": 0.5, "no_such_fault": 1},  # all or nothing: error_rate is not applied either
        ["error_rate", 1],
    ],
)
def test_fake_provider_rejects_bad_faults(fake, faults):
    before = http_json("GET", fake.url + "_fake/faults")
    response = requests.post(fake.url + "_fake/faults", json=faults, timeout=5)
    assert response.status_code == 400
    assert response.json()["message"]
    assert http_json("GET", fake.url + "_fake/faults") == before


# JSON's NaN and Infinity, which Python's json reads: a sleep of nan, Retry-After: inf, int(inf) (a 500).
@pytest.mark.parametrize("body", ['{"latency_ms": NaN}', '{"retry_after": Infinity}', '{"error_status": -Infinity}'])
def test_fake_provider_refuses_faults_that_are_not_finite(fake, body):
    before = http_json("GET", fake.url + "_fake/faults")
    response = requests.post(
        fake.url + "_fake/faults", data=body, headers={"Content-Type": "application/json"}, timeout=5
    )
    assert response.status_code == 400
    assert "must be a finite number" in response.json()["message"]
    assert http_json("GET", fake.url + "_fake/faults") == before


def test_fake_provider_answers_an_unnamed_error_status(fake, webhook_at):
    set_faults(fake, error_rate=1.0, error_status=520)
    response = requests.post(fake.url, json={"to": "+905551112233", "content": "x"}, timeout=5)
    assert response.status_code == 520
    with pytest.raises(ProviderError) as raised:
        webhook_at(fake.url).send(a_message())
    assert raised.value.http_status == 520
    assert raised.value.permanent is False


def test_fake_provider_error_rate_is_a_share(fake):
    set_faults(fake, error_rate=0.5)
    statuses = [
        requests.post(fake.url, json={"to": "+905551112233", "content": str(i)}, timeout=5).status_code
        for i in range(200)
    ]
    assert set(statuses) == {202, 500}
    assert 50 <= statuses.count(500) <= 150


def test_fake_provider_unknown_path_is_404(fake):
    assert requests.get(fake.url + "nope", timeout=5).status_code == 404
    assert requests.delete(fake.url + "nope", timeout=5).status_code == 404


@pytest.mark.process
def test_fake_provider_command_serves_and_stops_cleanly(tmp_path, webhook_at):
    with fake_provider(tmp_path, "--auth-key", AUTH_KEY, "--status-code", "201") as process:
        result = webhook_at(process.url).send(a_message(content="over a real process"))
        assert result.http_status == 201
        [received] = http_json("GET", process.url + "_fake/requests")
        assert received["content"] == "over a real process"
        assert received["auth_ok"] is True
        page = requests.get(process.url, timeout=5).text
        assert process.stop() == 0, process.log()
    log = process.log()
    assert "Fake provider listening on" in log
    assert f"messageId={result.message_id}" in log
    assert "Fake provider stopped." in log
    # The auth key is in none of what it shows.
    assert AUTH_KEY not in json.dumps(received)
    assert AUTH_KEY not in page
    assert AUTH_KEY not in log


# --- choosing a backend ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ("webhook", WebhookProvider),
        ("console", ConsoleProvider),
        ("locmem", LocmemProvider),
        ("dispatcher.engine.providers.webhook.WebhookProvider", WebhookProvider),
        ("dispatcher.engine.providers.locmem.LocmemProvider", LocmemProvider),
    ],
)
def test_get_provider_resolves_aliases_and_dotted_paths(backend, expected):
    assert type(get_provider(backend)) is expected


@pytest.mark.parametrize(
    ("setting", "expected"),
    [("console", ConsoleProvider), ("dispatcher.engine.providers.locmem.LocmemProvider", LocmemProvider)],
)
def test_get_provider_defaults_to_the_setting(settings, setting, expected):
    settings.DISPATCHER = {**settings.DISPATCHER, "PROVIDER_BACKEND": setting}
    assert type(get_provider()) is expected


def test_get_provider_unknown_backend_fails_loudly():
    with pytest.raises(ImportError):
        get_provider("dispatcher.engine.providers.nope.NopeProvider")


def test_console_provider_prints_the_message(capsys):
    result = ConsoleProvider().send(a_message(pk=7, content="printed, not sent"))
    out = capsys.readouterr().out
    assert "printed, not sent" in out
    assert f"messageId={result.message_id}" in out
    assert "id=7" in out
