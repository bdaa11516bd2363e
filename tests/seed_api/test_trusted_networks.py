"""SEED_API_TRUSTED_NETWORKS: the Go service's clients, which send no credentials,
reach the seed routes from the networks the deployment trusts, as its service user.
Off by default; a token is then needed, as everywhere."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import ip_network

import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from audit.models import ControlAction
from dispatcher.models import DispatcherState
from dispatcher.state import dispatcher_state_ensure
from messages_app.models import Message
from tests.factories import MESSAGE_CLIENT_PERMS, make_user
from tests.processes import REPO_ROOT, child_env

pytestmark = pytest.mark.django_db

BODY = {"recipient_phone_number": "+905551112233", "content": "from the Go client"}


@pytest.fixture
def service_user(db):
    user = make_user(username="go-clients", perms=MESSAGE_CLIENT_PERMS)
    user.user_permissions.add(Permission.objects.get(codename="control_dispatcher"))
    return user


@pytest.fixture
def trusting(settings, service_user):
    settings.SEED_API_TRUSTED_NETWORKS = [ip_network("10.20.0.0/16"), ip_network("2001:db8::/32")]
    settings.SEED_API_SERVICE_USER = service_user.username
    return settings


def go_client(address: str, **headers: str) -> APIClient:
    """As the Go service's clients call: no credentials, from `address`."""
    return APIClient(REMOTE_ADDR=address, **headers)


def test_off_by_default_a_client_without_a_token_is_refused(settings, service_user):
    assert settings.SEED_API_TRUSTED_NETWORKS == []

    response = go_client("10.20.1.5").post("/messages", BODY, format="json")

    assert response.status_code == 401
    assert response.json()["fail"]["msg"] == "unauthorized"
    assert response["WWW-Authenticate"] == "Token"
    assert not Message.objects.exists()


@pytest.mark.parametrize("address", ["10.20.1.5", "::ffff:10.20.1.5", "2001:db8::7"])
def test_a_client_on_a_trusted_network_queues_as_the_service_user(trusting, address):
    response = go_client(address).post("/messages", BODY, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["success"]["status"] == "unsent"
    assert go_client(address).get("/status").status_code == 200
    assert go_client(address).get("/messages").status_code == 200


def test_control_from_a_trusted_network_is_audited_as_the_service_user(trusting):
    dispatcher_state_ensure()

    response = go_client("10.20.1.5").post("/messages/worker/stop")

    assert response.status_code == 200, response.content
    assert DispatcherState.objects.get().running is False
    record = ControlAction.objects.get()
    assert (record.actor_label, record.via) == ("go-clients", ControlAction.Via.SEED_API)


@pytest.mark.parametrize("address", ["10.21.0.1", "192.0.2.7", "2001:db9::1", "not-an-address", ""])
def test_other_addresses_still_need_a_token(trusting, address):
    assert go_client(address).post("/messages", BODY, format="json").status_code == 401


def test_a_forwarded_for_header_does_not_make_a_client_trusted(trusting):
    client = go_client("192.0.2.7", HTTP_X_FORWARDED_FOR="10.20.1.5")
    assert client.post("/messages", BODY, format="json").status_code == 401


@pytest.mark.parametrize("header", [{"HTTP_ORIGIN": "https://evil.example"}, {"HTTP_SEC_FETCH_SITE": "cross-site"}])
def test_a_browser_on_a_trusted_network_gets_nothing_without_a_token(trusting, header):
    # A page elsewhere cannot make an operator's browser post here through the network's trust.
    assert go_client("10.20.1.5", **header).post("/messages", BODY, format="json").status_code == 401
    assert not Message.objects.exists()


def test_the_service_user_s_permissions_apply(trusting, service_user):
    service_user.user_permissions.remove(Permission.objects.get(codename="control_dispatcher"))

    response = go_client("10.20.1.5").post("/messages/worker/stop")

    assert response.status_code == 403


def test_a_token_from_a_trusted_network_is_that_token_s_user(trusting, client_for, user):
    client = client_for(user)
    client.defaults["REMOTE_ADDR"] = "10.20.1.5"

    assert client.post("/messages/worker/stop").status_code == 403  # alice may not; go-clients could
    assert client.post("/messages", BODY, format="json").status_code == 200


def test_a_missing_or_inactive_service_user_lets_nobody_in(trusting, service_user, caplog):
    service_user.is_active = False
    service_user.save()

    assert go_client("10.20.1.5").post("/messages", BODY, format="json").status_code == 401
    assert any("SEED_API_SERVICE_USER 'go-clients' is not an active user" in r.getMessage() for r in caplog.records)


def test_the_rest_of_the_api_never_trusts_the_network(trusting):
    assert go_client("10.20.1.5").post("/api/messages/", BODY, format="json").status_code == 401
    assert go_client("10.20.1.5").get("/api/dispatcher/").status_code == 401


# --- reading the setting ----------------------------------------------------------------------------


def settings_of(**env: str) -> subprocess.CompletedProcess:
    code = "import messaging_site.settings as s; print(s.SEED_API_TRUSTED_NETWORKS, s.SEED_API_SERVICE_USER)"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={**child_env(), "DJANGO_SETTINGS_MODULE": "", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_networks_are_read_from_the_environment():
    result = settings_of(SEED_API_TRUSTED_NETWORKS="10.0.0.0/8, 192.0.2.7", SEED_API_SERVICE_USER="go")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[IPv4Network('10.0.0.0/8'), IPv4Network('192.0.2.7/32')] go"


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"SEED_API_TRUSTED_NETWORKS": "10.0.0.1/8", "SEED_API_SERVICE_USER": "go"}, "did you mean 10.0.0.0/8?"),
        ({"SEED_API_TRUSTED_NETWORKS": "office", "SEED_API_SERVICE_USER": "go"}, "got 'office'"),
        ({"SEED_API_TRUSTED_NETWORKS": "0.0.0.0/0", "SEED_API_SERVICE_USER": "go"}, "must not hold every address"),
        ({"SEED_API_TRUSTED_NETWORKS": "10.0.0.0/8"}, "SEED_API_SERVICE_USER must name the user"),
    ],
)
def test_a_wrong_setting_stops_start_up_naming_it(env, error):
    result = settings_of(**env)

    assert result.returncode != 0
    assert "SEED_API_" in result.stderr and error in result.stderr, result.stderr


def test_the_setting_is_documented_where_the_others_are():
    for document in (".env.example", "README.md"):
        text = (REPO_ROOT / document).read_text()
        assert "SEED_API_TRUSTED_NETWORKS=" in text or "`SEED_API_TRUSTED_NETWORKS`" in text, document
        assert "SEED_API_SERVICE_USER" in text, document
    assert "Authorization: Token <key>" in (REPO_ROOT / "README.md").read_text()
