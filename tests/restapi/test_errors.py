"""Every error under /api/ and on the seed routes is JSON in its documented shape
(`{"detail": ...}`, or the seed envelope), as far as the application sees the
request: Django's own refusals (too many form fields or files, a Host not
allowed, a crash) were its HTML pages, and a NUL in the Authorization header
or the session cookie was a 500."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from messages_app import selectors
from messages_app.models import Message
from tests.factories import make_user, token_for

pytestmark = pytest.mark.django_db

API_POSTS = ["/api/messages/", "/api/messages/bulk/"]
SEED_POST = "/messages"


@pytest.fixture
def token():
    return token_for(make_user(username="root", superuser=True))


@pytest.fixture
def client(token) -> Client:
    # raise_request_exception=False: a crash is answered as in production, by handler500.
    return Client(raise_request_exception=False, headers={"Authorization": f"Token {token}"})


def api_error(response, status: int) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json", response.content[:300]
    body = response.json()
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


def seed_error(response, status: int) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json", response.content[:300]
    body = response.json()
    assert body["status"] == status
    assert set(body["fail"]) == {"msg", "reason"}
    return body


def many_fields(n: int) -> dict:
    return {f"field{i}": "x" for i in range(n)}


def many_files(n: int) -> dict:
    return {f"file{i}": SimpleUploadedFile(f"f{i}.txt", b"x") for i in range(n)}


# --- bodies Django refuses to read ---------------------------------------------------------------


def test_a_form_with_2000_fields_is_a_json_400(client):
    body = api_error(client.post("/api/messages/", many_fields(2000)), 400)
    assert body["detail"] == "Too many fields in the body (limit 1000)."
    assert not Message.objects.exists()


def test_multipart_with_150_files_is_a_json_400(client):
    body = api_error(client.post("/api/messages/", many_files(150)), 400)
    assert body["detail"] == "Too many files in the body (limit 100)."


@pytest.mark.parametrize("body", [many_fields(2000), many_files(150)], ids=["2000-fields", "150-files"])
def test_bulk_takes_json_only_and_says_so(client, body):
    api_error(client.post("/api/messages/bulk/", body), 415)


@pytest.mark.parametrize("body", [many_fields(2000), many_files(150)], ids=["2000-fields", "150-files"])
def test_the_seed_route_answers_its_envelope(client, body):
    answer = seed_error(client.post(SEED_POST, body), 422)
    assert answer["fail"]["msg"] == "invalid request body"
    assert "Too many" in answer["fail"]["reason"]


# --- headers and cookies the application cannot use ----------------------------------------------


@pytest.mark.parametrize("path", ["/api/messages/", "/api/dispatcher/"])
def test_a_nul_in_the_token_is_a_json_401(token, path):
    client = Client(raise_request_exception=False)
    response = client.get(path, headers={"Authorization": f"Token {token[:10]}\x00{token[11:]}"})
    assert api_error(response, 401)["detail"] == "Invalid token."


@pytest.mark.parametrize("path", ["/messages", "/status"])
def test_a_nul_in_the_token_is_the_seed_envelopes_401(token, path):
    client = Client(raise_request_exception=False)
    response = client.get(path, headers={"Authorization": f"Token \x00{token}"})
    assert seed_error(response, 401)["fail"]["msg"] == "unauthorized"


@pytest.mark.parametrize("value", ["\x00" * 40, "a" * 40 + "\x00", "ü" * 40, "abc def"])
def test_keys_no_token_can_have_are_refused_like_a_wrong_key(value):
    response = Client(raise_request_exception=False).get("/api/messages/", headers={"Authorization": f"Token {value}"})
    api_error(response, 401)


@pytest.mark.parametrize(("path", "seed"), [("/api/messages/", False), ("/status", True), ("/admin/", None)])
def test_a_nul_in_the_session_cookie_is_no_session(path, seed):
    client = Client(raise_request_exception=False)
    client.cookies["sessionid"] = "abcdefgh\x00ijklmnopqrstuvwxyz012345"

    response = client.get(path)

    if seed is None:
        assert response.status_code == 302  # the admin's login page, as for no session
    elif seed:
        seed_error(response, 401)
    else:
        api_error(response, 401)


@pytest.mark.parametrize(("path", "seed"), [("/api/messages/", False), ("/api/schema/", False), ("/status", True)])
def test_a_host_not_allowed_is_a_json_400(client, path, seed):
    response = client.get(path, headers={"Host": "evil.example"})
    if seed:
        seed_error(response, 400)
    else:
        api_error(response, 400)


def test_pages_outside_the_api_keep_djangos_html_errors(client):
    response = client.get("/admin/", headers={"Host": "evil.example"})
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")


# --- over-long addresses ---------------------------------------------------------------------


def test_an_over_long_url_is_answered_in_json(client):
    api_error(client.get("/api/messages/" + "9" * 10_000 + "/"), 404)
    long_filter = client.get("/api/messages/", {"status": "x" * 10_000})
    assert long_filter.status_code == 400
    assert "status" in long_filter.json()  # field errors, the documented shape of a 400
    api_error(client.get("/api/" + "x" * 10_000), 404)
    seed_error(client.post("/messages/worker/" + "x" * 10_000), 400)


# --- a crash ---------------------------------------------------------------------------------


def test_a_crash_is_a_json_500_without_details(client, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(selectors, "message_list", crash)
    monkeypatch.setattr(selectors, "messages_sent", crash)

    body = api_error(client.get("/api/messages/"), 500)
    assert body == {"detail": "Server error."}
    envelope = seed_error(client.get("/messages"), 500)
    assert "secret" not in str(envelope)
