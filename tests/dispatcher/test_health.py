"""GET /healthz and GET /readyz: anonymous, JSON, 503 naming the failing check, never a 500."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.db import connections
from django.test import Client
from django.utils import timezone

from dispatcher.engine.pipeline import run_tick_here
from dispatcher.engine.providers.gate import RateGate
from dispatcher.models import DispatcherState
from dispatcher.monitoring.health import STALE_TICK_FLOOR_SECONDS, tick_overdue_after
from dispatcher.providers_conf import DEFAULT_PROVIDER
from dispatcher.state import dispatcher_state_ensure
from tests.factories import make_user
from tests.processes import free_port

TOKEN = "monitoring-token"


@pytest.fixture
def probe() -> Client:
    # Django's plain client: no token, no session, nothing a probe would not send.
    return Client()


@pytest.fixture
def client(settings) -> Client:
    """What sees the checks: Prometheus' token (or an operator's staff session)."""
    settings.DISPATCHER = {**settings.DISPATCHER, "METRICS_TOKEN": TOKEN}
    return Client(headers={"Authorization": f"Bearer {TOKEN}"})


def set_state(**fields) -> None:
    """Write the state row as a test needs it; update() leaves updated_at alone unless given."""
    dispatcher_state_ensure()
    DispatcherState.objects.filter(pk=DispatcherState.SINGLETON_PK).update(**fields)


@pytest.fixture
def redis_down(settings):
    """The default cache points at a port nobody listens on."""
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{free_port()}/0"},
    }


# --- /healthz ----------------------------------------------------------------------------


def test_healthz_is_ok_without_touching_the_database(probe):
    # No django_db mark: any query would raise here instead of answering.
    response = probe.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_healthz_is_ok_even_when_the_cache_is_down(probe, redis_down):
    assert probe.get("/healthz").status_code == 200


# --- /readyz -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_readyz_is_ready_when_database_cache_and_ticks_are_fine(client):
    set_state(running=True, batch_size=2, interval_seconds=60)
    run_tick_here()

    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "cache": "ok", "dispatcher": "ok"},
        "paused_providers": {},
    }


@pytest.mark.django_db
def test_a_paused_provider_is_shown_but_leaves_readyz_ready(client, probe):
    # Information for operators, not a check: a throttling provider must not take every web process
    # out of its load balancer (the API would stop queueing too); the pause ends by itself.
    RateGate(DEFAULT_PROVIDER, 0).pause(120, reason="429 Retry-After 120 s")

    response = client.get("/readyz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    paused = body["paused_providers"][DEFAULT_PROVIDER]
    assert paused["reason"] == "429 Retry-After 120 s"
    assert 115 < (datetime.fromisoformat(paused["until"]) - timezone.now()).total_seconds() <= 120
    assert probe.get("/readyz").json() == {"status": "ready"}  # an anonymous probe: the status alone


@pytest.mark.django_db
def test_readyz_names_the_cache_when_it_is_unreachable(client, redis_down):
    set_state(running=True, last_tick_at=timezone.now(), updated_at=timezone.now())

    response = client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["dispatcher"] == "ok"
    assert body["checks"]["cache"].startswith("unavailable (")


@pytest.mark.django_db
def test_readyz_names_the_dispatcher_when_it_runs_but_has_not_ticked_for_too_long(client):
    long_ago = timezone.now() - timedelta(seconds=tick_overdue_after(60) + 5)
    set_state(running=True, interval_seconds=60, last_tick_at=long_ago, updated_at=long_ago)

    response = client.get("/readyz")

    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == "ok"
    assert checks["cache"] == "ok"
    assert checks["dispatcher"].startswith("running but no tick for ")


@pytest.mark.django_db
def test_readyz_allows_three_intervals_for_a_slow_pace(client):
    # 3 x 600 s is more than the floor: a tick 20 minutes ago is on time.
    twenty_minutes_ago = timezone.now() - timedelta(minutes=20)
    set_state(running=True, interval_seconds=600, last_tick_at=twenty_minutes_ago, updated_at=twenty_minutes_ago)

    assert client.get("/readyz").status_code == 200


@pytest.mark.django_db
def test_readyz_is_ready_when_the_dispatcher_is_stopped_however_old_its_last_tick(client):
    long_ago = timezone.now() - timedelta(days=2)
    set_state(running=False, last_tick_at=long_ago, updated_at=long_ago)

    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json()["checks"]["dispatcher"] == "ok"


@pytest.mark.django_db
def test_readyz_is_ready_just_after_a_start_before_the_first_tick(client):
    # Stopped for days, started a minute ago: the old last tick does not count against it.
    set_state(
        running=True,
        interval_seconds=10,
        last_tick_at=timezone.now() - timedelta(days=2),
        updated_at=timezone.now() - timedelta(minutes=1),
    )
    assert client.get("/readyz").status_code == 200


@pytest.mark.django_db
def test_readyz_is_not_ready_when_started_long_ago_and_never_ticked(client):
    set_state(
        running=True,
        interval_seconds=10,
        last_tick_at=None,
        updated_at=timezone.now() - timedelta(seconds=STALE_TICK_FLOOR_SECONDS * 2),
    )

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"]["dispatcher"].startswith("running but no tick for ")


@pytest.mark.django_db
def test_readyz_names_the_database_when_it_fails_and_does_not_crash(client, monkeypatch):
    def broken_cursor(self, *args, **kwargs):
        raise ConnectionError("database is gone")

    with monkeypatch.context() as patch:
        patch.setattr(type(connections["default"]), "cursor", broken_cursor)
        response = client.get("/readyz")

    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == "unavailable (ConnectionError)"
    assert checks["cache"] == "ok"
    assert checks["dispatcher"] == "not checked (database unavailable)"
    # The reason names the error's class only; its text may hold host names.
    assert "database is gone" not in response.content.decode()


def test_probes_answer_get_only(client):
    assert client.post("/healthz").status_code == 405
    assert client.post("/readyz").status_code == 405


# --- who sees the checks ---------------------------------------------------------------------


@pytest.mark.django_db
def test_an_anonymous_probe_gets_the_status_and_nothing_else(probe, redis_down, settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "METRICS_TOKEN": TOKEN}
    set_state(running=True, last_tick_at=timezone.now(), updated_at=timezone.now())

    response = probe.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {"status": "not ready"}  # no exception class names, no check names


@pytest.mark.django_db
def test_a_ready_service_tells_an_anonymous_probe_only_that(probe):
    response = probe.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


@pytest.mark.django_db
@pytest.mark.parametrize("authorization", ["Bearer wrong", "Token monitoring-token", "Bearer "])
def test_a_wrong_token_sees_no_checks(probe, settings, authorization):
    settings.DISPATCHER = {**settings.DISPATCHER, "METRICS_TOKEN": TOKEN}
    assert probe.get("/readyz", headers={"Authorization": authorization}).json() == {"status": "ready"}


@pytest.mark.django_db
def test_no_token_is_accepted_when_none_is_set(probe):
    assert probe.get("/readyz", headers={"Authorization": "Bearer "}).json() == {"status": "ready"}
    assert probe.get("/readyz", headers={"Authorization": "Bearer anything"}).json() == {"status": "ready"}


@pytest.mark.django_db
def test_staff_see_the_checks_and_other_users_do_not():
    staff, user = Client(), Client()
    staff.force_login(make_user(username="ops", staff=True))
    user.force_login(make_user(username="client-app"))

    assert staff.get("/readyz").json()["checks"] == {"database": "ok", "cache": "ok", "dispatcher": "ok"}
    assert user.get("/readyz").json() == {"status": "ready"}
