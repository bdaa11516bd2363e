import datetime as dt
import io
import json
import re

import pytest
from django.core.management import call_command
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_q.models import OrmQ
from rest_framework.test import APIClient

from dispatcher.conf import dispatcher_settings
from dispatcher.models import MAX_BATCH_SIZE, MAX_INTERVAL_SECONDS, DispatcherState
from dispatcher.schedule import DISPATCH_WINDOW_TASK
from messages_app.models import Message
from tests.factories import make_message

pytestmark = pytest.mark.django_db

URL = "/api/dispatcher/"
START_URL = "/api/dispatcher/start/"
STOP_URL = "/api/dispatcher/stop/"

STATUS_FIELDS = {
    "running",
    "batch_size",
    "interval_seconds",
    "last_tick_at",
    "next_tick_at",
    "pace_held",
    "behind_since",
    "behind_seconds",
    "counts",
    "delivery_cache_pending",
}


def make_state(**fields) -> DispatcherState:
    """Set the one state row (migrate creates it) to a known state."""
    fields.setdefault("running", True)
    fields.setdefault("batch_size", 3)
    fields.setdefault("interval_seconds", 60)
    fields.setdefault("last_tick_at", None)
    fields.setdefault("window_id", None)
    if fields["running"]:
        fields.setdefault("next_tick_at", timezone.now() + dt.timedelta(seconds=30))
    else:
        fields.setdefault("next_tick_at", None)
    state, _ = DispatcherState.objects.update_or_create(pk=DispatcherState.SINGLETON_PK, defaults=fields)
    return state


@pytest.fixture
def no_state(db):
    DispatcherState.objects.all().delete()


def stored_state() -> dict:
    return DispatcherState.objects.values(
        "running", "batch_size", "interval_seconds", "last_tick_at", "next_tick_at", "window_id"
    ).get()


def assert_close_to_now(value: str | None, *, seconds: float = 5) -> None:
    assert value is not None
    parsed = parse_datetime(value)
    assert parsed is not None
    assert abs((parsed - timezone.now()).total_seconds()) < seconds


# --- GET -----------------------------------------------------------------------------


def test_get_returns_state_and_counts(api_client):
    last_tick = timezone.now() - dt.timedelta(seconds=10)
    make_state(batch_size=7, interval_seconds=45, last_tick_at=last_tick)
    for status, how_many in {
        "unsent": 3,
        "processing": 1,
        "sent": 4,
        "failed": 2,
        "cancelled": 5,
        "expired": 6,
    }.items():
        for _ in range(how_many):
            make_message(status=status)

    response = api_client.get(URL)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == STATUS_FIELDS
    assert body["running"] is True
    assert body["batch_size"] == 7
    assert body["interval_seconds"] == 45
    assert parse_datetime(body["last_tick_at"]) == last_tick
    assert parse_datetime(body["next_tick_at"]) == DispatcherState.objects.get().next_tick_at
    assert body["counts"] == {
        "unsent": 3,
        "processing": 1,
        "sent": 4,
        "failed": 2,
        "cancelled": 5,
        "expired": 6,
        "suppressed": 0,
    }


def test_get_counts_zero_for_missing_statuses(api_client):
    make_state()
    make_message(status=Message.Status.SENT)

    body = api_client.get(URL).json()

    assert body["counts"] == {
        "unsent": 0,
        "processing": 0,
        "sent": 1,
        "failed": 0,
        "cancelled": 0,
        "expired": 0,
        "suppressed": 0,
    }


def test_the_api_the_command_the_admin_and_the_dashboard_count_the_same_statuses(api_client, admin_client):
    make_state()
    for status in Message.Status:
        make_message(status=status)
    make_message(status=Message.Status.EXPIRED)
    every = {status.value: 1 for status in Message.Status} | {"expired": 2}

    api = api_client.get(URL).json()["counts"]
    out = io.StringIO()
    call_command("dispatcher", "status", stdout=out)
    command = dict(re.findall(r"(\w+) (\d+)", out.getvalue().split("messages:", 1)[1].splitlines()[0]))
    admin_page = admin_client.get("/admin/dispatcher/dispatcherstate/1/change/").content.decode()
    dashboard = admin_client.get("/admin/dispatcher/dispatcherstate/dashboard/").content.decode()

    assert api == every
    assert {name: int(n) for name, n in command.items()} == every
    shown_on_admin = re.search(r'field-message_counts.*?<div class="readonly">(.*?)</div>', admin_page, re.S).group(1)
    assert {name: int(n) for name, n in re.findall(r"(\w+): (\d+)", shown_on_admin)} == every
    assert {s: int(re.search(rf'id="count-{s}">(\d+)<', dashboard).group(1)) for s in every} == every


def test_get_of_a_stopped_dispatcher_has_no_next_tick(api_client):
    make_state(running=False, next_tick_at=timezone.now())

    body = api_client.get(URL).json()

    assert body["running"] is False
    assert body["next_tick_at"] is None


def test_get_before_the_state_row_exists_shows_the_configured_pace_and_writes_nothing(api_client, no_state):
    # migrate creates the row (deploy = start); a read never does.
    response = api_client.get(URL)

    assert response.status_code == 200
    body = response.json()
    conf = dispatcher_settings()
    assert body["running"] is True
    assert body["batch_size"] == conf.initial_batch_size
    assert body["interval_seconds"] == conf.initial_interval_seconds
    assert body["last_tick_at"] is None
    assert body["counts"] == {status.value: 0 for status in Message.Status}
    assert DispatcherState.objects.count() == 0


def test_any_authenticated_user_may_get(api_client, staff_client):
    make_state()
    assert api_client.get(URL).status_code == 200
    assert staff_client.get(URL).status_code == 200


def test_session_authenticated_user_may_get(user):
    client = APIClient()
    client.force_login(user)
    assert client.get(URL).status_code == 200


# --- permissions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("get", URL, None),
        ("patch", URL, {"batch_size": 9}),
        ("post", START_URL, None),
        ("post", STOP_URL, None),
    ],
)
def test_anonymous_requests_are_401_and_change_nothing(anon_client, method, url, body):
    make_state(running=False)
    before = stored_state()

    response = getattr(anon_client, method)(url, body, format="json")

    assert response.status_code == 401
    assert response.has_header("WWW-Authenticate")
    assert stored_state() == before


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("patch", URL, {"batch_size": 9}),
        ("post", START_URL, None),
        ("post", STOP_URL, None),
    ],
)
@pytest.mark.parametrize("running", [True, False])
def test_non_staff_users_may_not_control_the_dispatcher(
    api_client, django_capture_on_commit_callbacks, method, url, body, running
):
    make_state(running=running)
    before = stored_state()

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = getattr(api_client, method)(url, body, format="json")

    assert response.status_code == 403
    assert stored_state() == before
    assert callbacks == []
    assert not OrmQ.objects.exists()


@pytest.mark.parametrize("method", ["put", "delete", "post"])
def test_unsupported_methods_are_405(staff_client, method):
    make_state()
    before = stored_state()
    response = getattr(staff_client, method)(URL, {"batch_size": 9}, format="json")
    assert response.status_code == 405
    assert stored_state() == before


@pytest.mark.parametrize("url", [START_URL, STOP_URL])
def test_start_and_stop_need_post(staff_client, url):
    make_state()
    assert staff_client.get(url).status_code == 405


# --- PATCH ------------------------------------------------------------------------------------


def test_patch_batch_size(staff_client):
    make_state(batch_size=3, interval_seconds=60)

    response = staff_client.patch(URL, {"batch_size": 25}, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == STATUS_FIELDS
    assert (body["batch_size"], body["interval_seconds"]) == (25, 60)
    state = DispatcherState.objects.get()
    assert (state.batch_size, state.interval_seconds) == (25, 60)


def test_patch_interval(staff_client):
    make_state(batch_size=3, interval_seconds=60)

    response = staff_client.patch(URL, {"interval_seconds": 5}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["interval_seconds"] == 5
    state = DispatcherState.objects.get()
    assert (state.batch_size, state.interval_seconds) == (3, 5)


def test_patch_both_at_their_limits(staff_client):
    make_state()

    response = staff_client.patch(
        URL, {"batch_size": MAX_BATCH_SIZE, "interval_seconds": MAX_INTERVAL_SECONDS}, format="json"
    )

    assert response.status_code == 200, response.content
    state = DispatcherState.objects.get()
    assert (state.batch_size, state.interval_seconds) == (MAX_BATCH_SIZE, MAX_INTERVAL_SECONDS)


def test_patch_accepts_the_minimum(staff_client):
    make_state()
    response = staff_client.patch(URL, {"batch_size": 1, "interval_seconds": 1}, format="json")
    assert response.status_code == 200, response.content
    state = DispatcherState.objects.get()
    assert (state.batch_size, state.interval_seconds) == (1, 1)


def test_patch_of_a_stopped_dispatcher_keeps_it_stopped(staff_client):
    make_state(running=False)

    response = staff_client.patch(URL, {"interval_seconds": 10}, format="json")

    assert response.status_code == 200
    assert response.json()["running"] is False
    assert response.json()["next_tick_at"] is None
    state = DispatcherState.objects.get()
    assert state.running is False
    assert state.interval_seconds == 10


def test_patch_before_the_dispatcher_exists_creates_it(staff_client, no_state):
    response = staff_client.patch(URL, {"batch_size": 11}, format="json")
    assert response.status_code == 200, response.content
    assert DispatcherState.objects.get().batch_size == 11


# --- PATCH of what GET returned (a round trip) ----------------------------------------------------


def test_the_state_read_can_be_sent_back_with_the_pace_changed(staff_client):
    make_state(batch_size=3, interval_seconds=60)
    body = staff_client.get(URL).json()
    assert set(body) == STATUS_FIELDS

    response = staff_client.patch(URL, {**body, "batch_size": 8}, format="json")

    assert response.status_code == 200, response.content
    state = DispatcherState.objects.get()
    assert (state.running, state.batch_size, state.interval_seconds) == (True, 8, 60)


def test_a_round_trip_succeeds_although_the_readings_moved_since_the_get(staff_client):
    make_state(running=False, batch_size=3, interval_seconds=60)
    body = staff_client.get(URL).json()
    # Between the GET and the PATCH, messages were queued and sent, a tick ran: the
    # readings sent back are no longer the server's, and are ignored.
    make_message()
    moved = {
        **body,
        "counts": {"unsent": 0, "processing": 0, "sent": 0, "failed": 0},
        "last_tick_at": "2020-01-01T00:00:00Z",
        "behind_seconds": 12.5,
        "pace_held": False,
        "interval_seconds": 30,
    }

    response = staff_client.patch(URL, moved, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["counts"]["unsent"] == 1
    assert response.json()["last_tick_at"] is None
    state = DispatcherState.objects.get()
    assert (state.running, state.interval_seconds, state.last_tick_at) == (False, 30, None)


@pytest.mark.parametrize("running", [True, False])
def test_a_changed_running_is_refused_with_where_to_start_or_stop(staff_client, running):
    make_state(running=running, batch_size=3, interval_seconds=60)
    before = stored_state()
    body = staff_client.get(URL).json()

    response = staff_client.patch(URL, {**body, "running": not running, "batch_size": 9}, format="json")

    assert response.status_code == 400
    other = "stop" if running else "start"
    [error] = response.json()["running"]
    assert error.startswith(f"Read-only here, and the dispatcher is {'running' if running else 'stopped'}")
    assert f"POST /api/dispatcher/{other}/" in error
    assert stored_state() == before


def test_the_browsable_api_offers_only_the_writable_fields_for_patch(staff_user):
    make_state(batch_size=4, interval_seconds=45)
    browser = APIClient()
    browser.force_login(staff_user)

    response = browser.get(URL, HTTP_ACCEPT="text/html")

    assert response.status_code == 200
    form = response.context["raw_data_patch_form"]
    assert json.loads(form["_content"].initial) == {"batch_size": 4, "interval_seconds": 45}
    # The page still shows the whole state above the form.
    assert "&quot;counts&quot;" in response.content.decode()


@pytest.mark.parametrize(
    ("body", "error_key"),
    [
        pytest.param({"batch_size": 0}, "batch_size", id="batch-zero"),
        pytest.param({"batch_size": -5}, "batch_size", id="batch-negative"),
        pytest.param({"batch_size": MAX_BATCH_SIZE + 1}, "batch_size", id="batch-over-max"),
        pytest.param({"batch_size": 10**30}, "batch_size", id="batch-huge"),
        pytest.param({"batch_size": "9" * 2000}, "batch_size", id="batch-huge-string"),
        pytest.param({"batch_size": "ten"}, "batch_size", id="batch-word"),
        pytest.param({"batch_size": ""}, "batch_size", id="batch-empty-string"),
        pytest.param({"batch_size": 2.5}, "batch_size", id="batch-fraction"),
        pytest.param({"batch_size": None}, "batch_size", id="batch-null"),
        pytest.param({"batch_size": True}, "batch_size", id="batch-bool"),
        pytest.param({"batch_size": [5]}, "batch_size", id="batch-list"),
        pytest.param({"interval_seconds": 0}, "interval_seconds", id="interval-zero"),
        pytest.param({"interval_seconds": -1}, "interval_seconds", id="interval-negative"),
        pytest.param({"interval_seconds": MAX_INTERVAL_SECONDS + 1}, "interval_seconds", id="interval-over-max"),
        pytest.param({"interval_seconds": 10**20}, "interval_seconds", id="interval-huge"),
        pytest.param({"interval_seconds": "soon"}, "interval_seconds", id="interval-word"),
        pytest.param({"batch_size": 5, "interval_seconds": 0}, "interval_seconds", id="one-good-one-bad"),
        pytest.param({"batch_size": 5, "running": False}, "running", id="running-changed"),
        pytest.param({"batch_size": 5, "running": "sometimes"}, "running", id="running-not-a-boolean"),
        pytest.param({"batch_size": 5, "window_id": "x"}, "window_id", id="unknown-field"),
        pytest.param({"batchsize": 5}, "batchsize", id="misspelt-field"),
        pytest.param({}, "non_field_errors", id="empty-body"),
    ],
)
def test_patch_with_bad_input_is_400_and_changes_nothing(staff_client, body, error_key):
    make_state(batch_size=3, interval_seconds=60)
    before = stored_state()

    response = staff_client.patch(URL, body, format="json")

    assert response.status_code == 400, response.content
    assert error_key in response.json()
    assert stored_state() == before


@pytest.mark.parametrize("raw", [b"", b"[]", b"[1, 2]", b'"batch_size"', b"5", b"{not json"])
def test_patch_with_a_body_that_is_not_an_object_is_400(staff_client, raw):
    make_state(batch_size=3, interval_seconds=60)
    before = stored_state()

    response = staff_client.patch(URL, raw, content_type="application/json")

    assert response.status_code == 400, response.content
    assert stored_state() == before


# --- start / stop ---------------------------------------------------------------------------------


def test_start_from_stopped_runs_the_first_tick_at_once_and_enqueues_a_window(
    staff_client, django_capture_on_commit_callbacks
):
    make_state(running=False)
    assert not OrmQ.objects.exists()

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = staff_client.post(START_URL)

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == STATUS_FIELDS
    assert body["running"] is True
    assert_close_to_now(body["next_tick_at"])
    state = DispatcherState.objects.get()
    assert state.running is True
    assert abs((state.next_tick_at - timezone.now()).total_seconds()) < 5

    assert len(callbacks) == 1
    queued = OrmQ.objects.get()
    assert queued.task["func"] == DISPATCH_WINDOW_TASK
    assert queued.group() == "dispatcher"


def test_start_when_running_is_idempotent_and_enqueues_nothing(staff_client, django_capture_on_commit_callbacks):
    next_tick = timezone.now() + dt.timedelta(seconds=40)
    make_state(running=True, next_tick_at=next_tick)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        first = staff_client.post(START_URL)
        second = staff_client.post(START_URL)

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert first.json()["running"] is True
    # Starting a running dispatcher does not pull its next tick forward.
    assert parse_datetime(first.json()["next_tick_at"]) == next_tick
    assert DispatcherState.objects.get().next_tick_at == next_tick
    assert callbacks == []
    assert not OrmQ.objects.exists()


def test_start_twice_from_stopped_enqueues_one_window(staff_client, django_capture_on_commit_callbacks):
    make_state(running=False)

    with django_capture_on_commit_callbacks(execute=True):
        assert staff_client.post(START_URL).status_code == 200
        assert staff_client.post(START_URL).status_code == 200

    assert OrmQ.objects.count() == 1


def test_stop(staff_client, django_capture_on_commit_callbacks):
    make_state(running=True)

    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(STOP_URL)

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == STATUS_FIELDS
    assert body["running"] is False
    assert body["next_tick_at"] is None
    state = DispatcherState.objects.get()
    assert state.running is False
    assert state.next_tick_at is None
    assert not OrmQ.objects.exists()


def test_stop_is_idempotent(staff_client):
    make_state(running=True)

    first = staff_client.post(STOP_URL)
    second = staff_client.post(STOP_URL)

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert DispatcherState.objects.get().running is False


def test_stop_keeps_the_pace(staff_client):
    make_state(running=True, batch_size=8, interval_seconds=33)
    body = staff_client.post(STOP_URL).json()
    assert (body["batch_size"], body["interval_seconds"]) == (8, 33)
    state = DispatcherState.objects.get()
    assert (state.batch_size, state.interval_seconds) == (8, 33)


def test_stop_then_start_round_trip(staff_client, django_capture_on_commit_callbacks):
    make_state(running=True)

    with django_capture_on_commit_callbacks(execute=True):
        assert staff_client.post(STOP_URL).json()["running"] is False
        started = staff_client.post(START_URL).json()

    assert started["running"] is True
    assert_close_to_now(started["next_tick_at"])
    assert DispatcherState.objects.get().running is True
    assert OrmQ.objects.count() == 1
    assert staff_client.get(URL).json()["running"] is True


def test_start_and_stop_before_the_dispatcher_exists(staff_client, no_state):
    stopped = staff_client.post(STOP_URL)
    assert stopped.status_code == 200
    assert stopped.json()["running"] is False
    assert DispatcherState.objects.get().running is False


@pytest.mark.django_db(transaction=True)
def test_start_enqueues_the_window_after_a_real_commit(staff_user, client_for):
    make_state(running=False)
    client = client_for(staff_user)

    response = client.post(START_URL)

    assert response.status_code == 200
    queued = OrmQ.objects.get()
    assert queued.task["func"] == DISPATCH_WINDOW_TASK


def test_get_says_when_the_cluster_is_behind_the_pace(api_client):
    make_state(running=True, batch_size=5)
    DispatcherState.objects.update(behind_since=timezone.now() - dt.timedelta(seconds=42))

    body = api_client.get(URL).json()

    assert body["pace_held"] is False
    assert 41 <= body["behind_seconds"] <= 60
    assert body["behind_since"] is not None


def test_get_says_the_pace_is_not_held_while_a_due_tick_waits_for_a_window(api_client):
    # Four minutes overdue and no batch in flight: no dispatch window is taking ticks.
    make_state(running=True, next_tick_at=timezone.now() - dt.timedelta(minutes=4))

    body = api_client.get(URL).json()

    assert body["pace_held"] is False
    assert 240 <= body["behind_seconds"] <= 300
    assert body["behind_since"] == body["next_tick_at"]


def test_get_says_the_pace_is_held(api_client):
    make_state(running=True)
    body = api_client.get(URL).json()
    assert (body["pace_held"], body["behind_since"], body["behind_seconds"]) == (True, None, 0.0)
