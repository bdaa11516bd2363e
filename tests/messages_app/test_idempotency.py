"""Safe client retries: an Idempotency-Key header on POST /api/messages/, /api/messages/bulk/
and the seed POST /messages (restapi.idempotency, restapi.models.IdempotencyKey)."""

from __future__ import annotations

import datetime as dt
import threading
from urllib.parse import urlencode

import pytest
import requests
from django.db import connection
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart
from django.utils import timezone
from django_q.models import Schedule

from dispatcher.schedule import PRUNE_KEYS_SCHEDULE_NAME, PRUNE_KEYS_TASK, dispatcher_schedule_ensure
from messages_app.models import Message
from restapi.idempotency import MISMATCH, idempotency_keys_prune
from restapi.models import IdempotencyKey
from tests.factories import MESSAGE_CLIENT_PERMS, make_user, token_for
from tests.processes import wait_for

pytestmark = pytest.mark.django_db

CREATE_URL = "/api/messages/"
BULK_URL = "/api/messages/bulk/"
SEED_URL = "/messages"
REPLAYED = "Idempotent-Replayed"

ONE = {"recipient_phone_number": "+905551112233", "content": "Your code is 1234"}
OTHER = {"recipient_phone_number": "+905551112233", "content": "Your code is 9999"}
BULK = {"messages": [ONE, OTHER]}


def post(client, url: str, body: dict, key: str | None = None):
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post(url, body, format="json", headers=headers)


# --- the same key, the same request: the first answer again, nothing queued ----------------------


@pytest.mark.parametrize(
    ("url", "body", "code"),
    [(CREATE_URL, ONE, 201), (BULK_URL, BULK, 201), (SEED_URL, ONE, 200)],
    ids=["create", "bulk", "seed"],
)
def test_a_retry_with_the_same_key_answers_the_first_response_and_queues_nothing(api_client, url, body, code):
    first = post(api_client, url, body, key="key-1")
    queued = Message.objects.count()

    again = post(api_client, url, body, key="key-1")
    third = post(api_client, url, body, key="key-1")

    assert first.status_code == code, first.content
    assert REPLAYED not in first
    for retry in (again, third):
        assert retry.status_code == code
        assert retry.json() == first.json()
        assert retry[REPLAYED] == "true"
    assert Message.objects.count() == queued == len(body.get("messages", [body]))
    assert IdempotencyKey.objects.count() == 1


def test_the_replayed_answer_is_the_first_one_even_after_the_message_changed(api_client):
    first = post(api_client, CREATE_URL, ONE, key="key-1").json()
    Message.objects.filter(pk=first["id"]).update(status=Message.Status.SENT, sent_at=timezone.now())

    again = post(api_client, CREATE_URL, ONE, key="key-1")

    assert again.json() == first
    assert again.json()["status"] == "unsent"


def test_without_a_key_every_request_queues_a_message(api_client):
    post(api_client, CREATE_URL, ONE)
    post(api_client, CREATE_URL, ONE)

    assert Message.objects.count() == 2
    assert not IdempotencyKey.objects.exists()


def test_a_new_key_queues_a_new_message(api_client):
    a = post(api_client, CREATE_URL, ONE, key="key-1")
    b = post(api_client, CREATE_URL, ONE, key="key-2")

    assert a.json()["id"] != b.json()["id"]
    assert Message.objects.count() == 2


# --- the same key, another request: 422 -------------------------------------------------------------


@pytest.mark.parametrize(("url", "body", "other"), [(CREATE_URL, ONE, OTHER), (BULK_URL, BULK, {"messages": [ONE]})])
def test_the_same_key_with_another_body_is_422_and_queues_nothing(api_client, url, body, other):
    assert post(api_client, url, body, key="key-1").status_code == 201
    queued = Message.objects.count()

    response = post(api_client, url, other, key="key-1")

    assert response.status_code == 422
    assert response.json() == {"detail": MISMATCH}
    assert Message.objects.count() == queued


def test_the_same_key_on_another_endpoint_is_422(api_client):
    assert post(api_client, CREATE_URL, ONE, key="key-1").status_code == 201

    response = post(api_client, BULK_URL, {"messages": [ONE]}, key="key-1")

    assert response.status_code == 422
    assert Message.objects.count() == 1


def test_the_seed_route_answers_a_reused_key_in_its_envelope(api_client):
    assert post(api_client, SEED_URL, ONE, key="key-1").status_code == 200

    response = post(api_client, SEED_URL, OTHER, key="key-1")

    assert response.status_code == 422
    assert response.json() == {"status": 422, "fail": {"msg": "idempotency key reused", "reason": MISMATCH}}
    assert Message.objects.count() == 1


URLENCODED = ("application/x-www-form-urlencoded", urlencode(ONE))
MULTIPART = (MULTIPART_CONTENT, encode_multipart(BOUNDARY, ONE))


@pytest.mark.parametrize(
    ("url", "content_type", "encoded"),
    [
        (CREATE_URL, *URLENCODED),
        (CREATE_URL, *MULTIPART),
        (SEED_URL, *URLENCODED),
        pytest.param(SEED_URL, *MULTIPART),
    ],
    ids=["create-urlencoded", "create-multipart", "seed-urlencoded", "seed-multipart"],
)
def test_a_form_body_with_a_key_is_replayed_like_json(api_client, url, content_type, encoded):
    def send():
        return api_client.post(url, encoded, content_type=content_type, headers={"Idempotency-Key": "form-key"})

    first, again = send(), send()

    assert first.status_code in (200, 201), first.content
    assert (again.status_code, again.json(), again[REPLAYED]) == (first.status_code, first.json(), "true")
    assert Message.objects.count() == 1


# --- keys are per user ----------------------------------------------------------------------------


def test_two_users_may_use_the_same_key_independently(client_for, user):
    other_user = make_user(username="bob", perms=MESSAGE_CLIENT_PERMS)

    mine = post(client_for(user), CREATE_URL, ONE, key="shared-key")
    theirs = post(client_for(other_user), CREATE_URL, OTHER, key="shared-key")

    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert REPLAYED not in theirs
    assert mine.json()["id"] != theirs.json()["id"]
    assert Message.objects.count() == 2
    assert IdempotencyKey.objects.filter(key="shared-key").count() == 2


# --- a refused request keeps no key ----------------------------------------------------------------


@pytest.mark.parametrize("url", [CREATE_URL, SEED_URL])
def test_a_refused_first_request_keeps_no_key_so_the_corrected_retry_is_queued(api_client, url):
    invalid = {"recipient_phone_number": "not a phone", "content": "hi"}

    refused = post(api_client, url, invalid, key="key-1")
    corrected = post(api_client, url, ONE, key="key-1")

    assert refused.status_code == 400
    assert corrected.status_code in (200, 201), corrected.content
    assert REPLAYED not in corrected
    assert Message.objects.count() == 1
    assert IdempotencyKey.objects.count() == 1


def test_a_request_refused_for_lack_of_permission_keeps_no_key(client_for):
    reader = make_user(username="reader", perms=["messages_app.view_message"])

    response = post(client_for(reader), CREATE_URL, ONE, key="key-1")

    assert response.status_code == 403
    assert not IdempotencyKey.objects.exists()


# --- the header itself -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["", "has space", "x" * 256, "tab\tinside", "ключ"],
    ids=["empty", "space", "too-long", "control-character", "not-ascii"],
)
def test_an_invalid_key_is_400_and_queues_nothing(api_client, key):
    response = post(api_client, CREATE_URL, ONE, key=key)

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()
    assert not Message.objects.exists()
    assert not IdempotencyKey.objects.exists()


def test_an_invalid_key_on_the_seed_route_is_400_in_its_envelope(api_client):
    response = post(api_client, SEED_URL, ONE, key="has space")

    assert response.status_code == 400
    assert response.json()["fail"]["msg"] == "validation error"
    assert not Message.objects.exists()


def test_the_longest_key_and_any_visible_ascii_are_accepted(api_client):
    for key in ("x" * 255, "550e8400-e29b-41d4-a716-446655440000", "!#$%&'*+-.^_`|~:/?=@[]{}"):
        assert post(api_client, CREATE_URL, ONE, key=key).status_code == 201
    assert Message.objects.count() == 3


# --- kept IDEMPOTENCY_KEY_TTL_HOURS, then pruned ---------------------------------------------------


def age_keys(hours: float) -> None:
    IdempotencyKey.objects.update(created_at=timezone.now() - dt.timedelta(hours=hours))


def test_prune_deletes_keys_older_than_the_ttl_only(api_client, settings):
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 24
    post(api_client, CREATE_URL, ONE, key="old")
    age_keys(25)
    post(api_client, CREATE_URL, OTHER, key="fresh")
    IdempotencyKey.objects.filter(key="fresh").update(created_at=timezone.now() - dt.timedelta(hours=23))

    assert idempotency_keys_prune() == 1

    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["fresh"]
    assert Message.objects.count() == 2  # pruning a key never touches its message


def test_prune_follows_the_configured_ttl(api_client, settings):
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 2
    post(api_client, CREATE_URL, ONE, key="k")
    age_keys(3)

    assert idempotency_keys_prune() == 1
    assert not IdempotencyKey.objects.exists()


def test_a_key_past_its_ttl_is_a_new_key_even_before_it_is_pruned(api_client, settings):
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 24
    first = post(api_client, CREATE_URL, ONE, key="key-1")
    age_keys(25)

    again = post(api_client, CREATE_URL, OTHER, key="key-1")

    assert again.status_code == 201
    assert REPLAYED not in again
    assert again.json()["id"] != first.json()["id"]
    assert Message.objects.count() == 2


def test_a_key_within_its_ttl_still_replays(api_client, settings):
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 24
    post(api_client, CREATE_URL, ONE, key="key-1")
    age_keys(23)

    assert post(api_client, CREATE_URL, ONE, key="key-1")[REPLAYED] == "true"
    assert Message.objects.count() == 1


def test_the_prune_is_scheduled_hourly():
    Schedule.objects.filter(name=PRUNE_KEYS_SCHEDULE_NAME).delete()

    dispatcher_schedule_ensure()

    schedule = Schedule.objects.get(name=PRUNE_KEYS_SCHEDULE_NAME)
    assert (schedule.func, schedule.schedule_type, schedule.minutes, schedule.repeats) == (
        PRUNE_KEYS_TASK,
        Schedule.MINUTES,
        60,
        -1,
    )


# --- concurrent duplicates: real threads against a real server ------------------------------------


CONCURRENT_REQUESTS = 8


def post_at_once(base_url: str, path: str, token: str, body: dict, key: str) -> list[requests.Response]:
    """CONCURRENT_REQUESTS threads POST the same request with the same key, released together."""
    start = threading.Barrier(CONCURRENT_REQUESTS)
    answers: list[requests.Response] = []
    errors: list[BaseException] = []

    def client() -> None:
        try:
            with requests.Session() as session:
                session.get(base_url + "/healthz", timeout=10)  # connected before the start
                start.wait(30)
                answers.append(
                    session.post(
                        base_url + path,
                        json=body,
                        # Closed after the answer, so the server's thread ends and closes its database connection.
                        headers={"Authorization": f"Token {token}", "Idempotency-Key": key, "Connection": "close"},
                        timeout=30,
                    )
                )
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(CONCURRENT_REQUESTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(answers) == CONCURRENT_REQUESTS
    return answers


def wait_for_server_connections_to_close() -> None:
    """live_server's request threads close their database connections just after answering;
    wait for that, so the test's teardown (flush, or dropping the test database) finds none."""

    def others() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return len(cursor.fetchall())

    wait_for(lambda: others() == 0, timeout=10, what="live_server's database connections to close")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("path", "body", "code", "queued"),
    [("/api/messages/", ONE, 201, 1), ("/api/messages/bulk/", BULK, 201, 2), ("/messages", ONE, 200, 1)],
    ids=["create", "bulk", "seed"],
)
def test_concurrent_requests_with_one_key_queue_exactly_once(live_server, path, body, code, queued):
    token = token_for(make_user(username="racer", perms=MESSAGE_CLIENT_PERMS))

    answers = post_at_once(live_server.url, path, token, body, key="one-key")

    assert [a.status_code for a in answers] == [code] * CONCURRENT_REQUESTS, [a.text for a in answers]
    # One request did the work; every other one answered what it answered.
    assert sum(REPLAYED not in a.headers for a in answers) == 1
    # The same answer (as JSON: the stored copy comes back from jsonb with its keys in jsonb's order).
    assert all(a.json() == answers[0].json() for a in answers)
    assert Message.objects.count() == queued
    assert IdempotencyKey.objects.count() == 1
    wait_for_server_connections_to_close()
