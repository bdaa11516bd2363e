"""Bad input, table-driven: every row is answered with a clear 4xx (a JSON body
that names the field or says what is wrong) and writes nothing, neither a
message nor a change to the dispatcher's state.

Lengths are counted in characters, meaning Unicode code points, which is what
Python's len() and PostgreSQL's char_length() count: an emoji is one character
however many bytes it takes, and "é" written as "e" + a combining accent
(U+0065 U+0301) is two, though it looks like one.

Then SQL and HTML in text: rejected where the field cannot hold it (phone
numbers, dates, filters), stored and returned verbatim in content, and shown
escaped in the admin and the dashboard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from dispatcher.engine.pipeline import run_tick_here
from dispatcher.engine.providers import locmem
from dispatcher.engine.providers.base import ProviderError
from dispatcher.models import DispatcherState
from messages_app.models import DeliveryAttempt, Message
from tests.factories import make_user, token_for

pytestmark = pytest.mark.django_db

CREATE = "/api/messages/"
BULK = "/api/messages/bulk/"
SENT = "/api/messages/sent/"
DISPATCHER = "/api/dispatcher/"
SEED = "/messages"

PHONE = "+905551112233"
EMOJI = "\N{GRINNING FACE}"  # one character, four bytes in UTF-8
E_ACUTE = "e\N{COMBINING ACUTE ACCENT}"  # looks like one character, is two
SQL = "'); DROP TABLE messages_app_message;--"
HTML = "<script>alert(1)</script>"
TEN_MB = 10 * 1024 * 1024
MISSING = object()


def message(phone: Any = PHONE, content: Any = "hi", **extra) -> dict:
    body = {"recipient_phone_number": phone, "content": content, **extra}
    return {key: value for key, value in body.items() if value is not MISSING}


@dataclass(frozen=True)
class Bad:
    """One row: a request, the 4xx it must get and where its answer names the problem."""

    method: str
    path: str
    body: Any = None  # JSON-encoded unless `raw`
    status: int = 400
    error_at: tuple[str, ...] = ()  # keys into the JSON answer leading to a non-empty message
    raw: bytes | None = None
    content_type: str = "application/json"
    query: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def create(body, **kw) -> Bad:
    return Bad("post", CREATE, body, **kw)


def content_error(content, **kw) -> Bad:
    return create(message(content=content), error_at=("content",), **kw)


def phone_error(phone, **kw) -> Bad:
    return create(message(phone=phone), error_at=("recipient_phone_number",), **kw)


def patch(body, error_at, **kw) -> Bad:
    return Bad("patch", DISPATCHER, body, error_at=error_at, **kw)


def big_json(size: int) -> bytes:
    return json.dumps(message(content="a" * size)).encode()


ROWS = {
    # --- content: length in characters (code points), blank, NUL, types --------------------
    "content-1001-ascii": content_error("a" * 1001),
    "content-1001-emoji": content_error(EMOJI * 1001),
    "content-1001-code-points-of-combining-accents": content_error(E_ACUTE * 500 + "e"),
    "content-over-a-lower-limit": content_error(EMOJI * 11, settings={"MESSAGE_MAX_LENGTH": 10}),
    "content-empty": content_error(""),
    "content-blank": content_error(" \t\n\u00a0\u3000"),
    "content-missing": content_error(MISSING),
    "content-nul": content_error("a\x00b"),
    "content-only-nul": content_error("\x00"),
    # nothing visible, or control characters other than line breaks and tabs
    "content-zero-width-spaces": content_error("\u200b\u200b"),
    "content-byte-order-mark": content_error("\ufeff"),
    "content-word-joiners-and-bidi-marks": content_error("\u2060\u200e\u200f"),
    "content-combining-accent-alone": content_error("\u0301\u0301"),
    "content-variation-selector-alone": content_error("\ufe0f"),
    "content-hangul-filler": content_error("\u3164"),
    "content-blank-braille": content_error("\u2800 \u2800"),
    "content-ansi-escape": content_error("\x1b[2J\x1b[31mPAY NOW\x1b[0m"),
    "content-bell": content_error("ding\x07"),
    "content-backspace": content_error("ab\x08\x08cd"),
    "content-carriage-return": content_error("line one\rline two"),
    "content-delete": content_error("a\x7f"),
    "content-c1-control": content_error("a\x9bb"),
    "content-number": content_error(123),
    "content-float": content_error(1.5),
    "content-true": content_error(True),
    "content-null": content_error(None),
    "content-object": content_error({"text": "hi"}),
    "content-array": content_error(["hi"]),
    "content-lone-surrogate": create(
        None, raw=b'{"recipient_phone_number": "+905551112233", "content": "a\\ud800b"}', error_at=("content",)
    ),
    # --- phone numbers ---------------------------------------------------------------------------
    "phone-too-long-for-e164": phone_error("+9055511122334455"),
    "phone-too-long-to-read": phone_error("+90" + "5" * 40),
    "phone-longer-than-the-field": phone_error("+9" + "0" * 80),
    "phone-letters": phone_error("+90 555 ABC 22 33"),
    "phone-vanity-letters": phone_error("+1-800-FLOWERS"),
    "phone-invalid-for-its-country": phone_error("+90 123 456 78 90"),
    "phone-too-short-for-its-country": phone_error("+90 555 111"),
    "phone-unknown-country-code": phone_error("+999 555 111 22 33"),
    "phone-no-country-code": phone_error("5551112233"),
    "phone-plus-only": phone_error("+"),
    "phone-empty": phone_error(""),
    "phone-missing": phone_error(MISSING),
    "phone-nul": phone_error("+90555\x001112233"),
    "phone-number": phone_error(905551112233),
    "phone-null": phone_error(None),
    "phone-true": phone_error(True),
    "phone-object": phone_error({"number": PHONE}),
    "phone-array": phone_error([PHONE]),
    "phone-sql": phone_error(SQL),
    "phone-html": phone_error(HTML),
    # --- send_after ----------------------------------------------------------------------------
    "send-after-number": create(message(send_after=1735689600), error_at=("send_after",)),
    "send-after-true": create(message(send_after=True), error_at=("send_after",)),
    "send-after-object": create(message(send_after={}), error_at=("send_after",)),
    "send-after-impossible-date": create(message(send_after="2025-13-45T25:61:00Z"), error_at=("send_after",)),
    "send-after-sql": create(message(send_after=SQL), error_at=("send_after",)),
    "send-after-html": create(message(send_after=HTML), error_at=("send_after",)),
    # times outside the years the service takes (restapi/storable.py), or with an offset no place has
    "send-after-year-10000-in-utc": create(message(send_after="9999-12-31T23:59:59-14:00"), error_at=("send_after",)),
    "send-after-year-0-in-utc": create(message(send_after="0001-01-01T00:00:00+14:00"), error_at=("send_after",)),
    "send-after-offset-23-59": create(message(send_after="2030-01-01T00:00:00+23:59"), error_at=("send_after",)),
    "send-after-next-century": create(message(send_after="2200-01-01T00:00:00Z"), error_at=("send_after",)),
    "send-after-unix-epoch": create(message(send_after="1970-01-01T00:00:00Z"), error_at=("send_after",)),
    "expires-at-year-9999": create(message(expires_at="9999-12-31T00:00:00Z"), error_at=("expires_at",)),
    # --- the body as a whole ---------------------------------------------------------------------
    "create-array-not-object": create([message()], error_at=("non_field_errors",)),
    "create-string-body": create("hi", error_at=("non_field_errors",)),
    "create-number-body": create(42, error_at=("non_field_errors",)),
    "create-null-body": create(None, raw=b"null", error_at=("non_field_errors",)),
    "create-unknown-field": create(message(urgency="high"), error_at=("urgency",)),
    "create-read-only-field": create(message(status="sent"), error_at=("status",)),
    "create-unknown-and-bad-field": create(message(content="", colour="red"), error_at=("colour",)),
    "create-malformed-json": create(None, raw=b'{"recipient_phone_number": "+905551112233",', error_at=("detail",)),
    "create-not-utf8": create(None, raw=b'{"content": "\xff\xfe"}', error_at=("detail",)),
    "create-unsupported-media-type": create(
        None, raw=b"recipient_phone_number=+905551112233", content_type="text/plain", status=415, error_at=("detail",)
    ),
    # A 10 MB body is under the default MAX_REQUEST_BODY_BYTES (sized for a full bulk
    # request), so its content is what is refused; under a smaller limit, the body.
    "body-10mb-content-over-limit": content_error("a" * TEN_MB),
    "body-10mb-over-body-limit": create(
        None, raw=big_json(TEN_MB), status=413, error_at=("detail",), settings={"DATA_UPLOAD_MAX_MEMORY_SIZE": 2621440}
    ),
    # --- bulk ------------------------------------------------------------------------------------
    "bulk-over-the-cap": Bad(
        "post",
        BULK,
        {"messages": [message() for _ in range(4)]},
        error_at=("messages", "non_field_errors"),
        settings={"MESSAGE_BULK_MAX_ITEMS": 3},
    ),
    "bulk-empty": Bad("post", BULK, {"messages": []}, error_at=("messages",)),
    "bulk-bare-array": Bad("post", BULK, [message()], error_at=("non_field_errors",)),
    "bulk-messages-an-object": Bad("post", BULK, {"messages": message()}, error_at=("messages",)),
    "bulk-item-an-array": Bad("post", BULK, {"messages": [[PHONE, "hi"]]}, error_at=("messages", "0")),
    "bulk-item-a-string": Bad("post", BULK, {"messages": ["hi"]}, error_at=("messages", "0")),
    "bulk-item-unknown-field": Bad(
        "post", BULK, {"messages": [message(), message(urgent=True)]}, error_at=("messages", "1", "urgent")
    ),
    "bulk-unknown-envelope-field": Bad("post", BULK, {"messages": [message()], "dry_run": True}, error_at=("dry_run",)),
    "bulk-one-bad-item-stores-none": Bad(
        "post", BULK, {"messages": [message(), message(content=EMOJI * 1001)]}, error_at=("messages", "1", "content")
    ),
    "bulk-item-nul": Bad("post", BULK, {"messages": [message(content="\x00")]}, error_at=("messages", "0", "content")),
    "bulk-item-send-after-next-century": Bad(
        "post",
        BULK,
        {"messages": [message(), message(send_after="2200-01-01T00:00:00Z")]},
        error_at=("messages", "1", "send_after"),
    ),
    # --- dispatcher PATCH --------------------------------------------------------------------------
    "patch-batch-size-zero": patch({"batch_size": 0}, ("batch_size",)),
    "patch-batch-size-negative": patch({"batch_size": -1}, ("batch_size",)),
    "patch-batch-size-absurd": patch({"batch_size": 10**12}, ("batch_size",)),
    "patch-batch-size-text": patch({"batch_size": "abc"}, ("batch_size",)),
    "patch-batch-size-fraction": patch({"batch_size": 1.5}, ("batch_size",)),
    "patch-batch-size-true": patch({"batch_size": True}, ("batch_size",)),
    "patch-batch-size-null": patch({"batch_size": None}, ("batch_size",)),
    "patch-batch-size-object": patch({"batch_size": {"n": 1}}, ("batch_size",)),
    "patch-interval-zero": patch({"interval_seconds": 0}, ("interval_seconds",)),
    "patch-interval-negative": patch({"interval_seconds": -1}, ("interval_seconds",)),
    "patch-interval-absurd": patch({"interval_seconds": 10**12}, ("interval_seconds",)),
    "patch-interval-text": patch({"interval_seconds": "abc"}, ("interval_seconds",)),
    "patch-interval-sql": patch({"interval_seconds": SQL}, ("interval_seconds",)),
    # numbers in ASCII digits only: int() reads Arabic-Indic, Devanagari and fullwidth digits too
    "patch-interval-arabic-indic-digit": patch({"interval_seconds": "\u0665"}, ("interval_seconds",)),
    "patch-batch-size-fullwidth-digits": patch({"batch_size": "\uff11\uff10"}, ("batch_size",)),
    "patch-batch-size-devanagari-digit": patch({"batch_size": "\u096b"}, ("batch_size",)),
    "expires-at-arabic-indic-digits": create(
        message(expires_at="\u0662\u0660\u0663\u0660-\u0660\u0661-\u0660\u0661T00:00:00Z"), error_at=("expires_at",)
    ),
    "send-after-arabic-indic-digits": create(
        message(send_after="\u0662\u0660\u0663\u0660-\u0660\u0661-\u0660\u0661T00:00:00Z"), error_at=("send_after",)
    ),
    "patch-one-good-one-bad": patch({"batch_size": 5, "interval_seconds": 0}, ("interval_seconds",)),
    "patch-array-not-object": patch([{"batch_size": 5}], ("non_field_errors",)),
    "patch-unknown-field": patch({"batch_size": 5, "running": False}, ("running",)),
    "patch-empty-object": patch({}, ("non_field_errors",)),
    "patch-malformed-json": patch(None, ("detail",), raw=b'{"batch_size": '),
    # --- lists: cursor, page size and filters ------------------------------------------------------
    "list-cursor-not-base64": Bad("get", CREATE, query={"cursor": "abc"}, status=404, error_at=("detail",)),
    "list-cursor-sql": Bad("get", CREATE, query={"cursor": SQL}, status=404, error_at=("detail",)),
    "sent-cursor-non-numeric": Bad("get", SENT, query={"cursor": "cD1hYmM="}, status=404, error_at=("detail",)),
    "list-page-size-text": Bad("get", CREATE, query={"page_size": "abc"}, error_at=("page_size",)),
    "list-page-size-over-max": Bad("get", CREATE, query={"page_size": "501"}, error_at=("page_size",)),
    "list-status-sql": Bad("get", CREATE, query={"status": SQL}, error_at=("status",)),
    "list-status-html": Bad("get", CREATE, query={"status": HTML}, error_at=("status",)),
    # --- the Go service's route: same checks, its envelope ------------------------------------------
    "seed-content-over-limit": Bad("post", SEED, message(content=EMOJI * 1001), error_at=("fail", "reason")),
    "seed-phone-invalid": Bad("post", SEED, message(phone="+90 123"), error_at=("fail", "reason")),
    "seed-unknown-field": Bad("post", SEED, message(to=PHONE), error_at=("fail", "reason")),
    "seed-send-after-year-10000-in-utc": Bad(
        "post", SEED, message(send_after="9999-12-31T23:59:59-14:00"), error_at=("fail", "reason")
    ),
    "seed-send-after-offset-23-59": Bad(
        "post", SEED, message(send_after="2030-01-01T00:00:00+23:59"), error_at=("fail", "reason")
    ),
    "seed-array-not-object": Bad("post", SEED, [message()], status=422, error_at=("fail", "reason")),
    "seed-malformed-json": Bad("post", SEED, raw=b"{", status=422, error_at=("fail", "reason")),
    "seed-10mb-over-body-limit": Bad(
        "post",
        SEED,
        raw=big_json(TEN_MB),
        status=413,
        error_at=("fail", "reason"),
        settings={"DATA_UPLOAD_MAX_MEMORY_SIZE": 2621440},
    ),
}


@pytest.fixture
def root_client() -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(make_user(username='root', superuser=True))}")
    return client


def dispatcher_rows() -> list[dict]:
    return list(DispatcherState.objects.order_by("pk").values())


def send(client: APIClient, row: Bad):
    if row.method == "get":
        return client.get(row.path, row.query)
    payload = row.raw if row.raw is not None else json.dumps(row.body).encode()
    return getattr(client, row.method)(row.path, payload, content_type=row.content_type)


def error_message_at(body: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        assert isinstance(body, dict) and key in body, (key, body)
        body = body[key]
    return body


def is_clear(message: Any) -> bool:
    """A non-empty text, a list of them, or a mapping whose values are (list errors by index)."""
    if isinstance(message, str):
        return bool(message.strip())
    if isinstance(message, list):
        return bool(message) and all(is_clear(item) for item in message)
    if isinstance(message, dict):
        return bool(message) and all(is_clear(item) for item in message.values())
    return False


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_bad_input_is_a_clear_4xx_and_writes_nothing(root_client, settings, row):
    for name, value in row.settings.items():
        setattr(settings, name, value)
    state_before = dispatcher_rows()

    response = send(root_client, row)

    assert response.status_code == row.status, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    assert is_clear(error_message_at(response.json(), row.error_at)), response.json()
    assert not Message.objects.exists()
    assert not DeliveryAttempt.objects.exists()
    assert dispatcher_rows() == state_before


def test_a_time_outside_the_years_taken_is_refused_naming_the_field_and_the_range(root_client):
    response = root_client.post(CREATE, message(send_after="9999-12-31T23:59:59-14:00"), format="json")

    assert response.status_code == 400
    assert response.json() == {
        "send_after": [
            "9999-12-31T23:59:59-14:00 is outside the times this service takes: "
            "from 2000-01-01T00:00:00Z to 2100-01-01T00:00:00Z."
        ]
    }


def test_an_offset_no_place_uses_is_refused_naming_the_field(root_client):
    response = root_client.post(CREATE, message(send_after="2030-01-01T00:00:00+23:59"), format="json")

    assert response.status_code == 400
    assert response.json() == {
        "send_after": ["2030-01-01T00:00:00+23:59 has a UTC offset of +23:59; no place is more than 14 hours from UTC."]
    }


# --- what is accepted, at the limits ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("send_after", "stored"),
    [
        ("2000-01-01T00:00:00Z", datetime(2000, 1, 1, tzinfo=UTC)),
        ("2099-12-31T23:59:59Z", datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("2030-01-01T00:00:00+14:00", datetime(2029, 12, 31, 10, tzinfo=UTC)),
        ("2030-01-01T00:00:00-12:00", datetime(2030, 1, 1, 12, tzinfo=UTC)),
    ],
)
def test_times_at_the_edges_of_what_is_taken_are_stored(root_client, send_after, stored):
    response = root_client.post(CREATE, message(send_after=send_after), format="json")

    assert response.status_code == 201, response.content[:300]
    assert Message.objects.get().send_after == stored


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("a" * 1000, id="1000-ascii"),
        pytest.param(EMOJI * 1000, id="1000-emoji-4000-bytes"),
        pytest.param(E_ACUTE * 500, id="1000-code-points-of-combining-accents"),
        pytest.param(" \N{ZERO WIDTH JOINER}x\t", id="whitespace-around-text-kept"),
    ],
)
def test_content_up_to_the_limit_in_code_points_is_stored_and_sent_unchanged(root_client, settings, content):
    settings.MESSAGE_MAX_LENGTH = 1000

    response = root_client.post(CREATE, message(content=content), format="json")

    assert response.status_code == 201, response.content[:300]
    assert response.json()["content"] == content
    assert Message.objects.get().content.encode() == content.encode()
    run_tick_here(force=True)
    assert [entry.content for entry in locmem.outbox] == [content]


def test_content_of_combining_characters_counts_each_code_point(root_client, settings):
    settings.MESSAGE_MAX_LENGTH = 4
    # "ééé" as base letter + accent: three characters on screen, six code points.
    response = root_client.post(CREATE, message(content=E_ACUTE * 3), format="json")
    assert response.status_code == 400
    assert response.json()["content"] == ["Content is 6 characters long; the limit is 4."]
    assert not Message.objects.exists()


# --- SQL and HTML in text ---------------------------------------------------------------------------


MIXED = f"{HTML} {SQL} &amp; \"quoted\" 'single'"


@pytest.mark.parametrize("content", [SQL, HTML, MIXED], ids=["sql", "html", "mixed"])
def test_sql_and_html_in_content_are_stored_and_returned_verbatim(root_client, content):
    response = root_client.post(CREATE, message(content=content), format="json")

    assert response.status_code == 201, response.content
    assert response.json()["content"] == content
    stored = Message.objects.get()
    assert stored.content == content
    assert root_client.get(f"{CREATE}{stored.pk}/").json()["content"] == content
    assert root_client.get(CREATE, {"recipient_phone_number": PHONE}).json()["results"][0]["content"] == content
    run_tick_here(force=True)
    assert [entry.content for entry in locmem.outbox] == [content]
    # The table is still there, and still holds just this one message.
    assert Message.objects.count() == 1


def test_sql_in_a_filter_matches_nothing_and_breaks_nothing(root_client):
    root_client.post(CREATE, message(), format="json")
    response = root_client.get(CREATE, {"recipient_phone_number": f"{PHONE}' OR '1'='1"})
    assert response.status_code == 200
    assert response.json()["results"] == []
    assert Message.objects.count() == 1


def escaped_only(html: str, text: str) -> None:
    """`text` appears in the page escaped and never raw."""
    assert HTML not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, text


@pytest.fixture
def admin_client_() -> Client:
    client = Client()
    client.force_login(make_user(username="operator", superuser=True))
    return client


def test_html_and_sql_in_content_are_shown_escaped_in_the_admin(root_client, admin_client_):
    html_message = root_client.post(CREATE, message(content=HTML), format="json").json()
    sql_message = root_client.post(CREATE, message(content=SQL), format="json").json()

    changelist = admin_client_.get("/admin/messages_app/message/").content.decode()
    escaped_only(changelist, "changelist")
    assert "&#x27;); DROP TABLE messages_app_message;--" in changelist

    change = admin_client_.get(f"/admin/messages_app/message/{html_message['id']}/change/").content.decode()
    escaped_only(change, "change page")

    searched = admin_client_.get("/admin/messages_app/message/", {"q": SQL})
    assert searched.status_code == 200
    assert f"/admin/messages_app/message/{sql_message['id']}/change/" in searched.content.decode()
    assert Message.objects.count() == 2


def test_html_in_a_failure_reason_is_shown_escaped_on_the_dashboard(root_client, admin_client_):
    root_client.post(CREATE, message(content=HTML), format="json")
    # A provider that echoes its input back in an error, as some do.
    locmem.failures.append(ProviderError(f"rejected {HTML}", permanent=True, http_status=400))
    run_tick_here(force=True)
    assert HTML in Message.objects.get().last_error

    dashboard = admin_client_.get("/admin/dashboard/", follow=True)

    assert dashboard.status_code == 200
    escaped_only(dashboard.content.decode(), "dashboard")
