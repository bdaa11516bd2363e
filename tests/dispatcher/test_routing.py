"""Routing and failover between providers (dispatcher/engine/providers/__init__.py, engine/sending.py),
over real HTTP: two in-process fake providers, a closed port, a port that never accepts, a server that
hangs up after reading the request, a TLS handshake with a plain-http server.

Which failure does what (the README's table):

    failure                                   the message                         the provider
    connection refused, DNS, TLS, connect     next provider, same try             circuit counts
    timeout (nothing was sent)
    429 (with or without Retry-After)         next provider, same try             paused for Retry-After
    open circuit                              next provider, provider not asked   -
    read timeout, reset after the body went   retry later, that provider only     circuit counts
    out, 5xx (the outcome is unknown)         (sticky), same Idempotency-Key
    other 4xx, 2xx without a messageId        failed, no failover                 answered: circuit resets
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import uuid
from contextlib import contextmanager

import pytest
from django.test import Client
from django.utils import timezone

from dispatcher.engine.providers import BaseProvider, ProviderResult, ProviderSet, build_provider
from dispatcher.engine.providers.gate import Circuit, ProviderPause
from dispatcher.providers_conf import (
    BACKEND_ALIASES,
    DEFAULT_PROVIDER,
    ProviderSpec,
    RouteRule,
    provider_specs_from_env,
)
from messages_app.models import DeliveryAttempt, Message
from messages_app.transitions import messages_claim
from tests.factories import claimed_message, deliver, make_user
from tests.processes import fake_provider_in_thread, free_port, wait_for

Status = Message.Status
WEBHOOK = BACKEND_ALIASES["webhook"]

pytestmark = pytest.mark.django_db


# --- routing: which providers a message goes to, in which order ------------------------------


class NamedProvider(BaseProvider):
    """A provider that only has a name (routing never calls send)."""

    def send(self, message):
        return ProviderResult(message_id=f"{self.name}-{message.pk}")


def configured(settings, env: dict[str, str]) -> ProviderSet:
    """ProviderSet.configured() for providers and routes read from `env`, as start-up reads them."""
    base = {
        "PROVIDER_" + n.upper() + "_BACKEND": "tests.dispatcher.test_routing.NamedProvider"
        for n in env["PROVIDERS"].split(",")
    }
    specs, routes = provider_specs_from_env(read={**base, **env}.get, secret={}.get, allow_http=True)
    settings.DISPATCH_PROVIDERS, settings.DISPATCH_PROVIDER_ROUTES = specs, routes
    return ProviderSet.configured()


def to(number: str, **fields) -> Message:
    return Message(recipient_phone_number=number, content="routing", **fields)


def test_without_rules_every_message_tries_the_providers_in_order(settings):
    providers = configured(settings, {"PROVIDERS": "a,b,c"})
    assert providers.route(to("+905551112233")) == ["a", "b", "c"]
    assert providers.route(to("+12025550123")) == ["a", "b", "c"]


def test_a_prefix_rule_puts_its_provider_first_then_the_order(settings):
    providers = configured(settings, {"PROVIDERS": "a,b,c", "PROVIDER_ROUTES": "+1:c,+90:b"})
    assert providers.route(to("+12025550123")) == ["c", "a", "b"]
    assert providers.route(to("+905551112233")) == ["b", "a", "c"]
    assert providers.route(to("+447700900123")) == ["a", "b", "c"]


def test_the_longest_prefix_wins_whatever_the_order_of_the_rules(settings):
    providers = configured(settings, {"PROVIDERS": "a,b,c", "PROVIDER_ROUTES": "+1:b,+1242:c,+12:a"})
    assert providers.route(to("+12425550123")) == ["c", "a", "b"]  # Bahamas: +1242 beats +12 and +1
    assert providers.route(to("+12025550123")) == ["a", "b", "c"]  # +12 beats +1
    assert providers.route(to("+13025550123")) == ["b", "a", "c"]  # only +1


def test_a_message_the_provider_may_have_taken_goes_back_to_it_only(settings):
    providers = configured(settings, {"PROVIDERS": "a,b", "PROVIDER_ROUTES": "+1:b"})
    assert providers.route(to("+12025550123", provider="a")) == ["a"]
    assert providers.route(to("+905551112233", provider="b")) == ["b"]


def test_sticky_to_a_provider_no_longer_configured_goes_to_the_first(settings):
    providers = configured(settings, {"PROVIDERS": "a,b"})
    assert providers.route(to("+905551112233", provider="gone")) == ["a"]


def test_without_providers_the_one_default_provider(settings):
    settings.DISPATCH_PROVIDERS, settings.DISPATCH_PROVIDER_ROUTES = None, ()
    settings.DISPATCHER = {**settings.DISPATCHER, "PROVIDER_BACKEND": "locmem"}
    providers = ProviderSet.configured()
    assert providers.order == [DEFAULT_PROVIDER]
    assert providers.route(to("+12025550123")) == [DEFAULT_PROVIDER]


# --- failover over real HTTP ------------------------------------------------------------------

TIMEOUT_SECONDS = 0.5


def webhook_spec(name: str, url: str, **fields) -> ProviderSpec:
    fields.setdefault("timeout_seconds", TIMEOUT_SECONDS)
    return ProviderSpec(name=name, backend=WEBHOOK, url=url, options={"auth_key": ""}, **fields)


@pytest.fixture
def fakes():
    """Two in-process fake providers: `primary` and `secondary`."""
    with fake_provider_in_thread() as primary, fake_provider_in_thread() as secondary:
        yield primary, secondary


@pytest.fixture
def provider_set(settings):
    """provider_set(primary_url, secondary_url=None, routes=()) -> the ProviderSet a worker would have
    for them (also the configured providers, for the status readers); closed after the test."""
    made: list[ProviderSet] = []

    def make(primary_url: str, secondary_url: str | None = None, *, routes=(), **fields) -> ProviderSet:
        specs = [webhook_spec("primary", primary_url, **fields)]
        if secondary_url:
            specs.append(webhook_spec("secondary", secondary_url, **fields))
        settings.DISPATCH_PROVIDERS, settings.DISPATCH_PROVIDER_ROUTES = tuple(specs), tuple(routes)
        providers = ProviderSet([build_provider(spec) for spec in specs], tuple(routes))
        made.append(providers)
        return providers

    yield make
    for providers in made:
        providers.close()


def faults(fake, **changes) -> None:
    with fake.state.lock:
        fake.state.faults.update(changes)


def keys(fake) -> list[str]:
    return [r.idempotency_key for r in fake.requests()]


def attempts(message: Message) -> list[tuple]:
    return list(
        DeliveryAttempt.objects.filter(message=message).order_by("id").values_list("number", "outcome", "provider")
    )


def reclaim(message: Message) -> Message:
    """Claim the message again, as a later tick would once it is due."""
    messages_claim(message_ids=[message.pk], claim_token=uuid.uuid4(), lease_seconds=60)
    message.refresh_from_db()
    assert message.status == Status.PROCESSING
    return message


@contextmanager
def never_accepting_port():
    """A port whose listen queue is full: connecting hangs (the SYN is dropped) until the connect timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(server.getsockname())
        fillers.append(filler)
    time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    finally:
        for filler in fillers:
            filler.close()
        server.close()


@contextmanager
def hanging_up_server():
    """A server that reads each request whole, then resets the connection without an answer: the
    request went out, its outcome is unknown. Yields (url, the Idempotency-Keys it read)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    seen: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ": " in line)
                length = int({k.lower(): v for k, v in headers.items()}.get("content-length", 0))
                while len(body) < length:
                    body += conn.recv(65536)
                seen.append({k.lower(): v for k, v in headers.items()}.get("idempotency-key", ""))
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/", seen
    finally:
        stop.set()
        thread.join(2)
        server.close()


def check_sent_by(message: Message, name: str) -> None:
    message.refresh_from_db()
    assert message.status == Status.SENT, (message.status, message.last_error)
    assert message.provider == name
    assert message.attempts == 1
    assert attempts(message) == [(1, "sent", name)]


def test_refused_goes_to_the_next_provider_in_the_same_try(fakes, provider_set):
    _, secondary = fakes
    providers = provider_set(f"http://127.0.0.1:{free_port()}/", secondary.url)
    message = claimed_message()

    outcome = deliver(message, providers)

    assert outcome.outcome == "sent"
    check_sent_by(message, "secondary")
    assert keys(secondary) == [str(message.uuid)]
    # A provider-wide failure: it counts towards the primary's circuit.
    assert Circuit("primary").state().failures == 1


def test_a_connect_timeout_goes_to_the_next_provider(fakes, provider_set):
    _, secondary = fakes
    with never_accepting_port() as silent:
        providers = provider_set(silent, secondary.url)
        message = claimed_message()
        started = time.monotonic()
        deliver(message, providers)
    assert time.monotonic() - started < TIMEOUT_SECONDS + 2
    check_sent_by(message, "secondary")


def test_a_dns_failure_goes_to_the_next_provider(fakes, provider_set, monkeypatch):
    _, secondary = fakes
    real_getaddrinfo = socket.getaddrinfo

    def no_such_host(host, *args, **kwargs):
        if host == "sms.primary.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    providers = provider_set("http://sms.primary.invalid/send", secondary.url)
    message = claimed_message()
    deliver(message, providers)
    check_sent_by(message, "secondary")


def test_a_tls_failure_before_the_request_goes_to_the_next_provider(fakes, provider_set):
    primary, secondary = fakes
    # https to a server that speaks plain http: the handshake fails, no request is sent.
    providers = provider_set(primary.url.replace("http://", "https://"), secondary.url)
    message = claimed_message()
    deliver(message, providers)
    check_sent_by(message, "secondary")
    assert keys(primary) == []


def test_a_429_goes_to_the_next_provider_and_pauses_the_throttled_one(fakes, provider_set):
    primary, secondary = fakes
    faults(primary, script=[429], retry_after=2)
    providers = provider_set(primary.url, secondary.url)
    message = claimed_message()

    deliver(message, providers)

    check_sent_by(message, "secondary")
    assert [r.status for r in primary.requests()] == [429]
    assert 1.0 < providers.gates["primary"].rate.paused_for() <= 2.0
    # The pause is the whole provider's: another worker's providers see it too, and a 429 is no
    # sign of an outage (the circuit does not count it).
    other_worker = provider_set(primary.url, secondary.url)
    assert other_worker.gates["primary"].rate.paused_for() > 1.0
    assert Circuit("primary").state().failures == 0


def test_the_only_provider_answering_429_defers_without_spending_an_attempt(fakes, provider_set):
    primary, _ = fakes
    faults(primary, script=[429], retry_after=3)
    providers = provider_set(primary.url)
    message = claimed_message()

    outcome = deliver(message, providers)

    message.refresh_from_db()
    assert outcome.outcome == "deferred"
    assert (message.status, message.attempts, message.provider) == (Status.UNSENT, 0, "")
    assert attempts(message) == [(1, "deferred", "primary")]
    # Due again when the provider said, Retry-After: 3.
    assert 2.0 < (message.next_attempt_at - timezone.now()).total_seconds() <= 3.5


def test_a_429_asking_for_decades_pauses_the_provider_minutes_and_the_message_a_day(fakes, provider_set):
    primary, _ = fakes
    faults(primary, script=[429], retry_after=999_999_999)  # Retry-After: 999999999, 31 years
    providers = provider_set(primary.url)
    message = claimed_message()

    outcome = deliver(message, providers)

    message.refresh_from_db()
    assert outcome.outcome == "deferred"
    # One answer pauses the provider, for every worker, PROVIDER_MAX_PAUSE_SECONDS (300) at most,
    # and the pause says why.
    for worker in (providers, provider_set(primary.url)):
        assert 295 < worker.gates["primary"].rate.paused_for() <= 300
    pause = ProviderPause("primary").current()
    assert pause.reason == "429 Retry-After 999999999 s; paused 300 s, the most PROVIDER_MAX_PAUSE_SECONDS allows"
    # The message itself waits what the provider asked, a day at most.
    wait = (message.next_attempt_at - timezone.now()).total_seconds()
    assert 86_400 - 60 < wait <= 86_400


def test_after_a_capped_pause_the_same_worker_sends_again(fakes, provider_set, settings):
    # The pause lived on in the worker's memory too: a worker that had seen this 429 sent nothing
    # until it was restarted, whatever Redis said.
    settings.DISPATCHER = {**settings.DISPATCHER, "PROVIDER_MAX_PAUSE_SECONDS": 1}
    primary, _ = fakes
    faults(primary, script=[429], retry_after=999_999_999)
    providers = provider_set(primary.url)
    assert deliver(claimed_message(), providers).outcome == "deferred"

    time.sleep(1.0)
    started = time.monotonic()
    assert deliver(claimed_message(), providers).outcome == "sent"
    assert time.monotonic() - started < 2
    assert [r.status for r in primary.requests()] == [429, 202]


def test_a_read_timeout_stays_with_its_provider_and_keeps_its_key(fakes, provider_set):
    primary, secondary = fakes
    faults(primary, latency_ms=1500)  # answered (and accepted) after the client gave up
    providers = provider_set(primary.url, secondary.url)
    message = claimed_message()

    outcome = deliver(message, providers)

    message.refresh_from_db()
    assert outcome.outcome == "retry"
    assert (message.status, message.attempts, message.provider) == (Status.UNSENT, 1, "primary")
    assert attempts(message) == [(1, "retry", "primary")]
    assert keys(secondary) == []
    assert providers.route(message) == ["primary"]
    assert Circuit("primary").state().failures == 1
    wait_for(lambda: len(primary.requests()) == 1, timeout=5, what="the primary to take the timed-out request")

    # The retry goes to the primary with the same key; it recognises the message it already took.
    faults(primary, latency_ms=0)
    deliver(reclaim(message), providers)
    message.refresh_from_db()
    assert (message.status, message.attempts, message.provider) == (Status.SENT, 2, "primary")
    first, again = primary.requests()
    assert first.idempotency_key == again.idempotency_key == str(message.uuid)
    assert again.duplicate and again.message_id == first.message_id == message.provider_message_id
    assert keys(secondary) == []


def test_a_sticky_message_never_fails_over_even_when_its_provider_refuses(fakes, provider_set):
    _, secondary = fakes
    providers = provider_set(f"http://127.0.0.1:{free_port()}/", secondary.url)
    message = claimed_message()
    Message.objects.filter(pk=message.pk).update(provider="primary")  # an earlier answer was lost
    message.refresh_from_db()

    outcome = deliver(message, providers)

    message.refresh_from_db()
    assert outcome.outcome == "retry"
    assert (message.status, message.provider) == (Status.UNSENT, "primary")
    assert attempts(message) == [(1, "retry", "primary")]
    assert keys(secondary) == []


def test_a_reset_after_the_request_went_out_stays_with_its_provider(fakes, provider_set):
    _, secondary = fakes
    with hanging_up_server() as (url, seen):
        providers = provider_set(url, secondary.url)
        message = claimed_message()
        outcome = deliver(message, providers)
    message.refresh_from_db()
    assert seen == [str(message.uuid)]  # the request did reach it
    assert outcome.outcome == "retry"
    assert (message.status, message.provider) == (Status.UNSENT, "primary")
    assert keys(secondary) == []
    assert Circuit("primary").state().failures == 1


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_5xx_retries_the_same_provider_and_counts_towards_its_circuit(fakes, provider_set, status):
    primary, secondary = fakes
    faults(primary, script=[status])
    providers = provider_set(primary.url, secondary.url)
    message = claimed_message()

    outcome = deliver(message, providers)

    message.refresh_from_db()
    assert outcome.outcome == "retry"
    assert (message.status, message.attempts, message.provider) == (Status.UNSENT, 1, "primary")
    assert attempts(message) == [(1, "retry", "primary")]
    assert keys(secondary) == []
    assert Circuit("primary").state().failures == 1


def test_an_open_circuit_is_skipped_without_asking_its_provider(fakes, provider_set, settings):
    primary, secondary = fakes
    settings.DISPATCHER = {**settings.DISPATCHER, "PROVIDER_CIRCUIT_FAILURES": 2}
    providers = provider_set(primary.url, secondary.url)
    for _ in range(2):
        Circuit("primary").failure()
    assert Circuit("primary").state().state == "open"
    message = claimed_message()

    deliver(message, providers)

    check_sent_by(message, "secondary")
    assert keys(primary) == []


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_a_permanent_4xx_fails_the_message_with_no_failover(fakes, provider_set, status):
    primary, secondary = fakes
    faults(primary, script=[status])
    providers = provider_set(primary.url, secondary.url)
    Circuit("primary").failure()  # an earlier failure in the run...
    message = claimed_message()

    outcome = deliver(message, providers)

    message.refresh_from_db()
    assert outcome.outcome == "failed"
    assert (message.status, message.attempts) == (Status.FAILED, 1)
    assert attempts(message) == [(1, "failed", "primary")]
    assert keys(secondary) == []
    assert Circuit("primary").state().failures == 0  # ...ended: it answered, the message is at fault


def test_a_route_rule_sends_through_its_provider_and_fails_over_to_the_order(fakes, provider_set):
    primary, secondary = fakes
    providers = provider_set(primary.url, secondary.url, routes=[RouteRule(prefix="+1", provider="secondary")])
    american = claimed_message(recipient_phone_number="+12025550123")
    turkish = claimed_message(recipient_phone_number="+905551112233")
    deliver(american, providers)
    deliver(turkish, providers)
    check_sent_by(american, "secondary")
    check_sent_by(turkish, "primary")

    # The rule's provider refusing: the rest of the order takes over.
    refusing = provider_set(primary.url, f"http://127.0.0.1:{free_port()}/", routes=[RouteRule("+1", "secondary")])
    another = claimed_message(recipient_phone_number="+12025550124")
    deliver(another, refusing)
    check_sent_by(another, "primary")


def test_every_provider_refusing_retries_later_free_to_go_anywhere(provider_set):
    providers = provider_set(f"http://127.0.0.1:{free_port()}/", f"http://127.0.0.1:{free_port()}/")
    message = claimed_message()
    outcome = deliver(message, providers)
    message.refresh_from_db()
    # Nothing was taken: the attempt counts (the circuits are still closed), and no provider is
    # bound to the message.
    assert outcome.outcome == "retry"
    assert (message.status, message.attempts, message.provider) == (Status.UNSENT, 1, "")
    assert message.next_attempt_at is not None


def test_an_unknown_outcome_that_opens_the_circuit_still_stays_with_its_provider(fakes, provider_set, settings):
    primary, secondary = fakes
    settings.DISPATCHER = {**settings.DISPATCHER, "PROVIDER_CIRCUIT_FAILURES": 1}
    faults(primary, latency_ms=1500)
    providers = provider_set(primary.url, secondary.url)
    message = claimed_message()

    outcome = deliver(message, providers)
    message.refresh_from_db()
    assert outcome.outcome == "deferred"  # the circuit opened: no attempt spent
    wait_for(lambda: len(primary.requests()) == 1, timeout=5, what="the primary to take the timed-out request")
    assert primary.requests()[0].status == 202  # the primary did take it

    deliver(reclaim(message), providers)
    # The primary's circuit is open: the message must wait for it, never go to the secondary.
    assert keys(secondary) == [], "accepted by both providers"
    assert message.provider == "primary"


# --- where people see which provider an attempt went to --------------------------------------


@pytest.fixture
def failed_over(fakes, provider_set) -> Message:
    """A message the refusing primary handed to the secondary."""
    _, secondary = fakes
    message = claimed_message()
    deliver(message, provider_set(f"http://127.0.0.1:{free_port()}/", secondary.url))
    message.refresh_from_db()
    return message


def test_the_attempts_api_names_each_attempts_provider(failed_over, api_client):
    response = api_client.get(f"/api/messages/{failed_over.pk}/attempts/")
    assert response.status_code == 200
    assert [a.get("provider") for a in response.json()] == ["secondary"]


def test_the_admin_names_each_attempts_provider(failed_over):
    client = Client()
    client.force_login(make_user(username="root", superuser=True))
    html = client.get(f"/admin/messages_app/message/{failed_over.pk}/change/").content.decode()
    inline = html.split('id="delivery_attempts-group"', 1)[1]
    assert "secondary" in inline
