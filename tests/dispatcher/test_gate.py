"""What stands between workers and a provider (dispatcher/engine/providers/gate.py): the circuit
breaker and the rate limit, shared through Redis by every worker; the outage grace that keeps an
outage from spending messages' attempts; the per-process fallback when Redis is down; and what
operators see of it (GET /api/providers/, manage.py providers status, the dashboard, /metrics)."""

from __future__ import annotations

import io
import json
import logging
import socket
import subprocess
import threading
import time
import uuid
from datetime import datetime, timedelta

import pytest
from django.core.cache import caches
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.engine.providers import BaseProvider, ProviderError, ProviderResult, ProviderSet, gate
from dispatcher.engine.providers.gate import STATE_TTL_SECONDS, Circuit, ProviderPause, RateGate
from dispatcher.providers_conf import BACKEND_ALIASES, ProviderSpec
from messages_app.models import DeliveryAttempt, Message
from messages_app.transitions import messages_claim
from tests.factories import claimed_message, deliver, make_message, make_user
from tests.processes import FAKETIME_ENV, REPO_ROOT, child_env, faketime_command, free_port, wait_for

Status = Message.Status
Outcome = DeliveryAttempt.Outcome

pytestmark = pytest.mark.django_db

COOLOFF = 1.0


@pytest.fixture(autouse=True)
def circuit_settings(settings):
    settings.DISPATCHER = {
        **settings.DISPATCHER,
        "PROVIDER_CIRCUIT_FAILURES": 3,
        "PROVIDER_CIRCUIT_COOLOFF_SECONDS": COOLOFF,
        "PROVIDER_CIRCUIT_PROBES": 2,
        "PROVIDER_OUTAGE_GRACE_SECONDS": 1800,
        "MAX_ATTEMPTS": 2,
        "RETRY_BASE_SECONDS": 1,
    }


class RecordingProvider(BaseProvider):
    """Answers with `answer` (a ProviderError is raised) and records the messages it was asked."""

    answer: ProviderError | None = None

    def __init__(self, spec: ProviderSpec) -> None:
        super().__init__(spec)
        self.asked: list[int] = []

    def send(self, message):
        self.asked.append(message.pk)
        if self.answer is not None:
            raise self.answer
        return ProviderResult(message_id=f"{self.name}-{message.pk}", http_status=202)


def spec(name: str, rate: float = 0.0) -> ProviderSpec:
    return ProviderSpec(name=name, backend="tests.dispatcher.test_gate.RecordingProvider", rate_per_second=rate)


def worker(*names: str, rate: float = 0.0) -> ProviderSet:
    """The providers of one worker process (each worker has its own set; Redis is what they share)."""
    return ProviderSet([RecordingProvider(spec(name, rate)) for name in names])


def fail_circuit(name: str, times: int) -> None:
    for _ in range(times):
        Circuit(name).failure()


OUTAGE = ProviderError("provider answered HTTP 503: down", http_status=503, provider_wide=True)


# --- the circuit breaker ----------------------------------------------------------------------


def test_the_circuit_opens_after_the_configured_run_of_failures():
    circuit = Circuit("primary")
    fail_circuit("primary", 2)
    assert circuit.state().state == "closed" and circuit.allows()
    fail_circuit("primary", 1)
    state = Circuit("primary").state()
    assert (state.state, state.failures) == ("open", 3)
    assert state.open_until == pytest.approx(time.time() + COOLOFF, abs=0.5)
    assert not Circuit("primary").allows()
    assert Circuit("primary").outage_seconds() < 1


def test_a_success_ends_the_run_of_failures():
    fail_circuit("primary", 2)
    Circuit("primary").success()
    fail_circuit("primary", 2)
    assert Circuit("primary").state().state == "closed"


def test_after_the_cooloff_a_few_probes_go_through_for_the_whole_cluster():
    fail_circuit("primary", 3)
    time.sleep(COOLOFF + 0.1)
    workers = [Circuit("primary"), Circuit("primary"), Circuit("primary")]
    assert workers[0].state().state == "half_open"
    allowed = [w.allows() for w in workers for _ in range(2)]
    # PROVIDER_CIRCUIT_PROBES=2 in all, however many workers ask.
    assert allowed.count(True) == 2, allowed


def test_a_failed_probe_opens_the_circuit_for_another_cooloff():
    fail_circuit("primary", 3)
    time.sleep(COOLOFF + 0.1)
    assert Circuit("primary").allows()
    outage_started = Circuit("primary").state().outage_since
    Circuit("primary").failure()
    state = Circuit("primary").state()
    assert state.state == "open"
    assert state.open_until == pytest.approx(time.time() + COOLOFF, abs=0.5)
    # The same outage goes on: it started when the circuit first opened.
    assert state.outage_since == outage_started
    assert Circuit("primary").outage_seconds() >= COOLOFF
    # A new cool-off, then new probes.
    time.sleep(COOLOFF + 0.1)
    assert [Circuit("primary").allows() for _ in range(3)] == [True, True, False]


def test_no_more_probes_than_configured_once_a_probe_has_failed():
    fail_circuit("primary", 3)
    time.sleep(COOLOFF + 0.1)
    first_worker, second_worker = Circuit("primary"), Circuit("primary")
    assert first_worker.allows() and second_worker.allows()  # the two probes of this cool-off
    first_worker.failure()  # the first probe failed: open for another cool-off
    assert Circuit("primary").state().state == "open"
    # The second worker read "half open" a moment ago; the circuit is open again all the same.
    assert not second_worker.allows()


def test_a_successful_probe_closes_the_circuit_and_ends_the_outage():
    fail_circuit("primary", 3)
    time.sleep(COOLOFF + 0.1)
    assert Circuit("primary").allows()
    Circuit("primary").success()
    state = Circuit("primary").state()
    assert (state.state, state.failures, state.open_until, state.outage_since) == ("closed", 0, None, None)
    assert Circuit("primary").outage_seconds() == 0
    assert all(Circuit("primary").allows() for _ in range(5))


def test_each_provider_has_its_own_circuit():
    fail_circuit("primary", 3)
    assert Circuit("primary").state().state == "open"
    assert Circuit("secondary").state().state == "closed"


def test_two_workers_share_the_circuit_within_its_state_ttl():
    first, second = worker("primary", "secondary"), worker("primary", "secondary")
    assert second.gates["primary"].circuit.allows()  # read (and cached) while closed
    for _ in range(3):
        first.gates["primary"].circuit.failure()

    opened = time.monotonic()
    wait_for(lambda: not second.gates["primary"].circuit.allows(), timeout=2, what="the second worker to see it")
    assert time.monotonic() - opened <= STATE_TTL_SECONDS + 0.2

    # The second worker sends around the open circuit without asking the primary.
    message = claimed_message()
    deliver(message, second)
    message.refresh_from_db()
    assert (message.status, message.provider) == (Status.SENT, "secondary")
    assert second.providers["primary"].asked == [] and first.providers["primary"].asked == []
    assert second.providers["secondary"].asked == [message.pk]


FAR_COOLOFF = 30.0


@pytest.mark.parametrize("offset_seconds", [600, -600], ids=["fast", "slow"])
def test_a_host_whose_clock_is_off_opens_the_circuit_and_pauses_for_the_time_asked(offset_seconds):
    """A qcluster under `faketime` (its system clock ten minutes fast, or slow) opens the provider's
    circuit and pauses it after a 429; every other host must see both end when they should. The gates
    stored times from each host's own clock: the fast host's circuit stayed open ten minutes past its
    cool-off for everyone (sending halted for the whole cluster, found by `python -m bench chaos`), the
    slow host's was already over when it opened, and its pause never held."""
    script = (
        "from dispatcher.engine.providers.gate import Circuit, RateGate\n"
        "for _ in range(3): Circuit('primary').failure()\n"
        "RateGate('primary', 0).pause(20, reason='429 Retry-After 20 s')\n"
    )
    env = child_env(PROVIDER_CIRCUIT_FAILURES="3", PROVIDER_CIRCUIT_COOLOFF_SECONDS=f"{FAR_COOLOFF:g}", **FAKETIME_ENV)
    command = faketime_command(["shell", "-c", script], offset_seconds=offset_seconds)
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    now = time.time()  # this host's clock is right (Redis's, here on the same machine)
    state = Circuit("primary")._read()
    assert state.state == "open", state
    assert now + FAR_COOLOFF - 10 < state.open_until <= now + FAR_COOLOFF, state.open_until - now
    pause = ProviderPause("primary").current()
    assert pause is not None
    assert 10 < pause.seconds_left() <= 20, pause.seconds_left()


# --- an outage is not the messages' fault --------------------------------------------------


def test_an_open_circuit_defers_the_message_without_spending_an_attempt():
    providers = worker("primary")
    fail_circuit("primary", 3)
    message = claimed_message()
    # Deferred again and again (MAX_ATTEMPTS=2): still no attempt spent, never failed.
    for _ in range(4):
        outcome = deliver(message, providers)
        assert outcome.outcome == Outcome.DEFERRED
        message.refresh_from_db()
        assert (message.status, message.attempts) == (Status.UNSENT, 0)
        # Due again when the circuit lets probes through, at the earliest a second from now.
        assert message.next_attempt_at - timezone.now() <= timedelta(seconds=COOLOFF + 0.5)
        # Claimed again (a new token), as the next tick would.
        Message.objects.filter(pk=message.pk).update(status=Status.PROCESSING, claim_token=uuid.uuid4())
        message = Message.objects.get(pk=message.pk)
    assert providers.providers["primary"].asked == []
    rows = list(DeliveryAttempt.objects.filter(message=message).values_list("number", "outcome", "provider"))
    assert rows == [(1, "deferred", "primary")] * 4


def test_the_failure_that_opens_the_circuit_is_deferred_the_ones_before_count():
    providers = worker("primary")
    providers.providers["primary"].answer = OUTAGE
    first, second, third = claimed_message(), claimed_message(), claimed_message()
    assert deliver(first, providers).outcome == Outcome.RETRY
    assert deliver(second, providers).outcome == Outcome.RETRY
    assert deliver(third, providers).outcome == Outcome.DEFERRED  # the third failure opened it
    assert [Message.objects.get(pk=m.pk).attempts for m in (first, second, third)] == [1, 1, 0]


def test_after_the_grace_an_outage_spends_attempts(settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "PROVIDER_OUTAGE_GRACE_SECONDS": 0.5, "MAX_ATTEMPTS": 1}
    providers = worker("primary")
    fail_circuit("primary", 3)
    within = claimed_message()
    assert deliver(within, providers).outcome == Outcome.DEFERRED

    time.sleep(0.6)  # the outage has now lasted longer than the grace
    after = claimed_message()
    outcome = deliver(after, providers)
    after.refresh_from_db()
    assert outcome.outcome == Outcome.FAILED
    assert (after.status, after.attempts) == (Status.FAILED, 1)
    assert "circuit open" in after.last_error


def test_a_provider_recovering_after_the_outage_sends_the_deferred_message():
    providers = worker("primary")
    providers.providers["primary"].answer = OUTAGE
    for _ in range(3):
        deliver(claimed_message(), providers)
    message = claimed_message()
    assert deliver(message, providers).outcome == Outcome.DEFERRED
    providers.providers["primary"].answer = None
    time.sleep(COOLOFF + 0.1)
    # Due again: claimed anew, as the next tick would.
    messages_claim(message_ids=[message.pk], claim_token=uuid.uuid4(), lease_seconds=60)
    outcome = deliver(Message.objects.get(pk=message.pk), providers)
    assert outcome.outcome == Outcome.SENT  # a probe, which closed the circuit
    assert Circuit("primary").state().state == "closed"


# --- the rate limit ------------------------------------------------------------------------


def acquire_for(gate: RateGate, seconds: float, times: list[float], lock: threading.Lock) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if gate.acquire(should_stop=lambda: time.monotonic() > end, max_wait=seconds):
            with lock:
                times.append(time.monotonic())


def busiest_second(times: list[float]) -> int:
    ordered = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_the_rate_holds_across_two_workers():
    rate, seconds = 40, 3.0
    gates = [worker("primary", rate=rate).gates["primary"].rate for _ in range(2)]
    times: list[float] = []
    lock = threading.Lock()
    threads = [threading.Thread(target=acquire_for, args=(g, seconds, times, lock)) for g in gates for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 5)
    # Together they get the provider's rate, not twice it, and no second holds much more than it
    # (measured here, after each wait returned: a thread's few milliseconds of delay show as a hit
    # or two in the neighbouring second).
    assert rate * seconds * 0.9 <= len(times) <= rate * seconds * 1.1, len(times)
    assert busiest_second(times) <= rate * 1.1, busiest_second(times)


def test_a_429_pause_holds_every_worker():
    first, second = worker("primary").gates["primary"].rate, worker("primary").gates["primary"].rate
    assert second.acquire(should_stop=lambda: False)  # no limit, no pause: at once
    first.pause(1.0, reason="429 Retry-After 1 s")
    time.sleep(STATE_TTL_SECONDS)  # what the second has read of the shared pause is at most this old
    started = time.monotonic()
    assert second.acquire(should_stop=lambda: False)
    assert 0.3 <= time.monotonic() - started <= 1.5


def test_the_pause_lives_in_redis_alone_while_redis_answers():
    # It was kept in the worker's memory too: Redis forgetting it (or a pause ending early) left
    # that worker paused until it was restarted.
    rate = worker("primary").gates["primary"].rate
    rate.pause(60, reason="429 Retry-After 60 s")
    assert 59 < rate.paused_for() <= 60
    caches["default"].clear()
    time.sleep(STATE_TTL_SECONDS)
    assert rate.paused_for() == 0
    started = time.monotonic()
    assert rate.acquire(should_stop=lambda: False, max_wait=2)
    assert time.monotonic() - started < 0.1


def test_a_pause_is_a_few_minutes_at_most_whatever_was_asked(settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "PROVIDER_MAX_PAUSE_SECONDS": 120}
    rate = worker("primary").gates["primary"].rate
    assert 119 < rate.pause(999_999_999, reason="429 Retry-After 999999999 s") <= 120
    assert 119 < rate.paused_for() <= 120
    assert ProviderPause("primary").current().reason == (
        "429 Retry-After 999999999 s; paused 120 s, the most PROVIDER_MAX_PAUSE_SECONDS allows"
    )
    assert rate.pause(30, reason="429 Retry-After 30 s") == pytest.approx(30, abs=0.1)  # the newest answer rules
    assert ProviderPause("primary").current().reason == "429 Retry-After 30 s"


def test_waiting_for_the_rate_gives_up_when_told_to_stop():
    gate = worker("primary", rate=1).gates["primary"].rate
    assert gate.acquire(should_stop=lambda: False)
    started = time.monotonic()
    assert gate.acquire(should_stop=lambda: True) is False
    assert time.monotonic() - started < 0.5


def test_a_message_over_the_rate_of_its_only_provider_waits_without_spending_an_attempt(monkeypatch):
    # A send waits for the rate at most MAX_RATE_WAIT_SECONDS (30 s); here a fifth of a second.
    monkeypatch.setitem(RateGate.acquire_steps.__kwdefaults__, "max_wait", 0.2)
    providers = worker("primary", rate=1)
    first, second = claimed_message(), claimed_message()
    assert deliver(first, providers).outcome == Outcome.SENT
    assert deliver(second, providers).outcome == Outcome.DEFERRED
    second.refresh_from_db()
    assert (second.status, second.attempts) == (Status.UNSENT, 0)


# --- Redis down: the documented per-process fallback -----------------------------------------


@pytest.fixture
def redis_down(settings):
    closed = f"redis://127.0.0.1:{free_port()}/0"
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": closed}}
    settings.REDIS_URL = closed
    return closed


@pytest.fixture
def redis_silent(settings):
    """A Redis address that takes connections and never answers (a partition, not a refusal),
    with the cache's socket timeout at 0.5 s."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)  # connections wait in the backlog, never accepted
        silent = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        default = settings.CACHES["default"]
        options = {**default.get("OPTIONS", {}), "SOCKET_TIMEOUT": 0.5, "SOCKET_CONNECT_TIMEOUT": 0.5}
        settings.CACHES = {**settings.CACHES, "default": {**default, "LOCATION": silent, "OPTIONS": options}}
        settings.REDIS_URL = silent
        yield silent


def test_a_silent_redis_costs_the_gates_one_timeout_a_second_not_one_per_call(redis_silent):
    circuit, rate = Circuit("primary"), RateGate("primary", rate_per_second=1000)
    started = time.monotonic()
    assert circuit._read().state == "closed"  # waited for the timeout, then the local copy
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    for _ in range(50):  # a chunk's worth of gate checks within the next second: none waits
        circuit._read()
        assert rate.acquire(should_stop=lambda: False)
        rate.paused_for()
    assert time.monotonic() - started < 0.5
    time.sleep(gate.REDIS_RETRY_SECONDS)
    started = time.monotonic()
    circuit._read()  # a second on: Redis is asked again
    assert time.monotonic() - started >= 0.4


def test_with_redis_down_each_process_keeps_its_own_circuit_and_sending_goes_on(redis_down, caplog):
    caplog.set_level(logging.WARNING, logger="dispatcher.engine.providers.gate")
    providers = worker("primary", "secondary")
    providers.providers["primary"].answer = OUTAGE
    for _ in range(3):
        providers.gates["primary"].circuit.failure()
    assert providers.gates["primary"].circuit.state().state == "open"
    assert Circuit("primary").state().state == "closed"  # another process knows nothing of it

    message = claimed_message()
    deliver(message, providers)
    message.refresh_from_db()
    assert (message.status, message.provider) == (Status.SENT, "secondary")
    warnings = [r.getMessage() for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(warnings) == 1, warnings  # said once, not per call


def test_with_redis_down_a_pause_holds_the_process_that_set_it(redis_down):
    rate = worker("primary").gates["primary"].rate
    rate.pause(0.6, reason="429 Retry-After 0.6 s")
    started = time.monotonic()
    assert rate.acquire(should_stop=lambda: False)
    assert 0.4 <= time.monotonic() - started <= 1.2


def test_with_redis_down_each_process_sends_its_share_of_the_rate(redis_down, settings):
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "workers": 2}
    rate, seconds = 20, 2.0
    gate = worker("primary", rate=rate).gates["primary"].rate
    times: list[float] = []
    acquire_for(gate, seconds, times, threading.Lock())
    # RATE_PER_SECOND / QCLUSTER_WORKERS for this process: 10 a second.
    assert busiest_second(times) <= rate / 2 + 1, busiest_second(times)
    assert len(times) >= rate / 2 * seconds * 0.8, len(times)


# --- what operators see ------------------------------------------------------------------------

WEBHOOK_SPEC = ProviderSpec(
    name="primary",
    backend=BACKEND_ALIASES["webhook"],
    url="https://sms.example.com/send",
    rate_per_second=200,
    options={"auth_key": "primary-secret-key"},
)
TWILIO_SPEC = ProviderSpec(
    name="backup",
    backend=BACKEND_ALIASES["twilio"],
    url="https://api.twilio.com",
    options={"account_sid": "AC1", "auth_token": "backup-secret-token", "from": "+15005550006"},
)


@pytest.fixture
def two_providers_with_a_history(settings):
    """primary (open circuit) and backup, with the last hour's attempts (and one older)."""
    settings.DISPATCH_PROVIDERS = (WEBHOOK_SPEC, TWILIO_SPEC)
    now = timezone.now()
    message = make_message()

    def attempt(provider: str, outcome: str, duration_ms: int, *, ago: timedelta = timedelta(minutes=5)):
        DeliveryAttempt.objects.create(
            message=message, provider=provider, number=1, started_at=now - ago, duration_ms=duration_ms, outcome=outcome
        )

    attempt("primary", Outcome.SENT, 100)
    attempt("primary", Outcome.SENT, 300)
    attempt("primary", Outcome.RETRY, 2000)
    attempt("primary", Outcome.DEFERRED, 0)
    attempt("primary", Outcome.SENT, 9000, ago=timedelta(hours=2))  # outside the last hour
    attempt("backup", Outcome.SENT, 50)
    fail_circuit("primary", 3)


def test_get_api_providers(two_providers_with_a_history, api_client, anon_client):
    assert anon_client.get("/api/providers/").status_code == 401
    response = api_client.get("/api/providers/")
    assert response.status_code == 200
    primary, backup = response.json()
    assert primary["name"] == "primary" and backup["name"] == "backup"  # routing order
    assert {k: primary[k] for k in ("backend", "url", "rate_per_second", "circuit", "consecutive_failures")} == {
        "backend": "webhook",
        "url": "https://sms.example.com/send",
        "rate_per_second": 200.0,
        "circuit": "open",
        "consecutive_failures": 3,
    }
    assert primary["open_until"] is not None and primary["outage_seconds"] >= 0
    assert (primary["sent_last_hour"], primary["failed_last_hour"], primary["latency_ms_last_hour"]) == (2, 2, 200.0)
    assert (backup["backend"], backup["circuit"], backup["open_until"]) == ("twilio", "closed", None)
    assert (backup["sent_last_hour"], backup["failed_last_hour"], backup["latency_ms_last_hour"]) == (1, 0, 50.0)
    assert "secret" not in json.dumps(response.json())


def test_provider_urls_are_shown_without_their_credentials(settings, client_for, no_perms_user):
    # Issue 20: the URL came back verbatim, user info and ?api_key= included, to any user.
    settings.DISPATCH_PROVIDERS = (
        ProviderSpec(
            name="primary",
            backend=BACKEND_ALIASES["webhook"],
            url="http://user:hunter2@sms.example.com/send?api_key=SECRETQ&route=eu",
        ),
    )
    response = client_for(no_perms_user).get("/api/providers/")
    assert response.status_code == 200
    [primary] = response.json()
    assert primary["url"] == "http://sms.example.com/send?api_key=REDACTED&route=REDACTED"

    command = io.StringIO()
    call_command("providers", "status", stdout=command)
    admin = Client()
    admin.force_login(make_user(username="root", superuser=True))
    dashboard = admin.get("/admin/dispatcher/dispatcherstate/dashboard/").content.decode()
    for shown in (response.content.decode(), command.getvalue(), dashboard):
        assert "hunter2" not in shown and "SECRETQ" not in shown


def test_manage_py_providers_status(two_providers_with_a_history):
    out = io.StringIO()
    call_command("providers", "status", stdout=out)
    header, primary, backup = out.getvalue().splitlines()
    assert header.split()[:3] == ["provider", "backend", "circuit"]
    assert primary.split()[:3] == ["primary", "webhook", "open"]
    assert "3 failures" in primary
    assert primary.split()[-5:] == ["200", "2", "2", "200", "ms"]
    assert backup.split() == ["backup", "twilio", "closed", "-", "1", "0", "50", "ms"]
    assert "secret" not in out.getvalue()


def test_the_dashboard_shows_each_providers_circuit_and_last_hour(two_providers_with_a_history):
    client = Client()
    client.force_login(make_user(username="root", superuser=True))
    html = client.get("/admin/dispatcher/dispatcherstate/dashboard/").content.decode()
    assert 'id="providers"' in html
    primary = html.split('id="provider-primary"', 1)[1].split("</tr>", 1)[0]
    assert "<td>primary</td>" in primary and "<td>webhook</td>" in primary
    assert "open (3 failures" in primary
    assert "200/s" in primary and "200 ms" in primary
    backup = html.split('id="provider-backup"', 1)[1].split("</tr>", 1)[0]
    assert "closed" in backup and "50 ms" in backup


def test_metrics_show_each_providers_circuit(two_providers_with_a_history):
    operator = Client()
    operator.force_login(make_user(username="ops", staff=True))  # /metrics: the token or staff
    response = operator.get("/metrics")
    assert response.status_code == 200
    gauge = {
        sample.labels["provider"]: sample.value
        for family in text_string_to_metric_families(response.content.decode())
        if family.name == "messaging_provider_circuit_open"
        for sample in family.samples
    }
    assert gauge == {"primary": 1.0, "backup": 0.0}


CLOCK_SLACK_SECONDS = 0.05


@pytest.fixture
def primary_paused(two_providers_with_a_history):
    """primary paused by a 429 with Retry-After 120 s; backup not."""
    RateGate("primary", 0).pause(120, reason="429 Retry-After 120 s")
    # The pause is kept on Redis's clock (its TIME, rounded as stored), not on this process's:
    # "until" may come out a millisecond or so past what this process reads just after.
    return time.time() + 120 + CLOCK_SLACK_SECONDS


def test_get_api_providers_shows_a_pause_until_when_and_why(primary_paused, api_client):
    primary, backup = api_client.get("/api/providers/").json()
    until = datetime.fromisoformat(primary["paused_until"].replace("Z", "+00:00")).timestamp()
    assert primary_paused - 2 < until <= primary_paused
    assert primary["pause_reason"] == "429 Retry-After 120 s"
    assert (backup["paused_until"], backup["pause_reason"]) == (None, "")


def test_manage_py_providers_status_shows_a_pause(primary_paused):
    out = io.StringIO()
    call_command("providers", "status", stdout=out)
    _, primary, pause, backup = out.getvalue().splitlines()
    assert primary.split()[0] == "primary" and backup.split()[0] == "backup"
    assert pause.startswith("  paused until ")
    assert pause.endswith(("(in 2 min): 429 Retry-After 120 s", "(in 1 min 59 s): 429 Retry-After 120 s")), pause


def test_the_dashboard_shows_a_pause(primary_paused):
    client = Client()
    client.force_login(make_user(username="root", superuser=True))
    html = client.get("/admin/dispatcher/dispatcherstate/dashboard/").content.decode()
    primary = html.split('id="provider-primary"', 1)[1].split("</tr>", 1)[0]
    assert 'class="provider-pause state-stopped"' in primary
    assert "until " in primary and ": 429 Retry-After 120 s</td>" in primary
    backup = html.split('id="provider-backup"', 1)[1].split("</tr>", 1)[0]
    assert '<td class="provider-pause ">no</td>' in backup


def test_metrics_show_each_providers_pause(primary_paused):
    operator = Client()
    operator.force_login(make_user(username="ops", staff=True))
    families = {
        family.name: {sample.labels["provider"]: sample.value for sample in family.samples}
        for family in text_string_to_metric_families(operator.get("/metrics").content.decode())
        if family.name.startswith("messaging_provider_paused")
    }
    assert families["messaging_provider_paused"] == {"primary": 1.0, "backup": 0.0}
    until = families["messaging_provider_paused_until_seconds"]
    assert primary_paused - 2 < until["primary"] <= primary_paused and until["backup"] == 0.0
