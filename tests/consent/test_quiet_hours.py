"""Quiet hours with a controlled clock (time-machine): marketing messages wait for the
recipient's local window, transactional ones never do."""

from __future__ import annotations

import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import time_machine

from consent.quiet_hours import quiet_hours_opening, quiet_hours_rules, recipient_zones
from dispatcher.engine.pipeline import send_chunk
from dispatcher.engine.providers import locmem
from messages_app.models import Message
from messages_app.services import message_create
from messages_app.transitions import messages_claim

NEW_YORK = ZoneInfo("America/New_York")
NY_NUMBER = "+12125550123"  # Manhattan: America/New_York
LA_NUMBER = "+13105550123"  # Los Angeles
SEVERAL_ZONES = "+15005550006"  # a non-geographic +1 number: every zone of the NANP, Guam to Adak
RULES = quiet_hours_rules(window="08:00-21:00", overrides="", unknown_zone="UTC")


def ny(hour: int, minute: int = 0, day: int = 7) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=NEW_YORK)


# --- the rule, pure ----------------------------------------------------------------------------


def test_a_new_york_number_at_two_in_the_morning_waits_until_eight_local():
    opening, reason = quiet_hours_opening(phone_number=NY_NUMBER, at=ny(2), rules=RULES)
    assert opening == ny(8)
    assert "America/New_York" in reason and "08:00-21:00" in reason


@pytest.mark.parametrize(("hour", "minute"), [(8, 0), (12, 30), (20, 59)])
def test_inside_the_window_it_goes_at_once(hour, minute):
    assert quiet_hours_opening(phone_number=NY_NUMBER, at=ny(hour, minute), rules=RULES) is None


def test_after_nine_in_the_evening_it_waits_for_the_next_morning():
    assert quiet_hours_opening(phone_number=NY_NUMBER, at=ny(21), rules=RULES)[0] == ny(8, day=8)


def test_a_los_angeles_number_is_judged_in_its_own_zone():
    # 09:00 in New York is 06:00 in Los Angeles: held until 08:00 there (11:00 in New York).
    assert quiet_hours_opening(phone_number=LA_NUMBER, at=ny(9), rules=RULES)[0] == ny(11)


def test_a_number_with_several_zones_goes_only_when_the_window_is_open_in_all():
    zones = [ZoneInfo("America/New_York"), ZoneInfo("America/Chicago")]
    # A prefix spanning New York and Chicago (synthetic: judged through the rule's own zones).
    from consent import quiet_hours

    at = ny(8, 30)  # 07:30 in Chicago: not yet open there
    assert quiet_hours._first_open(at, zones, RULES.window) == ny(9)  # 08:00 in Chicago
    at = ny(21, 30)  # New York closed (21:30), Chicago open (20:30): held until New York's next opening
    assert quiet_hours._first_open(at, zones, RULES.window) == ny(9, day=8)


def test_a_number_of_many_zones_goes_when_the_window_is_open_in_every_one():
    # A non-geographic +1 number: every zone of the NANP, Guam (UTC+10) to Pago Pago (UTC-11).
    assert {"Pacific/Guam", "Pacific/Pago_Pago", "America/New_York"} <= set(recipient_zones(SEVERAL_ZONES))
    utc = ZoneInfo("UTC")
    opening, reason = quiet_hours_opening(
        phone_number=SEVERAL_ZONES, at=datetime(2026, 12, 7, 3, tzinfo=utc), rules=RULES
    )
    # 08:00 in Guam is 22:00 UTC: 11:00 in Pago Pago, 17:00 in New York, every one of them open.
    assert opening.astimezone(utc) == datetime(2026, 12, 7, 22, tzinfo=utc)
    assert "time zones" in reason


def test_zones_that_share_no_open_hour_are_judged_as_unknown():
    from consent import quiet_hours

    window = quiet_hours.window_parse("09:00-12:00", setting="test")
    apart = [ZoneInfo("Etc/GMT-6"), ZoneInfo("Etc/GMT+6")]  # twelve hours apart, a three-hour window
    assert quiet_hours._first_open(datetime(2026, 12, 7, 0, tzinfo=ZoneInfo("UTC")), apart, window) is None


def test_an_unknown_zone_follows_the_setting():
    international_freephone = "+80012345678"
    assert recipient_zones(international_freephone) == ()
    utc = ZoneInfo("UTC")
    at = datetime(2026, 12, 7, 3, tzinfo=utc)
    opening, reason = quiet_hours_opening(phone_number=international_freephone, at=at, rules=RULES)
    assert opening == datetime(2026, 12, 7, 8, tzinfo=utc) and "UTC" in reason
    never = quiet_hours_rules(window="08:00-21:00", overrides="", unknown_zone="none")
    assert quiet_hours_opening(phone_number=international_freephone, at=at, rules=never) is None


def test_a_prefix_override_wins_the_longest_prefix_first():
    rules = quiet_hours_rules(window="08:00-21:00", overrides="+1=09:00-20:00,+1212=10:00-18:00", unknown_zone="UTC")
    assert quiet_hours_opening(phone_number=NY_NUMBER, at=ny(9), rules=rules)[0] == ny(10)
    assert quiet_hours_opening(phone_number=NY_NUMBER, at=ny(18), rules=rules)[0] == ny(10, day=8)
    assert quiet_hours_opening(phone_number="+12025550123", at=ny(8, 30), rules=rules)[0] == ny(9)  # Washington: +1


@pytest.mark.parametrize(
    ("window", "overrides", "zone"),
    [
        ("8-21", "", "UTC"),
        ("08:00-08:00", "", "UTC"),
        ("08:00-21:00", "1212=08:00-20:00", "UTC"),
        ("08:00-21:00", "", "Mars/Olympus"),
    ],
)
def test_a_setting_that_cannot_be_read_is_refused_naming_it(window, overrides, zone):
    with pytest.raises(ValueError, match="QUIET_HOURS"):
        quiet_hours_rules(window=window, overrides=overrides, unknown_zone=zone)


# --- queued and sent, with the clock at 02:00 in New York ------------------------------------


@pytest.mark.django_db
def test_a_marketing_message_created_at_two_is_held_until_eight_and_a_transactional_one_is_not():
    with time_machine.travel(ny(2), tick=False):
        marketing = message_create(recipient_phone_number=NY_NUMBER, content="Sale!", category="marketing")
        code = message_create(recipient_phone_number=NY_NUMBER, content="Your code is 1234")
    assert marketing.next_attempt_at == ny(8) and marketing.status == Message.Status.UNSENT
    assert "held until 2026-12-07 08:00 America/New_York" in marketing.status_reason
    assert code.category == "transactional" and code.next_attempt_at == ny(2) and code.status_reason == ""


@pytest.mark.django_db
def test_the_api_takes_the_category_and_shows_why_it_is_held(api_client, settings):
    with time_machine.travel(ny(2), tick=False):
        answer = api_client.post(
            "/api/messages/",
            {"recipient_phone_number": NY_NUMBER, "content": "Sale!", "category": "marketing"},
            format="json",
        )
        settings.MESSAGE_DEFAULT_CATEGORY = "marketing"
        by_default = api_client.post(
            "/api/messages/", {"recipient_phone_number": NY_NUMBER, "content": "x"}, format="json"
        )
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body["category"] == "marketing" and "Quiet hours" in body["status_reason"]
    assert datetime.fromisoformat(body["next_attempt_at"]) == ny(8)
    assert by_default.json()["category"] == "marketing"


@pytest.mark.django_db
def test_a_marketing_message_claimed_in_quiet_hours_goes_back_unsent_until_the_window_opens():
    # Scheduled by its creator for 02:00 New York time: due then, but quiet hours hold it.
    message = Message.objects.create(
        recipient_phone_number=NY_NUMBER, content="Sale!", category="marketing", next_attempt_at=ny(1)
    )
    transactional = Message.objects.create(recipient_phone_number=NY_NUMBER, content="code", next_attempt_at=ny(1))
    token = uuid.uuid4()
    messages_claim(message_ids=[message.pk, transactional.pk], claim_token=token, lease_seconds=60)
    with time_machine.travel(ny(2), tick=False):
        report = send_chunk(
            message_ids=[message.pk, transactional.pk], claim_token=token, provider=locmem.LocmemProvider()
        )
    assert report.held == 1
    assert [entry.content for entry in locmem.outbox] == ["code"]
    message.refresh_from_db()
    assert (message.status, message.next_attempt_at, message.attempts) == (Message.Status.UNSENT, ny(8), 0)
    assert "Quiet hours" in message.status_reason
