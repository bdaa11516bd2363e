"""The fake provider's routes and its event loop: waiting never holds up other requests."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from devtools.fakeprovider.faults import Faults
from devtools.fakeprovider.server import _answer_response
from tests.processes import fake_provider_in_thread, http_json

MESSAGE = {"to": "+905551112233", "content": "hi"}


@pytest.fixture
def fake():
    with fake_provider_in_thread() as provider:
        yield provider


def post_in_threads(url: str, count: int, timeout: float = 10) -> list[int]:
    statuses: list[int] = []
    lock = threading.Lock()

    def post() -> None:
        status = requests.post(url, json=MESSAGE, timeout=timeout).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=post) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 5)
    return statuses


def test_latency_is_waited_without_blocking_other_requests():
    with fake_provider_in_thread(faults=Faults(latency_ms=500)) as fake:
        started = time.monotonic()
        statuses = post_in_threads(fake.url, 10)
        elapsed = time.monotonic() - started
    assert statuses == [202] * 10
    # One after the other they would take 5 s.
    assert 0.5 <= elapsed < 2.5


def test_a_scripted_timeout_holds_only_its_own_request(fake):
    fake.state.faults.update({"script": ["timeout"], "timeout_ms": 3000})
    held: list[float] = []

    def wait_for_the_timeout() -> None:
        started = time.monotonic()
        with pytest.raises(requests.Timeout):
            requests.post(fake.url, json=MESSAGE, timeout=1)
        held.append(time.monotonic() - started)

    thread = threading.Thread(target=wait_for_the_timeout)
    thread.start()
    time.sleep(0.1)
    started = time.monotonic()
    assert requests.post(fake.url, json=MESSAGE, timeout=5).status_code == 202
    assert time.monotonic() - started < 0.5
    thread.join(5)
    assert held and held[0] >= 1


def test_stopping_does_not_wait_for_a_held_answer():
    outcome: list[BaseException] = []

    def held() -> None:
        try:
            requests.post(fake.url, json=MESSAGE, timeout=30)
        except requests.RequestException as exc:
            outcome.append(exc)

    with fake_provider_in_thread(faults=Faults(script=["timeout"])) as fake:
        thread = threading.Thread(target=held, daemon=True)
        thread.start()
        time.sleep(0.2)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 5  # the held answer is 15 s away
    thread.join(5)
    assert isinstance(outcome[0], requests.ConnectionError)  # the connection closed, unanswered


@pytest.mark.parametrize("path", ["_fake/requests/", "_fake/stats/", "_fake/faults/"])
def test_json_endpoints_take_a_trailing_slash(fake, path):
    assert requests.get(fake.url + path, timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "_fake"), ("POST", "_fake/nope"), ("POST", "_fake/requests"), ("PUT", ""), ("GET", "nope")],
)
def test_paths_under_fake_are_never_taken_for_messages(fake, method, path):
    response = requests.request(method, fake.url + path, json=MESSAGE, timeout=5)
    assert response.status_code == 404
    assert response.json() == {"message": "Not found"}
    assert fake.requests() == []


def test_any_other_path_takes_messages(fake):
    assert requests.post(fake.url + "v1/messages", json=MESSAGE, timeout=5).status_code == 202
    assert requests.post(fake.url + "_fakeish", json=MESSAGE, timeout=5).status_code == 202
    assert len(fake.requests()) == 2


def test_a_body_over_a_megabyte_is_refused(fake):
    response = requests.post(fake.url, data=b"x" * 2_000_000, timeout=5)
    assert response.status_code == 413


def test_stats_count_what_it_answered(fake):
    fake.state.faults.update({"script": [503, 202]})
    for _ in range(3):
        requests.post(fake.url, json=MESSAGE, headers={"Idempotency-Key": "same"}, timeout=5)
    stats = http_json("GET", fake.url + "_fake/stats")
    assert stats == {
        "requests": 3,
        "accepted": 1,
        "duplicates_dropped": 1,
        "by_status": {"503": 1, "202": 2},
        "receipts_sent": 0,
        "receipts_failed": 0,
    }
    assert requests.delete(fake.url + "_fake/requests", timeout=5).status_code == 200
    assert http_json("GET", fake.url + "_fake/stats")["accepted"] == 0


def test_answers_are_written_as_json_dumps_writes_them(fake):
    body = {"message": 'a "quoted" ünïcode\n\\ text', "messageId": "0373fccf-8705-4460-8acf-0d19fb7b0571"}
    assert _answer_response(202, body, None).body == json.dumps(body).encode()
    answered = requests.post(fake.url, json=MESSAGE, timeout=5)
    assert answered.content == json.dumps(answered.json()).encode()
    assert answered.headers["Content-Type"] == "application/json"
