"""/api/callbacks/..., manage.py callbacks, the admin and /metrics: managers register and
manage endpoints (the secret shown once), owners read their own, bad input is a 400."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from audit.models import ControlAction
from callbacks.models import CallbackEndpoint, CallbackEvent
from callbacks.services import endpoint_create
from messages_app.transitions import message_cancel
from tests.factories import make_message, make_user

pytestmark = pytest.mark.django_db

URL = "http://127.0.0.1:9/hooks"
# Managing endpoints takes the callbacks app's model permissions; staff status alone grants nothing.
MANAGE = [f"callbacks.{action}_callbackendpoint" for action in ("view", "add", "change", "delete")]


def client_of(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_staff_register_an_endpoint_and_see_its_secret_once():
    staff = client_of(make_user(username="ops", staff=True, perms=MANAGE))
    created = staff.post("/api/callbacks/endpoints/", {"name": "app", "url": URL}, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["secret"].startswith("whsec_")
    listed = staff.get("/api/callbacks/endpoints/").json()
    assert "secret" not in listed["results"][0]
    assert ControlAction.objects.filter(action="callback").count() == 1
    rotated = staff.post(f"/api/callbacks/endpoints/{created.json()['id']}/rotate/", {}, format="json")
    assert rotated.status_code == 200 and rotated.json()["secret"] != created.json()["secret"]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "url": "ftp://127.0.0.1/"},
        {"name": "x", "url": "http://10.0.0.1/hooks"},
        {"name": "x", "url": URL, "event_types": ["message.nope"]},
        {"name": "x", "url": URL, "enabled": "yes"},
    ],
)
def test_bad_endpoints_are_a_400(body):
    staff = client_of(make_user(username="ops", staff=True, perms=MANAGE))
    response = staff.post("/api/callbacks/endpoints/", body, format="json")
    assert response.status_code == 400, response.json()
    assert not CallbackEndpoint.objects.exists()


def test_an_owner_reads_only_its_endpoints_and_their_events_and_changes_nothing():
    alice, bob = make_user(username="alice"), make_user(username="bob")
    mine = endpoint_create(name="alice's", url=URL, owner=alice).endpoint
    endpoint_create(name="bob's", url="http://127.0.0.1:9/bob", owner=bob)
    message_cancel(message_id=make_message(created_by=alice).pk)
    message_cancel(message_id=make_message(created_by=bob).pk)
    client = client_of(alice)
    assert [e["id"] for e in client.get("/api/callbacks/endpoints/").json()["results"]] == [mine.pk]
    events = client.get("/api/callbacks/events/").json()["results"]
    assert [e["endpoint"] for e in events] == [mine.pk]
    detail = client.get(f"/api/callbacks/events/{events[0]['id']}/").json()
    assert detail["attempts_made"] == []
    assert client.post(f"/api/callbacks/events/{events[0]['id']}/resend/").status_code == 403
    assert client.patch(f"/api/callbacks/endpoints/{mine.pk}/", {"enabled": False}, format="json").status_code == 403


def test_the_command_adds_lists_rotates_and_replays():
    out = StringIO()
    call_command("callbacks", "add", URL, "--name", "cli", "--event", "message.sent", stdout=out)
    assert "signing secret (shown this once): whsec_" in out.getvalue()
    endpoint = CallbackEndpoint.objects.get()
    assert endpoint.event_types == ["message.sent"]
    out = StringIO()
    call_command("callbacks", "list", stdout=out)
    assert "cli" in out.getvalue() and "healthy" in out.getvalue()
    call_command("callbacks", "rotate", str(endpoint.pk), stdout=StringIO())
    out = StringIO()
    call_command("callbacks", "replay", str(endpoint.pk), "--since", "2025-01-01T00:00:00Z", stdout=out)
    assert "0 event(s)" in out.getvalue()
    with pytest.raises(CommandError, match="Refused"):
        call_command("callbacks", "add", "http://169.254.169.254/latest/", stdout=StringIO())
    with pytest.raises(CommandError, match="ISO 8601"):
        call_command("callbacks", "replay", str(endpoint.pk), "--since", "yesterday", stdout=StringIO())
    with pytest.raises(CommandError, match="No such endpoint"):
        call_command("callbacks", "rotate", "999", stdout=StringIO())


def test_the_admin_lists_endpoints_and_events(admin_client):
    endpoint_create(name="shown", url=URL)
    message_cancel(message_id=make_message().pk)
    assert b"shown" in admin_client.get("/admin/callbacks/callbackendpoint/").content
    event = CallbackEvent.objects.get()
    assert admin_client.get(f"/admin/callbacks/callbackevent/{event.pk}/change/").status_code == 200


def test_metrics_show_deliveries_and_the_oldest_pending_event(settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "METRICS_TOKEN": "metrics-token-for-tests"}
    endpoint_create(name="m", url=URL)
    message_cancel(message_id=make_message().pk)
    from callbacks.metrics import deliveries_count

    deliveries_count({"delivered": 2, "retry": 1})
    body = APIClient().get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token-for-tests").content.decode()
    assert 'messaging_callback_deliveries_total{outcome="delivered"} 2.0' in body
    assert "messaging_callback_oldest_pending_seconds" in body
    assert "messaging_callback_pending_events 1.0" in body


def test_the_dashboard_shows_a_disabled_endpoint_and_the_events_waiting(admin_client):
    from dispatcher.state import dispatcher_state_ensure

    dispatcher_state_ensure()
    endpoint = endpoint_create(name="orders app", url=URL).endpoint
    message_cancel(message_id=make_message().pk)
    CallbackEndpoint.objects.filter(pk=endpoint.pk).update(
        enabled=False, disabled_reason="disabled automatically: failing since ..."
    )
    page = admin_client.get("/admin/dispatcher/dispatcherstate/dashboard/").content.decode()
    assert f'id="callbacks-disabled-{endpoint.pk}"' in page
    assert "Disabled: orders app" in page and "disabled automatically" in page
