"""Deeply nested JSON bodies: a clear 400 (the seed route's 422 envelope) at any
depth, never the 500 of a RecursionError in the decoder, and nothing written."""

from __future__ import annotations

import pytest

from dispatcher.models import DispatcherState
from messages_app.models import Message
from restapi.parsers import JSON_MAX_DEPTH, JSON_MAX_INTEGER_DIGITS, json_nesting_exceeds
from tests.factories import make_user

pytestmark = pytest.mark.django_db

DEPTHS = [100, 1_000, 10_000, 100_000]
JSON_ENDPOINTS = [
    ("post", "/api/messages/"),
    ("post", "/api/messages/bulk/"),
    ("patch", "/api/dispatcher/"),
]


def nested(depth: int, *, opener: str = "[") -> bytes:
    closer = {"[": "]", "{": "}"}[opener]
    if opener == "{":
        return ('{"a":' * depth + "1" + closer * depth).encode()
    return (opener * depth + closer * depth).encode()


@pytest.fixture
def client(client_for):
    return client_for(make_user(username="root", superuser=True))


def send(client, method: str, path: str, body: bytes):
    return getattr(client, method)(path, body, content_type="application/json")


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize(("method", "path"), JSON_ENDPOINTS, ids=lambda v: v)
@pytest.mark.parametrize("opener", ["[", "{"])
def test_deep_nesting_is_a_400_on_every_api_json_endpoint(client, method, path, depth, opener):
    state_before = DispatcherState.objects.values().first()

    response = send(client, method, path, nested(depth, opener=opener))

    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/json"
    assert "nested deeper" in response.json()["detail"]
    assert not Message.objects.exists()
    assert DispatcherState.objects.values().first() == state_before


@pytest.mark.parametrize("depth", DEPTHS)
def test_deep_nesting_is_the_seed_routes_422_envelope(client, depth):
    response = send(client, "post", "/messages", nested(depth))

    assert response.status_code == 422, response.content[:300]
    body = response.json()
    assert body["status"] == 422
    assert body["fail"]["msg"] == "invalid request body"
    assert "nested deeper" in body["fail"]["reason"]
    assert not Message.objects.exists()


def test_nesting_up_to_the_limit_is_parsed_and_judged_by_the_serializer(client):
    response = send(client, "post", "/api/messages/", nested(JSON_MAX_DEPTH))

    assert response.status_code == 400
    assert "non_field_errors" in response.json()  # a list, not an object: the serializer's answer


def test_the_token_authenticated_bodies_we_take_are_well_below_the_limit(client):
    body = b'{"messages": [{"recipient_phone_number": "+905551112233", "content": "[[[{{{ not nesting"}]}'
    assert send(client, "post", "/api/messages/bulk/", body).status_code == 201


@pytest.mark.parametrize(
    ("text", "exceeds"),
    [
        ("[" * 3 + "]" * 3, False),
        ("[" * 4 + "]" * 4, True),
        ('["[[[[[[", {"a": "{{{{"}]', False),  # brackets in strings do not count
        ('["\\"[[[[[[", 1]', False),  # nor after an escaped quote
        ("[[[[", True),  # unterminated: depth is still judged
        ("[1][2][3][4]", False),  # side by side is not nested
    ],
)
def test_json_nesting_exceeds(text, exceeds):
    assert json_nesting_exceeds(text, limit=3) is exceeds


# --- integers too long to read -----------------------------------------------------------------

# One digit over what Python's int() reads by default (sys.get_int_max_str_digits(): 4300).
LONG_INTEGER = "9" * 5001


@pytest.mark.parametrize(("method", "path"), JSON_ENDPOINTS, ids=lambda v: v)
@pytest.mark.parametrize("sign", ["", "-"])
def test_an_integer_too_long_to_read_is_a_plain_400_on_every_api_json_endpoint(client, method, path, sign):
    state_before = DispatcherState.objects.values().first()
    body = f'{{"batch_size": {sign}{LONG_INTEGER}, "messages": [], "content": "hi"}}'.encode()

    response = send(client, method, path, body)

    assert response.status_code == 400, response.content[:300]
    detail = response.json()["detail"]
    # Python's hint about its own settings means nothing to a client.
    assert "set_int_max_str_digits" not in detail and "sys." not in detail
    assert detail == (
        f"JSON parse error - a number of 5001 digits; numbers of at most {JSON_MAX_INTEGER_DIGITS} digits are read."
    )
    assert not Message.objects.exists()
    assert DispatcherState.objects.values().first() == state_before


def test_an_integer_too_long_to_read_is_the_seed_routes_422_envelope(client):
    response = send(client, "post", "/messages", f'{{"content": {LONG_INTEGER}}}'.encode())

    assert response.status_code == 422, response.content[:300]
    assert "set_int_max_str_digits" not in response.json()["fail"]["reason"]
    assert "5001 digits" in response.json()["fail"]["reason"]


def test_integers_up_to_the_limit_are_read_and_judged_by_the_serializer(client):
    response = send(client, "patch", "/api/dispatcher/", f'{{"batch_size": {"9" * JSON_MAX_INTEGER_DIGITS}}}'.encode())

    assert response.status_code == 400
    assert "batch_size" in response.json()  # the serializer's answer: a number, out of range
