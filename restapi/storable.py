"""What a value from outside must be for the service to keep it: text PostgreSQL can
store, and a time inside the years the service takes.

Every entry point checks with these (the API's fields, the receipts, the Twilio
callback, the CSV import, the admin, the commands), so a value that passed one
cannot fail a write, or make every later read of its row fail, elsewhere. What a
provider answers is made storable instead (ProviderResult, ProviderError): that
answer cannot be refused, its send has happened.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from django.core.exceptions import ValidationError

# The times the service takes, from outside, anywhere: a send_after or an expiry, a
# receipt's time, a command's --since. Nothing it handles happened before 2000 or is
# planned after 2100, so a time outside them is a mistake: 1970-01-01 and
# 0001-01-01 are how other systems write "no time" (Unix, Go), 9999-12-31 how
# they write "never". Kept far inside what Python's datetime holds (the years 1 to
# 9999 once in UTC, which psycopg needs to read a row back), so no conversion to
# another offset and no delay added to one overflows.
EARLIEST_TIME = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(2100, 1, 1, tzinfo=UTC)
# No place on Earth is further from UTC (Kiribati is +14:00); ISO 8601 allows up to
# 23:59, which PostgreSQL refuses (beyond 15:59) with an error for the whole statement.
MAX_UTC_OFFSET = timedelta(hours=14)

# What PostgreSQL cannot keep in text: NUL, and lone surrogates (a JSON "\ud800"
# decodes to one; it is no character, and has no UTF-8 form). A pair of surrogates
# is decoded into the one character it writes, so any surrogate left is lone.
_UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def time_in_range(value: datetime) -> datetime:
    """`value` (aware) in UTC if the service takes it; ValidationError saying why not."""
    offset = value.utcoffset()
    if offset is None:
        raise ValidationError(f"{value.isoformat()} has no UTC offset.", code="naive")
    if abs(offset) > MAX_UTC_OFFSET:
        sign, minutes = "-" if offset < timedelta(0) else "+", abs(offset) // timedelta(minutes=1)
        raise ValidationError(
            f"{value.isoformat()} has a UTC offset of {sign}{minutes // 60:02d}:{minutes % 60:02d}; "
            f"no place is more than {MAX_UTC_OFFSET // timedelta(hours=1)} hours from UTC.",
            code="offset",
        )
    try:
        in_utc = value.astimezone(UTC)
    except OverflowError:  # before the year 1 or after 9999 once in UTC
        in_utc = None
    if in_utc is None or not EARLIEST_TIME <= in_utc < LATEST_TIME:
        raise ValidationError(
            f"{value.isoformat()} is outside the times this service takes: "
            f"from {_iso(EARLIEST_TIME)} to {_iso(LATEST_TIME)}.",
            code="out_of_range",
        )
    return in_utc


def text_storable_problem(value: str) -> str | None:
    """What in `value` PostgreSQL cannot store (for an error message), or None."""
    found = _UNSTORABLE_CHARACTER.search(value)
    if found is None:
        return None
    char, position = found.group(), found.start() + 1
    if char == "\x00":
        return f"holds a NUL character (U+0000) at position {position}"
    return f"holds a lone surrogate (U+{ord(char):04X}) at position {position}, which is not a character"


def text_escaped_for_storage(value: str) -> str:
    """`value` with each NUL and lone surrogate written as its JSON escape (\\u0000,
    \\udc80): what a provider's JSON most likely said, kept readable."""
    return _UNSTORABLE_CHARACTER.sub(lambda found: f"\\u{ord(found.group()):04x}", value)
