"""The fake provider sends the service a signed reply "from a phone" (its API and its page)."""

from __future__ import annotations

import base64

import pytest
import requests

from consent.models import Consent, InboundMessage
from tests.processes import fake_provider_in_thread

SECRET = "whsec_" + base64.b64encode(b"inbound signing key, tests only").decode()
NUMBER = "+12125550123"


@pytest.fixture
def service(live_server, settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "INBOUND_SECRET": SECRET}
    return live_server


def test_a_reply_asked_through_the_api_reaches_the_service_signed(service, transactional_db):
    with fake_provider_in_thread(inbound_url=f"{service.url}/api/inbound/", inbound_secret=SECRET) as fake:
        answer = requests.post(f"{fake.url}_fake/reply", json={"from": NUMBER, "text": "STOP"}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["service_status"] == 200
    inbound = InboundMessage.objects.get()
    assert (inbound.from_number, inbound.text, inbound.provider, inbound.keyword) == (NUMBER, "STOP", "fake", "opt_out")
    assert Consent.objects.get().status == Consent.Status.OPTED_OUT


def test_a_reply_signed_with_another_secret_is_refused_by_the_service(service, transactional_db):
    other = "whsec_" + base64.b64encode(b"not the service's inbound secret").decode()
    with fake_provider_in_thread(inbound_url=f"{service.url}/api/inbound/", inbound_secret=other) as fake:
        answer = requests.post(f"{fake.url}_fake/reply", json={"from": NUMBER, "text": "STOP"}, timeout=10)
    assert answer.json()["service_status"] == 401
    assert not InboundMessage.objects.exists()


def test_the_page_sends_a_reply_from_its_form_and_lists_it(service, transactional_db):
    with fake_provider_in_thread(inbound_url=f"{service.url}/api/inbound/", inbound_secret=SECRET) as fake:
        origin = fake.url.rstrip("/")
        page = requests.get(fake.url, timeout=10).text
        assert 'id="reply-form"' in page
        sent = requests.post(
            f"{fake.url}_fake/reply",
            data={"from": NUMBER, "text": "HELP"},
            headers={"Origin": origin},
            allow_redirects=False,
            timeout=10,
        )
        assert sent.status_code == 303
        page = requests.get(fake.url, timeout=10).text
        # Another site's page cannot make it send one.
        foreign = requests.post(
            f"{fake.url}_fake/reply",
            data={"from": NUMBER, "text": "STOP"},
            headers={"Origin": "http://evil.test"},
            timeout=10,
        )
    assert 'class="sent-reply"' in page and "HELP" in page
    assert foreign.status_code == 403
    assert list(InboundMessage.objects.values_list("keyword", flat=True)) == ["help"]


def test_without_a_secret_a_reply_is_refused_with_the_reason(transactional_db):
    with fake_provider_in_thread() as fake:
        answer = requests.post(f"{fake.url}_fake/reply", json={"from": NUMBER, "text": "STOP"}, timeout=10)
        page = requests.get(fake.url, timeout=10).text
    assert answer.status_code == 400 and "--inbound-secret" in answer.json()["message"]
    assert 'id="replies-off"' in page
