"""The fake provider keeps the auth key to itself, and a web page elsewhere cannot steer it."""

from __future__ import annotations

import io
import json
import logging

import pytest
import requests

from devtools.fakeprovider.requestlog import RequestLog
from tests.processes import fake_provider_in_thread, http_json

AUTH_KEY = "INS.the-real-key-do-not-show"
MESSAGE = {"to": "+905551112233", "content": "hi"}


@pytest.fixture
def fake():
    with fake_provider_in_thread() as provider:
        yield provider


def faults_of(fake) -> dict:
    return http_json("GET", fake.url + "_fake/faults")


# --- the auth key ----------------------------------------------------------------------


@pytest.mark.parametrize("required", [AUTH_KEY, None])
def test_the_auth_key_is_in_none_of_what_it_shows(required):
    log = io.StringIO()
    request_log = RequestLog(log)
    logging.getLogger("devtools.fakeprovider").addHandler(request_log)
    try:
        with fake_provider_in_thread(auth_key=required, request_log=request_log) as fake:
            good = requests.post(fake.url, json=MESSAGE, headers={"x-ins-auth-key": AUTH_KEY}, timeout=5)
            bad = requests.post(fake.url, json=MESSAGE, headers={"x-ins-auth-key": AUTH_KEY + "-wrong"}, timeout=5)
            listed = requests.get(fake.url + "_fake/requests", timeout=5).text
            page = requests.get(fake.url, timeout=5).text
            faults = requests.get(fake.url + "_fake/faults", timeout=5).text
            stats = requests.get(fake.url + "_fake/stats", timeout=5).text
    finally:
        logging.getLogger("devtools.fakeprovider").removeHandler(request_log)

    assert good.status_code == 202
    assert bad.status_code == (401 if required else 202)
    for shown in (listed, page, faults, stats, log.getvalue()):
        assert AUTH_KEY not in shown
    assert f"messageId={good.json()['messageId']}" in log.getvalue()
    first, second = json.loads(listed)
    assert first["headers"]["x-ins-auth-key"] == second["headers"]["x-ins-auth-key"] == "[redacted]"
    if required:
        assert (first["auth_ok"], second["auth_ok"]) == (True, False)
    else:
        assert (first["auth_ok"], second["auth_ok"]) == (None, None)  # nothing to match


def test_the_auth_key_header_is_redacted_in_any_case_of_its_name():
    with fake_provider_in_thread(auth_key=AUTH_KEY) as fake:
        requests.post(fake.url, json=MESSAGE, headers={"X-INS-Auth-Key": AUTH_KEY}, timeout=5)
        [received] = fake.requests()
    assert received.auth_ok is True
    assert AUTH_KEY not in str(dict(received.headers))


# --- control requests from a browser on another site ---------------------------------


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1"])
def test_faults_cannot_be_changed_from_another_origin(fake, origin):
    before = faults_of(fake)
    response = requests.post(fake.url + "_fake/faults", json={"error_rate": 1.0}, headers={"Origin": origin}, timeout=5)
    assert response.status_code == 403
    assert faults_of(fake) == before


@pytest.mark.parametrize("origin", ["http://evil.example", "null"])
def test_the_history_cannot_be_cleared_from_another_origin(fake, origin):
    requests.post(fake.url, json=MESSAGE, timeout=5)
    response = requests.delete(fake.url + "_fake/requests", headers={"Origin": origin}, timeout=5)
    assert response.status_code == 403
    assert len(fake.requests()) == 1


def test_its_own_page_and_tools_without_an_origin_may_control_it(fake):
    own = fake.url.rstrip("/")
    assert requests.post(fake.url + "_fake/faults", json={"latency_ms": 1}, headers={"Origin": own}, timeout=5).ok
    assert requests.post(fake.url + "_fake/faults", json={"latency_ms": 2}, timeout=5).ok  # curl, scripts, tests
    assert faults_of(fake)["latency_ms"] == 2
    requests.post(fake.url, json=MESSAGE, timeout=5)
    assert requests.delete(fake.url + "_fake/requests", headers={"Origin": own}, timeout=5).ok
    assert fake.requests() == []


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", '{"error_rate": 1.0}'),  # what a "simple" cross-site fetch may send
        ("application/x-www-form-urlencoded", '{"error_rate": 1.0}'),  # what a cross-site form sends
        ("multipart/form-data; boundary=x", '{"error_rate": 1.0}'),
        (None, '{"error_rate": 1.0}'),
    ],
)
def test_faults_must_be_sent_as_json(fake, content_type, body):
    before = faults_of(fake)
    headers = {"Content-Type": content_type} if content_type else {}
    # requests adds no Content-Type to a bytes body of its own accord.
    response = requests.post(fake.url + "_fake/faults", data=body.encode(), headers=headers, timeout=5)
    assert response.status_code == 415
    assert "application/json" in response.json()["message"]
    assert faults_of(fake) == before


def test_faults_sent_as_json_with_a_charset_are_accepted(fake):
    response = requests.post(
        fake.url + "_fake/faults",
        data=b'{"error_rate": 0.25}',
        headers={"Content-Type": "application/json; charset=utf-8"},
        timeout=5,
    )
    assert response.status_code == 200
    assert faults_of(fake)["error_rate"] == 0.25


def test_messages_and_reads_need_no_origin_check(fake):
    # The provider's own endpoint answers any client, as the real one does; reads change nothing.
    foreign = {"Origin": "http://evil.example"}
    assert requests.post(fake.url, json=MESSAGE, headers=foreign, timeout=5).status_code == 202
    assert requests.get(fake.url + "_fake/stats", headers=foreign, timeout=5).status_code == 200
    # ...but nothing invites the browser to let that page read the answer (no CORS headers).
    response = requests.get(fake.url + "_fake/requests", headers=foreign, timeout=5)
    assert "Access-Control-Allow-Origin" not in response.headers
