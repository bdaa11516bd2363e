"""SMS segments (messages_app.segments): GSM-7 with its extension table, else UCS-2;
computed when a message is queued, stored, and shown in the API, the admin and the dashboard."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.utils import timezone

from messages_app.models import Message
from messages_app.segments import sms_encoding, sms_segments
from messages_app.services import message_create
from tests.factories import make_message, make_user

# GSM 03.38's extension table: each takes an escape septet and its own, two in all.
GSM7_EXTENSION = ["{", "}", "[", "]", "~", "|", "^", "€", "\\", "\x0c"]
EMOJI = "\N{GRINNING FACE}"  # U+1F600, outside the BMP: a surrogate pair in UCS-2
COMBINING_ACUTE = "\N{COMBINING ACUTE ACCENT}"  # U+0301: not in GSM-7

CASES = [
    # --- GSM-7: 160 septets in one, 153 per part of a longer one
    ("one character", "a", 1, "GSM-7"),
    ("gsm 160", "a" * 160, 1, "GSM-7"),
    ("gsm 161", "a" * 161, 2, "GSM-7"),
    ("gsm 306 = 2 x 153", "a" * 306, 2, "GSM-7"),
    ("gsm 307", "a" * 307, 3, "GSM-7"),
    ("gsm 459 = 3 x 153", "a" * 459, 3, "GSM-7"),
    ("gsm 460", "a" * 460, 4, "GSM-7"),
    ("the basic table's own accents and Greek", "@£$¥èéùìòÇØøÅåΔΦΓΛΩΠΨΣΘΞÆæßÉÄÖÑÜ§¿äöñüà¡¤", 1, "GSM-7"),
    ("line breaks are GSM-7", "a\r\nb\n" * 40, 2, "GSM-7"),  # 200 septets
    # --- the extension table: two septets each
    ("80 braces = 160 septets", "{" * 80, 1, "GSM-7"),
    ("80 braces and one more", "{" * 80 + "a", 2, "GSM-7"),
    ("euro signs across the boundary", "€" * 81, 2, "GSM-7"),
    # 152 + 2 would be 154 > 153: the euro sign starts part 2 whole (152 | 2 + 151 | 1), not split (153 | 153).
    ("an extension character is never split", "a" * 152 + "€" + "a" * 152, 3, "GSM-7"),
    ("an extension character that fits", "a" * 151 + "€" + "a" * 153, 2, "GSM-7"),
    # --- UCS-2: 70 code units in one, 67 per part
    ("one character outside GSM-7", "ç", 1, "UCS-2"),
    ("ucs2 70", "ş" + "a" * 69, 1, "UCS-2"),
    ("ucs2 71", "ş" + "a" * 70, 2, "UCS-2"),
    ("ucs2 134 = 2 x 67", "ş" + "a" * 133, 2, "UCS-2"),
    ("ucs2 135", "ş" + "a" * 134, 3, "UCS-2"),
    ("Turkish letters are not in GSM-7", "ığüşöç İĞÜŞÖÇ", 1, "UCS-2"),
    ("a typographic apostrophe makes it UCS-2", "it\N{RIGHT SINGLE QUOTATION MARK}s" + "a" * 67, 2, "UCS-2"),
    ("a tab makes it UCS-2", "a\tb", 1, "UCS-2"),
    # --- characters outside the BMP count two
    ("35 emoji = 70 units", EMOJI * 35, 1, "UCS-2"),
    ("36 emoji = 72 units", EMOJI * 36, 2, "UCS-2"),
    ("35 emoji and a letter", EMOJI * 35 + "a", 2, "UCS-2"),
    ("66 emoji = 132 units", EMOJI * 66, 2, "UCS-2"),
    # 134 units would fit two parts of 67, but a part holds 33 whole pairs (66 units): 33 | 33 | 1.
    ("67 emoji: pairs do not fill a part of 67", EMOJI * 67, 3, "UCS-2"),
    # 66 + 2 would be 68 > 67: the emoji starts part 2 whole (66 | 2 + 65 | 1), its surrogates never split.
    ("a surrogate pair is never split", "a" * 66 + EMOJI + "a" * 66, 3, "UCS-2"),
    # --- combining marks: each mark is a character of its own, and not in GSM-7
    ("precomposed é is GSM-7", "é" * 160, 1, "GSM-7"),
    ("e + combining acute is UCS-2, two units", ("e" + COMBINING_ACUTE) * 35, 1, "UCS-2"),
    ("36 decomposed é = 72 units", ("e" + COMBINING_ACUTE) * 36, 2, "UCS-2"),
    # --- mixed
    ("one character outside GSM-7 turns 160 GSM characters into UCS-2", "a" * 159 + "ç", 3, "UCS-2"),
    ("an emoji in GSM text", "Your code is 1234 " + EMOJI, 1, "UCS-2"),
    ("the euro sign is GSM-7 with the rest", "Pay 5€ [ref {42}]", 1, "GSM-7"),
]


@pytest.mark.parametrize(("text", "segments", "encoding"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_segments_table(text, segments, encoding):
    assert sms_encoding(text) == encoding
    assert sms_segments(text) == segments


@pytest.mark.parametrize("char", GSM7_EXTENSION, ids=repr)
def test_each_extension_character_counts_two_septets(char):
    assert sms_encoding(char) == "GSM-7"
    assert sms_segments("x" * 158 + char) == 1  # 160 septets
    assert sms_segments("x" * 159 + char) == 2  # 161 septets
    # Never split: 152 + 2 does not fit the first part of 153, so it starts the second.
    assert sms_segments("x" * 152 + char + "x" * 152) == 3


# --- stored on create, shown everywhere ---------------------------------------------------------


@pytest.mark.django_db
def test_segments_are_stored_when_a_message_is_queued_by_every_way_in(client_for, user, tmp_path):
    client = client_for(user)
    long_gsm = "a" * 161
    emoji = EMOJI * 36

    via_api = client.post("/api/messages/", {"recipient_phone_number": "+905551112233", "content": long_gsm})
    via_bulk = client.post(
        "/api/messages/bulk/",
        {"messages": [{"recipient_phone_number": "+905551112233", "content": emoji}]},
        format="json",
    )
    via_seed = client.post("/messages", {"recipient_phone_number": "+905551112233", "content": "a" * 307})
    via_service = message_create(recipient_phone_number="+905551112233", content="hi")
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("recipient_phone_number,content\n+905551112233," + "ş" * 71 + "\n")
    call_command("import_messages", str(csv_path), stdout=io.StringIO(), stderr=io.StringIO())

    assert via_api.status_code == 201, via_api.content
    assert via_api.json()["segments"] == 2
    assert via_bulk.status_code == 201, via_bulk.content
    assert via_bulk.json()["messages"][0]["segments"] == 2
    assert via_seed.status_code == 200, via_seed.content
    assert "segments" not in via_seed.json()["success"]  # the seed routes keep the Go service's shape
    stored = dict(Message.objects.values_list("content", "segments"))
    assert stored == {long_gsm: 2, emoji: 2, "a" * 307: 3, "hi": 1, "ş" * 71: 2}
    assert via_service.segments == 1


@pytest.mark.django_db
def test_the_api_shows_segments_in_the_detail_and_the_lists(api_client):
    message = make_message(content="a" * 200, segments=2)

    detail = api_client.get(f"/api/messages/{message.pk}/")
    listed = api_client.get("/api/messages/")

    assert detail.json()["segments"] == 2
    assert [m["segments"] for m in listed.json()["results"]] == [2]


@pytest.mark.django_db
def test_the_admin_change_page_shows_segments(client):
    client.force_login(make_user(username="root", superuser=True))
    message = message_create(recipient_phone_number="+905551112233", content=EMOJI * 36)

    response = client.get(f"/admin/messages_app/message/{message.pk}/change/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Segments" in html
    assert '<div class="readonly">2</div>' in html


@pytest.mark.django_db
def test_the_dashboard_shows_the_segments_sent(client):
    client.force_login(make_user(username="root", superuser=True))
    now = timezone.now()
    make_message(status=Message.Status.SENT, content="a" * 161, segments=2, sent_at=now)
    make_message(status=Message.Status.SENT, content="b" * 307, segments=3, sent_at=now)
    make_message(status=Message.Status.UNSENT, content="c" * 307, segments=3)  # not sent: not counted

    response = client.get("/admin/dispatcher/dispatcherstate/dashboard/")

    assert response.status_code == 200
    assert '<span id="funnel-segments">5</span>' in response.content.decode()
