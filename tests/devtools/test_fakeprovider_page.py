"""The fake provider's page for people: what it received, newest first, reloading itself."""

from __future__ import annotations

import re

import pytest
import requests

from devtools.fakeprovider.page import PAGE_REQUESTS
from devtools.fakeprovider.state import ReceivedRequest
from tests.processes import fake_provider_in_thread, http_json


@pytest.fixture
def fake():
    with fake_provider_in_thread() as provider:
        yield provider


def send(fake, to: str, content: str, **headers: str) -> requests.Response:
    return requests.post(fake.url, json={"to": to, "content": content}, headers=headers, timeout=5)


def page(fake, path: str = "") -> str:
    response = requests.get(fake.url + path, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    return response.text


def rows(html: str) -> list[str]:
    return re.findall(r'<tr class="received-request[^"]*".*?</tr>', html, re.S)


def cell(row: str, name: str) -> str:
    match = re.search(rf'<td class="{name}">(.*?)</td>', row, re.S)
    assert match, f"no {name} cell in {row}"
    return match.group(1)


@pytest.mark.parametrize("path", ["", "_fake", "_fake/", "?anything=1"])
def test_the_page_is_served_at_the_root_and_at_fake(fake, path):
    html = page(fake, path)
    assert '<meta http-equiv="refresh" content="2">' in html
    assert 'id="no-requests"' in html
    assert 'id="stat-requests">0<' in html


def test_the_page_lists_received_messages_newest_first(fake):
    first = send(fake, "+905551110001", "first").json()["messageId"]
    send(fake, "+905551110002", "second")
    third = send(fake, "+905551110003", "third").json()["messageId"]

    html = page(fake)

    listed = rows(html)
    assert [cell(r, "content") for r in listed] == ["third", "second", "first"]
    assert [cell(r, "to") for r in listed] == ["+905551110003", "+905551110002", "+905551110001"]
    assert [cell(r, "status") for r in listed] == ["202", "202", "202"]
    assert cell(listed[0], "message-id") == third
    assert cell(listed[-1], "message-id") == first
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT[\d:.]+\+00:00">', cell(listed[0], "time"))
    assert 'id="stat-requests">3<' in html
    assert "no-requests" not in html


def test_the_page_escapes_everything_it_received(fake):
    send(fake, '"><img src=x onerror=alert(1)>', "<script>alert('hi')</script> & more")

    html = page(fake)

    [row] = rows(html)
    assert cell(row, "content") == "&lt;script&gt;alert(&#x27;hi&#x27;)&lt;/script&gt; &amp; more"
    assert cell(row, "to") == "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"
    assert "<script" not in html
    assert "<img" not in html


def test_the_page_flags_duplicates_and_shows_failures(fake):
    key = {"Idempotency-Key": "key-1"}
    accepted = send(fake, "+905551110001", "once", **key).json()["messageId"]
    assert send(fake, "+905551110001", "once", **key).json()["messageId"] == accepted
    requests.post(fake.url, data=b"not json", timeout=5)

    html = page(fake)

    bad, repeat, original = rows(html)
    assert cell(bad, "status") == "400"
    assert cell(bad, "to") == "&mdash;"
    assert cell(bad, "message-id") == "&mdash;"
    assert repeat.startswith('<tr class="received-request duplicate"')
    assert cell(repeat, "duplicate-flag") == "duplicate, dropped"
    assert cell(repeat, "message-id") == accepted
    assert cell(original, "duplicate-flag") == ""
    assert 'id="stat-duplicates">1<' in html


def test_the_page_shows_the_newest_requests_only(fake):
    # Sending hundreds over HTTP is slow; the older ones are recorded directly.
    for i in range(PAGE_REQUESTS):
        old = ReceivedRequest(received_at=i, to="+905551110001", content=f"old {i}", status=202, message_id=f"id-{i}")
        fake.state.record(old)
    for i in range(5):
        send(fake, "+905551110001", f"new {i}")

    html = page(fake)

    listed = rows(html)
    assert len(listed) == PAGE_REQUESTS
    assert [cell(r, "content") for r in listed[:6]] == [
        "new 4",
        "new 3",
        "new 2",
        "new 1",
        "new 0",
        f"old {PAGE_REQUESTS - 1}",
    ]
    assert cell(listed[-1], "content") == "old 5"
    assert f"the newest {PAGE_REQUESTS} of {PAGE_REQUESTS + 5}" in html


def test_the_json_endpoints_are_unchanged(fake):
    send(fake, "+905551110001", "one")
    assert [r["content"] for r in http_json("GET", fake.url + "_fake/requests")] == ["one"]
    assert http_json("GET", fake.url + "_fake/stats")["requests"] == 1
    assert requests.get(fake.url + "_fake/nope", timeout=5).status_code == 404
