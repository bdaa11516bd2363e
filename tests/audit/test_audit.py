"""The audit log: every control action (start, stop, pace, requeue) through the
API, the seed routes, the admin and manage.py records who, what, when and how;
the admin shows it and nobody can change it."""

from __future__ import annotations

import datetime as dt
import html
import json
from io import StringIO

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import ControlAction
from dispatcher.models import DispatcherState
from dispatcher.permissions import CONTROL_DISPATCHER
from dispatcher.state import dispatcher_start
from messages_app.models import Message
from messages_app.permissions import REQUEUE_MESSAGE
from tests.factories import make_message, make_user

pytestmark = pytest.mark.django_db

Action = ControlAction.Action
Via = ControlAction.Via
Status = Message.Status

CHANGELIST = "/admin/audit/controlaction/"
DASHBOARD = "/admin/dispatcher/dispatcherstate/dashboard/"


def set_state(*, running: bool, batch_size: int = 3, interval_seconds: int = 60) -> None:
    DispatcherState.objects.update_or_create(
        pk=DispatcherState.SINGLETON_PK,
        defaults={
            "running": running,
            "batch_size": batch_size,
            "interval_seconds": interval_seconds,
            "next_tick_at": timezone.now() if running else None,
        },
    )


def the_record() -> ControlAction:
    """The one row written (fails if there are none or several)."""
    [record] = ControlAction.objects.all()
    return record


def assert_record(record: ControlAction, *, action: str, via: str, actor, detail: dict) -> None:
    assert (record.action, record.via) == (action, via)
    assert record.actor_id == (actor.pk if actor else None)
    if actor is not None:
        assert record.actor_label == actor.username
    else:
        assert record.actor_label.startswith("manage.py")
    assert record.detail == detail
    assert abs((record.created_at - timezone.now()).total_seconds()) < 10


@pytest.fixture
def superuser_client(client) -> Client:
    client.force_login(make_user(username="root", superuser=True))
    return client


# --- through the API ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "running", "action"),
    [("/api/dispatcher/start/", False, Action.START), ("/api/dispatcher/stop/", True, Action.STOP)],
)
def test_api_start_and_stop_are_recorded(operator_client, operator_user, path, running, action):
    set_state(running=running)

    assert operator_client.post(path).status_code == 200

    assert_record(the_record(), action=action, via=Via.API, actor=operator_user, detail={"changed": True})


def test_a_start_that_changes_nothing_is_still_recorded_and_says_so(operator_client, operator_user):
    set_state(running=True)

    assert operator_client.post("/api/dispatcher/start/").status_code == 200

    assert_record(the_record(), action=Action.START, via=Via.API, actor=operator_user, detail={"changed": False})


def test_api_pace_change_records_the_new_and_previous_values(staff_client, staff_user):
    set_state(running=True, batch_size=3, interval_seconds=60)

    assert staff_client.patch("/api/dispatcher/", {"batch_size": 10}, format="json").status_code == 200

    assert_record(
        the_record(),
        action=Action.CONFIGURE,
        via=Via.API,
        actor=staff_user,
        detail={"batch_size": 10, "previous": {"batch_size": 3}, "changed": True},
    )


def test_a_rejected_pace_change_is_not_recorded(staff_client):
    set_state(running=True)
    assert staff_client.patch("/api/dispatcher/", {"batch_size": 0}, format="json").status_code == 400
    assert not ControlAction.objects.exists()


def test_api_requeue_is_recorded_with_the_message(operator_client, operator_user):
    message = make_message(status=Status.FAILED)

    assert operator_client.post(f"/api/messages/{message.pk}/requeue/").status_code == 200

    assert_record(
        the_record(),
        action=Action.REQUEUE,
        via=Via.API,
        actor=operator_user,
        detail={"message_ids": [message.pk], "count": 1},
    )


def test_a_requeue_refused_with_409_is_not_recorded(operator_client):
    message = make_message(status=Status.SENT)
    assert operator_client.post(f"/api/messages/{message.pk}/requeue/").status_code == 409
    assert not ControlAction.objects.exists()


def test_a_call_refused_for_lack_of_permission_is_not_recorded(api_client):
    set_state(running=False)
    message = make_message(status=Status.FAILED)

    assert api_client.post("/api/dispatcher/start/").status_code == 403
    assert api_client.post(f"/api/messages/{message.pk}/requeue/").status_code == 403

    assert not ControlAction.objects.exists()


# --- through the seed routes -------------------------------------------------------------------------


@pytest.mark.parametrize(("word", "running", "action"), [("start", False, Action.START), ("stop", True, Action.STOP)])
def test_seed_worker_routes_are_recorded(operator_client, operator_user, word, running, action):
    set_state(running=running)

    assert operator_client.post(f"/messages/worker/{word}").status_code == 200

    assert_record(the_record(), action=action, via=Via.SEED_API, actor=operator_user, detail={"changed": True})


def test_a_seed_worker_call_with_an_unknown_word_is_not_recorded(staff_client):
    assert staff_client.post("/messages/worker/pause").status_code == 400
    assert not ControlAction.objects.exists()


# --- through the admin ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "running", "action"), [("start", False, Action.START), ("stop", True, Action.STOP)])
def test_admin_start_and_stop_buttons_are_recorded(superuser_client, name, running, action):
    set_state(running=running)

    response = superuser_client.post(reverse(f"admin:dispatcher_dispatcherstate_{name}"), {"next": DASHBOARD})

    assert response.status_code == 302
    root = response.wsgi_request.user
    assert_record(the_record(), action=action, via=Via.ADMIN, actor=root, detail={"changed": True})


def test_admin_pace_form_is_recorded(superuser_client):
    set_state(running=False, batch_size=3, interval_seconds=60)
    url = reverse("admin:dispatcher_dispatcherstate_change", args=[DispatcherState.SINGLETON_PK])

    response = superuser_client.post(url, {"batch_size": "3", "interval_seconds": "15"})

    assert response.status_code == 302
    assert_record(
        the_record(),
        action=Action.CONFIGURE,
        via=Via.ADMIN,
        actor=response.wsgi_request.user,
        detail={
            "batch_size": 3,
            "interval_seconds": 15,
            "previous": {"batch_size": 3, "interval_seconds": 60},
            "changed": True,
        },
    )


def test_dashboard_pace_form_is_recorded(superuser_client):
    set_state(running=True, batch_size=3, interval_seconds=60)

    response = superuser_client.post(DASHBOARD, {"batch_size": "3", "interval_seconds": "60"})

    assert response.status_code == 302
    # Saved unchanged: still an action someone took, and the record says it changed nothing.
    record = the_record()
    assert (record.action, record.via, record.detail["changed"]) == (Action.CONFIGURE, Via.ADMIN, False)


def test_dashboard_requeue_all_is_recorded(superuser_client):
    for _ in range(2):
        make_message(status=Status.FAILED)

    response = superuser_client.post(reverse("admin:dispatcher_dashboard_requeue_failed"))

    assert response.status_code == 302
    assert_record(
        the_record(),
        action=Action.REQUEUE_ALL,
        via=Via.ADMIN,
        actor=response.wsgi_request.user,
        detail={"created_since": None, "count": 2},
    )


def test_changelist_requeue_action_records_the_selection(superuser_client):
    failed = make_message(status=Status.FAILED)
    sent = make_message(status=Status.SENT)

    response = superuser_client.post(
        "/admin/messages_app/message/",
        {"action": "requeue_failed", "_selected_action": [failed.pk, sent.pk], "index": "0"},
    )

    assert response.status_code == 302
    record = the_record()
    assert (record.action, record.via, record.actor_id) == (Action.REQUEUE, Via.ADMIN, response.wsgi_request.user.pk)
    assert sorted(record.detail["message_ids"]) == sorted([failed.pk, sent.pk])
    assert (record.detail["selected"], record.detail["count"]) == (2, 1)


def test_an_admin_user_with_the_dedicated_permissions_may_control_and_requeue(client):
    # Staff (to enter the admin) with only the two dedicated permissions.
    user = make_user(
        username="ops", staff=True, perms=[CONTROL_DISPATCHER, REQUEUE_MESSAGE, "messages_app.view_message"]
    )
    client.force_login(user)
    set_state(running=False)
    make_message(status=Status.FAILED)

    page = client.get(DASHBOARD).content.decode()
    assert 'id="dashboard-start"' in page and 'id="requeue-all"' in page
    assert client.post(reverse("admin:dispatcher_dispatcherstate_start")).status_code == 302
    assert client.post(reverse("admin:dispatcher_dashboard_requeue_failed")).status_code == 302

    assert DispatcherState.objects.get().running is True
    assert set(ControlAction.objects.values_list("action", "actor_label")) == {
        (Action.START, "ops"),
        (Action.REQUEUE_ALL, "ops"),
    }


def test_staff_without_the_control_permission_see_no_buttons_and_are_refused(client):
    user = make_user(username="viewer", staff=True, perms=["dispatcher.view_dispatcherstate"])
    client.force_login(user)
    set_state(running=False)
    url = reverse("admin:dispatcher_dispatcherstate_change", args=[DispatcherState.SINGLETON_PK])

    page = client.get(url).content.decode()

    assert 'id="dispatcher-start"' not in page and 'id="dispatcher-stop"' not in page
    assert client.post(reverse("admin:dispatcher_dispatcherstate_start")).status_code == 403
    assert client.post(url, {"batch_size": "9", "interval_seconds": "9"}).status_code == 403
    assert DispatcherState.objects.get().running is False
    assert not ControlAction.objects.exists()


# --- through manage.py --------------------------------------------------------------------------------


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.parametrize(("word", "running", "action"), [("start", False, Action.START), ("stop", True, Action.STOP)])
def test_dispatcher_command_start_and_stop_are_recorded(word, running, action):
    set_state(running=running)

    run("dispatcher", word)

    assert_record(the_record(), action=action, via=Via.COMMAND, actor=None, detail={"changed": True})


def test_dispatcher_command_configure_is_recorded():
    set_state(running=True, batch_size=3, interval_seconds=60)

    run("dispatcher", "configure", "--batch-size", "7", "--interval-seconds", "60")

    assert_record(
        the_record(),
        action=Action.CONFIGURE,
        via=Via.COMMAND,
        actor=None,
        detail={
            "batch_size": 7,
            "interval_seconds": 60,
            "previous": {"batch_size": 3, "interval_seconds": 60},
            "changed": True,
        },
    )


def test_dispatcher_status_is_not_a_control_action():
    run("dispatcher", "status")
    assert not ControlAction.objects.exists()


def test_requeue_failed_command_is_recorded_and_its_dry_run_is_not():
    make_message(status=Status.FAILED)
    since = timezone.now() - dt.timedelta(days=1)

    run("requeue_failed", "--dry-run")
    assert not ControlAction.objects.exists()

    run("requeue_failed", "--since", since.isoformat())

    assert_record(
        the_record(),
        action=Action.REQUEUE_ALL,
        via=Via.COMMAND,
        actor=None,
        detail={"created_since": since.isoformat(), "count": 1},
    )


# --- the record itself ------------------------------------------------------------------------------------


def test_a_change_that_rolls_back_leaves_no_record():
    set_state(running=False)

    with pytest.raises(RuntimeError), transaction.atomic():
        dispatcher_start()
        raise RuntimeError("the caller's transaction fails")

    assert DispatcherState.objects.get().running is False
    assert not ControlAction.objects.exists()


def test_the_record_outlives_the_user(operator_client, operator_user):
    set_state(running=False)
    operator_client.post("/api/dispatcher/start/")

    operator_user.delete()

    record = the_record()
    assert record.actor_id is None
    assert record.actor_label == "olga"


# --- in the admin: visible, never editable ---------------------------------------------------------------


def test_the_admin_changelist_shows_who_what_when_and_how(superuser_client, operator_client):
    set_state(running=False)
    operator_client.post("/api/dispatcher/start/")
    run("dispatcher", "stop")

    response = superuser_client.get(CHANGELIST)

    assert response.status_code == 200
    rows = list(response.context["cl"].result_list)
    assert [(r.action, r.via) for r in rows] == [(Action.STOP, Via.COMMAND), (Action.START, Via.API)]  # newest first
    page = response.content.decode()
    # The detail in words, not raw JSON.
    for text in ("olga", "manage.py", "Start sending", "Stop sending", "REST API", "changed yes"):
        assert text in page, text
    assert html.escape(json.dumps({"changed": True})) not in page
    # When: the admin's one format, to the second with the time zone.
    assert f"{timezone.localtime(rows[0].created_at):%Y-%m-%d %H:%M:%S} UTC" in page
    # Filters by action and by channel.
    filtered = superuser_client.get(CHANGELIST, {"via__exact": Via.API})
    assert [r.action for r in filtered.context["cl"].result_list] == [Action.START]


def test_nobody_can_add_change_or_delete_a_record(superuser_client, operator_client):
    set_state(running=False)
    operator_client.post("/api/dispatcher/start/")
    record = the_record()
    before = ControlAction.objects.values().get()
    change_url = reverse("admin:audit_controlaction_change", args=[record.pk])

    assert superuser_client.get(reverse("admin:audit_controlaction_add")).status_code == 403
    page = superuser_client.get(change_url)
    assert page.status_code == 200  # shown read-only
    assert b'name="_save"' not in page.content
    assert superuser_client.post(change_url, {"action": "stop", "actor_label": "someone else"}).status_code == 403
    delete_url = reverse("admin:audit_controlaction_delete", args=[record.pk])
    assert superuser_client.post(delete_url, {"post": "yes"}).status_code == 403
    changelist = superuser_client.get(CHANGELIST)
    assert b"delete_selected" not in changelist.content
    assert ControlAction.objects.values().get() == before


def test_the_log_needs_its_view_permission(client):
    staff = make_user(username="staff", staff=True)
    client.force_login(staff)
    assert client.get(CHANGELIST).status_code == 403

    staff.user_permissions.add(Permission.objects.get(codename="view_controlaction"))
    assert client.get(CHANGELIST).status_code == 200


def test_the_log_offers_no_add_change_or_delete_permission_to_grant():
    codenames = set(Permission.objects.filter(content_type__model="controlaction").values_list("codename", flat=True))
    assert codenames == {"view_controlaction"}
