"""restapi/storable.py, as a table: which times and texts from outside the service
keeps. What each entry point answers with them is tested where it lives (the API's
bad input, the receipts, the Twilio callback, the import, the admin)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from django.core.exceptions import ValidationError

from restapi.storable import (
    EARLIEST_TIME,
    LATEST_TIME,
    text_escaped_for_storage,
    text_storable_problem,
    time_in_range,
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("value", "in_utc"),
    [
        (EARLIEST_TIME, EARLIEST_TIME),
        (LATEST_TIME - timedelta(microseconds=1), LATEST_TIME - timedelta(microseconds=1)),
        (at("2030-01-01T00:00:00+14:00"), datetime(2029, 12, 31, 10, tzinfo=UTC)),
        (at("2030-01-01T00:00:00-14:00"), datetime(2030, 1, 1, 14, tzinfo=UTC)),
        (at("2000-01-01T09:00:00+09:00"), EARLIEST_TIME),
    ],
)
def test_times_taken_come_back_in_utc(value, in_utc):
    taken = time_in_range(value)
    assert taken == in_utc and taken.tzinfo is UTC


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (at("9999-12-31T23:59:59-14:00"), "out_of_range"),  # the year 10000 in UTC: Python cannot hold it
        (at("0001-01-01T00:00:00+14:00"), "out_of_range"),  # the year 0 in UTC
        (at("9999-12-31T23:59:59+00:00"), "out_of_range"),
        (at("1970-01-01T00:00:00+00:00"), "out_of_range"),  # Unix's "no time"
        (at("1999-12-31T23:59:59.999999+00:00"), "out_of_range"),
        (LATEST_TIME, "out_of_range"),
        (at("2000-01-01T08:59:59+09:00"), "out_of_range"),  # before 2000 in UTC, though not as written
        (at("2030-01-01T00:00:00+23:59"), "offset"),  # ISO 8601 allows it; PostgreSQL does not
        (at("2030-01-01T00:00:00-14:01"), "offset"),
        (datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=15))), "offset"),
        (datetime(2030, 1, 1), "naive"),
    ],
)
def test_times_not_taken_say_why(value, code):
    with pytest.raises(ValidationError) as raised:
        time_in_range(value)
    assert raised.value.code == code
    assert value.isoformat() in raised.value.messages[0]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("SM123", None),
        ("emoji \U0001f600 and accents é", None),
        ("", None),
        ("a\x00b", "holds a NUL character (U+0000) at position 2"),
        ("ab\ud800", "holds a lone surrogate (U+D800) at position 3, which is not a character"),
        ("\udfff", "holds a lone surrogate (U+DFFF) at position 1, which is not a character"),
    ],
)
def test_text_storable_problem(text, problem):
    assert text_storable_problem(text) == problem


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("SM123", "SM123"),
        ("a\x00b", "a\\u0000b"),
        ("a\ud800b\udc80", "a\\ud800b\\udc80"),
        ("\U0001f600", "\U0001f600"),  # a whole character is not a surrogate
    ],
)
def test_text_escaped_for_storage(text, escaped):
    assert text_escaped_for_storage(text) == escaped
    assert text_storable_problem(text_escaped_for_storage(text)) is None
