"""The dashboard and /metrics show opt-outs and opt-ins per day, the opted-out numbers,
marketing messages held for quiet hours and replies received."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from consent.inbound import InboundIn, inbound_receive
from consent.models import Consent, ConsentChange
from consent.services import consent_set
from messages_app.models import Message
from tests.factories import make_user

pytestmark = pytest.mark.django_db

DASHBOARD = "/admin/dispatcher/dispatcherstate/dashboard/"


@pytest.fixture
def staff():
    client = Client()
    client.force_login(make_user(username="ops", superuser=True))
    return client


def activity():
    inbound_receive(reply=InboundIn(inbound_id="r1", provider="t", from_number="+12125550123", text="STOP"))
    inbound_receive(reply=InboundIn(inbound_id="r2", provider="t", from_number="+12125550124", text="see you"))
    consent_set(phone_number="+12125550125", status=Consent.Status.OPTED_IN, method="api", via="api")
    # An opt-out two days ago.
    consent_set(phone_number="+12125550126", status=Consent.Status.OPTED_OUT, method="api", via="api")
    ConsentChange.objects.filter(phone_number="+12125550126").update(changed_at=timezone.now() - timedelta(days=2))
    Message.objects.create(
        recipient_phone_number="+12125550127",
        content="Sale",
        category="marketing",
        next_attempt_at=timezone.now() + timedelta(hours=5),
        status_reason="Quiet hours 08:00-21:00 in America/New_York: held until ...",
    )


def test_the_dashboard_shows_consent_per_day_held_messages_and_replies(staff):
    activity()
    html = staff.get(DASHBOARD).content.decode()

    def value(element_id: str) -> str:
        return re.search(rf'id="{element_id}">([^<]*)<', html).group(1)

    assert (value("consent-opted-out"), value("consent-held"), value("consent-replies"), value("consent-keywords")) == (
        "2",
        "1",
        "2",
        "1",
    )
    today, two_days_ago = timezone.now().date(), timezone.now().date() - timedelta(days=2)
    row = re.search(
        rf'id="consent-day-{today:%Y-%m-%d}"><td>[^<]*</td><td class="opted-out">(\d+)</td><td class="opted-in">(\d+)',
        html,
    )
    assert row.groups() == ("1", "1")
    row = re.search(rf'id="consent-day-{two_days_ago:%Y-%m-%d}"><td>[^<]*</td><td class="opted-out">(\d+)', html)
    assert row.group(1) == "1"


def test_metrics_show_the_same(staff):
    activity()
    Message.objects.create(recipient_phone_number="+12125550128", content="x", status="suppressed")
    text = staff.get("/metrics").content.decode()
    assert "messaging_consent_opted_out_numbers 2.0" in text
    assert 'messaging_consent_changes_today{status="opted_out"} 1.0' in text
    assert 'messaging_consent_changes_today{status="opted_in"} 1.0' in text
    assert "messaging_quiet_hours_held_messages 1.0" in text
    assert 'messaging_queue_messages{status="suppressed"} 1.0' in text
