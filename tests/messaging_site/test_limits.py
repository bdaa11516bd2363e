"""Limits: request throttling, body size, page size, bulk size, and the admin
login lockout (django-axes). Each is answered with a clear 4xx."""

import datetime as dt
import json
from urllib.parse import urlencode

import pytest
from axes.models import AccessAttempt
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.test import Client, override_settings
from django.utils import timezone
from redis.exceptions import ConnectionError as RedisConnectionError
from rest_framework import throttling
from rest_framework.test import APIClient

from dispatcher.models import DispatcherState
from messages_app.models import Message
from messaging_site.env import env_rate
from tests.factories import make_user, token_for

pytestmark = pytest.mark.django_db

PASSWORD = "pw-for-tests-only"  # what tests.factories.make_user sets
LIST_URL = "/api/messages/"
BULK_URL = "/api/messages/bulk/"
ONE_MESSAGE = {"recipient_phone_number": "+905551112233", "content": "hi"}


@pytest.fixture
def root():
    return make_user(username="root", superuser=True)


def token_client(user, **extra) -> APIClient:
    client = APIClient(**extra)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(user)}")
    return client


# --- throttling -------------------------------------------------------------------------


@pytest.fixture
def low_rates(settings):
    """Three requests a minute per user, two per anonymous address; counts start at zero."""
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"user": "3/min", "anon": "2/min"},
    }
    cache.clear()
    yield
    cache.clear()


def assert_throttled(response) -> int:
    assert response.status_code == 429, response.content
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= 60
    return retry_after


def test_a_user_over_the_rate_gets_429_with_retry_after(low_rates, root):
    client = token_client(root)
    for _ in range(3):
        assert client.get(LIST_URL).status_code == 200

    response = client.get(LIST_URL)

    retry_after = assert_throttled(response)
    assert response.json() == {"detail": f"Request was throttled. Expected available in {retry_after} seconds."}


def test_the_user_rate_counts_every_endpoint_and_writes_nothing_once_throttled(low_rates, root):
    client = token_client(root)
    assert client.get(LIST_URL).status_code == 200
    assert client.get("/api/dispatcher/").status_code == 200
    assert client.post(LIST_URL, ONE_MESSAGE, format="json").status_code == 201

    assert_throttled(client.post(LIST_URL, ONE_MESSAGE, format="json"))
    assert_throttled(client.patch("/api/dispatcher/", {"batch_size": 7}, format="json"))

    assert Message.objects.count() == 1
    assert DispatcherState.objects.get().batch_size != 7


def test_each_user_has_their_own_allowance(low_rates, root):
    client = token_client(root)
    for _ in range(3):
        client.get(LIST_URL)
    assert_throttled(client.get(LIST_URL))

    other = token_client(make_user(username="other", superuser=True))
    assert other.get(LIST_URL).status_code == 200


def test_the_seed_routes_answer_429_in_their_envelope_with_retry_after(low_rates, root):
    client = token_client(root)
    for _ in range(3):
        assert client.get("/status").status_code == 200

    response = client.get("/status")

    retry_after = assert_throttled(response)
    body = response.json()
    assert body["status"] == 429
    assert body["fail"]["msg"] == "Request was throttled."
    assert str(retry_after) in body["fail"]["reason"]


def test_an_anonymous_address_over_the_rate_gets_429_with_retry_after(low_rates):
    client = APIClient(REMOTE_ADDR="203.0.113.7")
    for _ in range(2):
        assert client.get("/api/schema/").status_code == 200

    assert_throttled(client.get("/api/schema/"))
    # Another address has its own allowance...
    assert APIClient(REMOTE_ADDR="203.0.113.8").get("/api/schema/").status_code == 200
    # ...but claiming one in X-Forwarded-For earns nothing: only REMOTE_ADDR counts.
    assert_throttled(client.get("/api/schema/", HTTP_X_FORWARDED_FOR="198.51.100.1"))


def test_throttle_counts_live_in_the_default_cache(low_rates, root):
    client = token_client(root)
    client.get(LIST_URL)
    client.get(LIST_URL)
    # REST framework keeps the times of the recent requests under throttle_<scope>_<user id>.
    assert len(cache.get(f"throttle_user_{root.pk}")) == 2


def test_an_unreachable_cache_lets_requests_through(low_rates, root, monkeypatch):
    class DownCache:
        def get(self, *args, **kwargs):
            raise RedisConnectionError("Redis is down")

        set = get

    monkeypatch.setattr(throttling.SimpleRateThrottle, "cache", DownCache())
    client = token_client(root)
    for _ in range(5):
        assert client.get(LIST_URL).status_code == 200


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1000/min", "1000/min"),
        ("60/m", "60/min"),
        (" 5 / Seconds ", "5/s"),
        ("2/hour", "2/hour"),
        ("100/days", "100/day"),
    ],
)
def test_throttle_rates_are_read_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("THROTTLE_USER_RATE", value)
    assert env_rate("THROTTLE_USER_RATE", "1000/min") == expected


@pytest.mark.parametrize("value", ["1000", "abc/min", "0/min", "-5/min", "10/mango", "10/", "/min", "1.5/s", "٣/s"])
def test_a_malformed_throttle_rate_stops_start_up_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("THROTTLE_ANON_RATE", value)
    with pytest.raises(ImproperlyConfigured, match=r"^THROTTLE_ANON_RATE must be a rate like 60/min"):
        env_rate("THROTTLE_ANON_RATE", "60/min")


def test_throttle_rates_default_when_unset(monkeypatch):
    monkeypatch.delenv("THROTTLE_USER_RATE", raising=False)
    assert env_rate("THROTTLE_USER_RATE", "1000/min") == "1000/min"


# --- body size ----------------------------------------------------------------------------

LIMIT = 4096


@pytest.fixture
def small_body_limit(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = LIMIT


def json_body_of_size(size: int) -> bytes:
    """A valid create request of exactly `size` bytes (its content padded with "a")."""
    empty = json.dumps({**ONE_MESSAGE, "content": ""}).encode()
    return json.dumps({**ONE_MESSAGE, "content": "a" * (size - len(empty))}).encode()


@pytest.mark.parametrize(
    ("method", "path"), [("post", LIST_URL), ("post", BULK_URL), ("patch", "/api/dispatcher/")], ids=str
)
def test_a_json_body_over_the_limit_is_413_naming_the_limit(small_body_limit, root, method, path):
    before = DispatcherState.objects.values().first()

    response = getattr(token_client(root), method)(path, json_body_of_size(LIMIT + 1), content_type="application/json")

    assert response.status_code == 413, response.content
    assert response.json() == {"detail": f"Request body too large (limit {LIMIT} bytes)."}
    assert not Message.objects.exists()
    assert DispatcherState.objects.values().first() == before


def test_a_body_at_the_limit_is_accepted(small_body_limit, root):
    body = json_body_of_size(LIMIT)
    assert len(body) == LIMIT
    with override_settings(MESSAGE_MAX_LENGTH=LIMIT):
        response = token_client(root).post(LIST_URL, body, content_type="application/json")
    assert response.status_code == 201, response.content


@pytest.mark.parametrize("fmt", ["multipart", "form"])
def test_a_form_body_over_the_limit_is_413(small_body_limit, root, fmt):
    client = token_client(root)
    data = {**ONE_MESSAGE, "content": "a" * (LIMIT + 1)}
    if fmt == "multipart":
        response = client.post(LIST_URL, data)
    else:
        response = client.post(LIST_URL, urlencode(data), content_type="application/x-www-form-urlencoded")

    assert response.status_code == 413, response.content
    assert response.json()["detail"] == f"Request body too large (limit {LIMIT} bytes)."
    assert not Message.objects.exists()


@pytest.mark.parametrize("path", ["/messages", "/messages/"])
def test_the_seed_route_answers_an_oversized_body_413_in_its_envelope(small_body_limit, root, path):
    response = token_client(root).post(path, json_body_of_size(LIMIT + 1), content_type="application/json")

    assert response.status_code == 413, response.content
    assert response.json() == {
        "status": 413,
        "fail": {"msg": "Request body too large.", "reason": f"Request body too large (limit {LIMIT} bytes)."},
    }
    assert not Message.objects.exists()


def test_an_oversized_body_from_an_anonymous_client_is_401_not_read(small_body_limit):
    response = APIClient().post(LIST_URL, json_body_of_size(LIMIT + 1), content_type="application/json")
    assert response.status_code == 401
    assert not Message.objects.exists()


# --- page size and bulk size -------------------------------------------------------------------


@pytest.mark.parametrize("path", [LIST_URL, "/api/messages/sent/"])
@pytest.mark.parametrize("page_size", ["501", "100000", "0", "-5", "abc", ""])
def test_a_page_size_outside_1_to_500_is_400(root, path, page_size):
    response = token_client(root).get(path, {"page_size": page_size})
    assert response.status_code == 400, response.content
    assert response.json() == {"page_size": ["Must be a whole number from 1 to 500."]}


def test_the_page_size_is_documented_with_its_range(anon_client):
    schema = anon_client.get("/api/schema/", {"format": "json"}).json()
    for path in (LIST_URL, "/api/messages/sent/"):
        parameters = {p["name"]: p for p in schema["paths"][path]["get"]["parameters"]}
        assert parameters["page_size"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 500}


def test_a_bulk_request_over_the_default_cap_is_400_and_writes_nothing(root, settings):
    cap = settings.MESSAGE_BULK_MAX_ITEMS
    items = [{"recipient_phone_number": f"+90555{i:07d}", "content": "m"} for i in range(cap + 1)]

    response = token_client(root).post(BULK_URL, {"messages": items}, format="json")

    assert response.status_code == 400, response.content
    assert response.json() == {"messages": {"non_field_errors": [f"At most {cap} messages per request."]}}
    assert not Message.objects.exists()


# --- the schema documents the limits' answers ------------------------------------------------------


def test_the_schema_documents_the_error_answers(anon_client):
    paths = anon_client.get("/api/schema/", {"format": "json"}).json()["paths"]
    create = paths[LIST_URL]["post"]["responses"]
    assert {"400", "401", "403", "413", "415", "429"} <= set(create)
    assert create["429"]["headers"]["Retry-After"]["schema"] == {"type": "integer"}
    assert create["413"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorDetail"}
    seed = paths["/messages/"]["post"]["responses"]
    assert seed["413"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/SeedFail"}
    assert {"400", "404"} <= set(paths[LIST_URL]["get"]["responses"])


def test_an_unknown_api_address_is_a_json_404(root):
    response = token_client(root).get("/api/messages/1.5/attempts/")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


# --- admin login lockout (django-axes) ---------------------------------------------------------------

ADMIN_LOGIN = "/admin/login/?next=/admin/"


@pytest.fixture
def axes_on(settings):
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 5


def admin_login(client: Client, username: str, password: str):
    return client.post(ADMIN_LOGIN, {"username": username, "password": password})


def assert_logged_in(response, client: Client):
    assert response.status_code == 302, response.content[:300]
    assert response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def assert_locked_out(response):
    assert response.status_code == 429, response.status_code
    assert b"Account locked: too many failed login attempts. Try again in 15 minutes" in response.content


def test_five_failed_admin_logins_lock_out_even_the_right_password(axes_on, root):
    client = Client()
    for _ in range(4):
        response = admin_login(client, "root", "wrong")
        assert response.status_code == 200  # the form again, with its error
        assert b"Please enter the correct username and password" in response.content
    assert_locked_out(admin_login(client, "root", "wrong"))  # the fifth

    assert_locked_out(admin_login(client, "root", PASSWORD))
    assert client.get("/admin/").status_code == 302  # still sent to the login page


def test_the_lockout_is_per_username_and_address(axes_on, root):
    attacker = Client(REMOTE_ADDR="203.0.113.66")
    for _ in range(5):
        admin_login(attacker, "root", "wrong")
    assert_locked_out(admin_login(attacker, "root", PASSWORD))

    # The operator, from elsewhere, is not locked out by someone else's guesses.
    operator = Client(REMOTE_ADDR="198.51.100.10")
    assert_logged_in(admin_login(operator, "root", PASSWORD), operator)


def test_an_operator_unlocks_a_user_with_axes_reset_username(axes_on, root):
    client = Client()
    for _ in range(5):
        admin_login(client, "root", "wrong")
    assert_locked_out(admin_login(client, "root", PASSWORD))

    call_command("axes_reset_username", "root", verbosity=0)

    assert_logged_in(admin_login(client, "root", PASSWORD), client)


def test_the_lockout_ends_after_the_cool_off(axes_on, root):
    client = Client()
    for _ in range(5):
        admin_login(client, "root", "wrong")
    assert_locked_out(admin_login(client, "root", PASSWORD))

    AccessAttempt.objects.update(attempt_time=timezone.now() - dt.timedelta(minutes=16))

    assert_logged_in(admin_login(client, "root", PASSWORD), client)


def test_a_successful_login_resets_the_count(axes_on, root):
    client = Client()
    for _ in range(4):
        admin_login(client, "root", "wrong")
    assert_logged_in(admin_login(client, "root", PASSWORD), client)
    client.logout()

    for _ in range(4):
        assert admin_login(client, "root", "wrong").status_code == 200
    assert_logged_in(admin_login(client, "root", PASSWORD), client)


def test_the_api_keeps_working_with_axes_on(axes_on, root):
    # Token and session authentication never call authenticate(), so a user locked
    # out of the admin form still uses a valid token; the lockout is about guessing passwords.
    client = Client()
    for _ in range(5):
        admin_login(client, "root", "wrong")
    assert token_client(root).get(LIST_URL).status_code == 200

    session = APIClient()
    session.force_login(make_user(username="viewer", superuser=True))
    assert session.get(LIST_URL).status_code == 200

    # The browsable API's login form goes through authenticate() with the request, as the admin's does.
    browsable = Client()
    response = browsable.post("/api-auth/login/", {"username": "viewer", "password": PASSWORD, "next": LIST_URL})
    assert response.status_code == 302, response.content[:300]
    assert browsable.get(LIST_URL).status_code == 200
