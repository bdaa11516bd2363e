"""The Go service's routes and envelope, kept for its clients."""

import datetime as dt

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from dispatcher.models import DispatcherState
from messages_app.models import Message
from tests.factories import make_message

pytestmark = pytest.mark.django_db

Status = Message.Status

MESSAGE_FIELDS = {
    "id",
    "uuid",
    "recipient_phone_number",
    "content",
    "status",
    "created_at",
    "sent_at",
    "provider_message_id",
    "attempts",
    "last_error",
    "send_after",
    "next_attempt_at",
}


def set_running(running: bool) -> None:
    DispatcherState.objects.update_or_create(
        pk=DispatcherState.SINGLETON_PK,
        defaults={"running": running, "next_tick_at": timezone.now() if running else None},
    )


def assert_fail(response, code: int, msg: str | None = None) -> dict:
    assert response.status_code == code, response.content
    body = response.json()
    assert set(body) == {"status", "fail"}
    assert body["status"] == code
    assert set(body["fail"]) == {"msg", "reason"}
    assert isinstance(body["fail"]["reason"], str)
    if msg is not None:
        assert body["fail"]["msg"] == msg
    return body["fail"]


# --- POST /messages -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/messages", "/messages/"])
def test_post_message_queues_it_and_answers_200_in_the_envelope(api_client, path):
    response = api_client.post(path, {"recipient_phone_number": "+90 555 111 22 33", "content": "hi"}, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"status", "success"}
    assert body["status"] == 200
    message = body["success"]
    assert set(message) == MESSAGE_FIELDS
    assert message["recipient_phone_number"] == "+905551112233"
    assert message["content"] == "hi"
    assert message["status"] == "unsent"
    stored = Message.objects.get()
    assert stored.pk == message["id"]
    assert stored.recipient_phone_number == "+905551112233"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"recipient_phone_number": "nope", "content": "hi"}, "recipient_phone_number"),
        ({"recipient_phone_number": "+905551112233", "content": "   "}, "content"),
        ({"recipient_phone_number": "+905551112233", "content": 123}, "content"),
        ({"recipient_phone_number": "+905551112233"}, "content"),
        ({}, "recipient_phone_number"),
    ],
)
def test_post_message_with_invalid_fields_is_400_validation_error(api_client, body, field):
    response = api_client.post("/messages", body, format="json")

    fail = assert_fail(response, 400, "validation error")
    assert field in fail["reason"]
    assert not Message.objects.exists()


def test_post_message_with_over_long_content_is_400(api_client, settings):
    settings.MESSAGE_MAX_LENGTH = 3
    response = api_client.post(
        "/messages", {"recipient_phone_number": "+905551112233", "content": "four"}, format="json"
    )
    fail = assert_fail(response, 400, "validation error")
    assert "limit is 3" in fail["reason"]
    assert not Message.objects.exists()


@pytest.mark.parametrize("raw", [b'{"recipient_phone_number": ', b"not json", b"{'single': 'quotes'}"])
def test_post_message_with_malformed_json_is_422_invalid_request_body(api_client, raw):
    response = api_client.post("/messages", raw, content_type="application/json")
    fail = assert_fail(response, 422, "invalid request body")
    assert fail["reason"]
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    "raw", [b'[{"recipient_phone_number": "+905551112233", "content": "hi"}]', b"[]", b'"text"', b"7", b"null"]
)
def test_post_message_with_a_json_body_that_is_not_an_object_is_422(api_client, raw):
    response = api_client.post("/messages/", raw, content_type="application/json")
    assert_fail(response, 422, "invalid request body")
    assert not Message.objects.exists()


def test_post_message_with_an_unsupported_media_type_is_415_in_the_envelope(api_client):
    response = api_client.post("/messages", b"hi", content_type="text/plain")
    assert_fail(response, 415)
    assert not Message.objects.exists()


# --- GET /messages -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/messages", "/messages/"])
def test_get_messages_lists_sent_messages_most_recently_sent_first(api_client, path):
    base = timezone.now() - dt.timedelta(hours=1)
    older = make_message(status=Status.SENT, sent_at=base + dt.timedelta(minutes=1))
    newest = make_message(status=Status.SENT, sent_at=base + dt.timedelta(minutes=20))
    middle = make_message(status=Status.SENT, sent_at=base + dt.timedelta(minutes=5))
    for status in (Status.UNSENT, Status.PROCESSING, Status.FAILED):
        make_message(status=status)

    response = api_client.get(path)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "success"}
    assert body["status"] == 200
    assert [m["id"] for m in body["success"]] == [newest.pk, middle.pk, older.pk]
    assert all(set(m) == MESSAGE_FIELDS for m in body["success"])
    assert all(m["status"] == "sent" for m in body["success"])


def test_get_messages_with_none_sent_is_an_empty_list(api_client):
    make_message(status=Status.UNSENT)
    response = api_client.get("/messages")
    assert response.status_code == 200
    assert response.json() == {"status": 200, "success": []}


def test_get_messages_is_capped(api_client, monkeypatch):
    from seed_api import views as seed_api

    monkeypatch.setattr(seed_api, "SEED_SENT_LIST_LIMIT", 2)
    base = timezone.now() - dt.timedelta(hours=1)
    ids = [make_message(status=Status.SENT, sent_at=base + dt.timedelta(minutes=i)).pk for i in range(4)]

    response = api_client.get("/messages")

    assert [m["id"] for m in response.json()["success"]] == [ids[3], ids[2]]


# --- /messages/worker/<action> ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/messages/worker/start", "/messages/worker/start/"])
def test_worker_start_starts_the_dispatcher(staff_client, django_capture_on_commit_callbacks, path):
    set_running(False)

    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(path)

    assert response.status_code == 200, response.content
    assert response.json() == {"status": 200, "success": "OK"}
    state = DispatcherState.objects.get()
    assert state.running is True
    assert state.next_tick_at is not None


@pytest.mark.parametrize("path", ["/messages/worker/stop", "/messages/worker/stop/"])
def test_worker_stop_stops_the_dispatcher(staff_client, path):
    set_running(True)

    response = staff_client.post(path)

    assert response.status_code == 200, response.content
    assert response.json() == {"status": 200, "success": "OK"}
    assert DispatcherState.objects.get().running is False


def test_worker_start_and_stop_are_idempotent(staff_client, django_capture_on_commit_callbacks):
    set_running(True)
    with django_capture_on_commit_callbacks(execute=True):
        for action in ("start", "start", "stop", "stop"):
            response = staff_client.post(f"/messages/worker/{action}")
            assert response.json() == {"status": 200, "success": "OK"}
    assert DispatcherState.objects.get().running is False


@pytest.mark.parametrize("action", ["foo", "START", "restart", "status"])
def test_worker_with_an_unknown_action_is_400(staff_client, action):
    set_running(True)

    response = staff_client.post(f"/messages/worker/{action}")

    assert_fail(response, 400, "status parameter is missing")
    assert DispatcherState.objects.get().running is True


@pytest.mark.parametrize("action", ["start", "stop", "foo"])
def test_worker_control_by_a_non_staff_user_is_403_in_the_envelope(api_client, action):
    set_running(action == "stop")

    response = api_client.post(f"/messages/worker/{action}")

    fail = assert_fail(response, 403)
    assert fail["msg"]
    assert DispatcherState.objects.get().running is (action == "stop")


def test_worker_needs_post(staff_client):
    set_running(True)
    response = staff_client.get("/messages/worker/stop")
    assert_fail(response, 405)
    assert DispatcherState.objects.get().running is True


# --- GET /status ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/status", "/status/"])
def test_status_answers_the_dispatcher_status_in_the_envelope(api_client, path):
    set_running(True)
    make_message(status=Status.SENT)
    make_message(status=Status.FAILED)
    make_message(status=Status.FAILED)

    response = api_client.get(path)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "success"}
    assert body["status"] == 200
    status = body["success"]
    assert set(status) == {
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
    assert status["running"] is True
    # Every status is counted, as GET /api/dispatcher/ counts them (a new status included).
    assert status["counts"] == {s.value: 0 for s in Status} | {"sent": 1, "failed": 2}


def test_status_of_a_stopped_dispatcher(api_client):
    set_running(False)
    body = api_client.get("/status").json()
    assert body["success"]["running"] is False
    assert body["success"]["next_tick_at"] is None


# --- /swagger ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/swagger", "/swagger/"])
def test_swagger_redirects_to_the_docs(anon_client, path):
    response = anon_client.get(path)
    assert response.status_code in (301, 302)
    assert response["Location"] == "/api/docs/"


# --- authentication ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/messages"),
        ("get", "/messages/"),
        ("post", "/messages"),
        ("post", "/messages/"),
        ("post", "/messages/worker/start"),
        ("post", "/messages/worker/stop"),
        ("post", "/messages/worker/foo"),
        ("get", "/status"),
        ("get", "/status/"),
    ],
)
def test_anonymous_requests_are_401_in_the_envelope(anon_client, method, path):
    set_running(False)

    response = getattr(anon_client, method)(
        path, {"recipient_phone_number": "+905551112233", "content": "hi"}, format="json"
    )

    assert_fail(response, 401, "unauthorized")
    assert response["WWW-Authenticate"].startswith("Token")
    assert not Message.objects.exists()
    assert DispatcherState.objects.get().running is False


def test_a_wrong_token_is_401_in_the_envelope():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token wrong")
    response = client.get("/status")
    fail = assert_fail(response, 401, "unauthorized")
    assert "token" in fail["reason"].lower()


def test_session_authentication_works(user):
    client = APIClient()
    client.force_login(user)
    response = client.post("/messages", {"recipient_phone_number": "+905551112233", "content": "hi"}, format="json")
    assert response.status_code == 200
    assert Message.objects.count() == 1


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "code", "msg", "reason"),
    [
        (
            "post",
            "/messages",
            {"data": "x", "content_type": "text/plain"},
            415,
            "unsupported media type",
            'Unsupported media type "text/plain" in request.',
        ),
        ("delete", "/messages", {}, 405, "method not allowed", 'Method "DELETE" not allowed.'),
    ],
)
def test_the_envelope_shows_errors_filled_in_not_their_templates(api_client, method, url, kwargs, code, msg, reason):
    response = getattr(api_client, method)(url, **kwargs)

    assert response.status_code == code
    assert response.json() == {"status": code, "fail": {"msg": msg, "reason": reason}}
    assert "{" not in response.content.decode().replace('{"status"', "").replace('{"msg"', "")
