"""Messages as CSV, for the admin's "Export CSV" of the current changelist."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from datetime import datetime

from django.db.models import QuerySet

from messages_app.models import Message

MESSAGE_CSV_COLUMNS = [
    "id",
    "uuid",
    "recipient_phone_number",
    "content",
    "status",
    "created_at",
    "sent_at",
    "provider_message_id",
    "attempts",
    "last_error",
]

# A spreadsheet runs a cell that starts with one of these as a formula
# (=HYPERLINK(...), +cmd|..., -2+3, @SUM(...)). Message content and provider
# errors come from outside, so wherever a cell could begin, a formula is
# neutralised with a leading "'", which spreadsheets take as "this is text":
# - at the start of the cell, also behind leading whitespace or quotes (" =1+1",
#   "\n=1+1", which some programs trim), and before a leading tab or CR, which
#   some programs read as the start of a formula too;
# - after every separator a spreadsheet might split the cell at: "," and ";"
#   (the list separator in locales with a decimal comma, where "x;=HYPERLINK(...)"
#   would be two cells), tab, and line breaks.
_FORMULA_STARTS = "=+-@"
_CELL_START = re.compile(rf'^(?=[\s"]*[{re.escape(_FORMULA_STARTS)}]|[\t\r])')
_AFTER_SEPARATOR = re.compile(rf'(?<=[,;\t\r\n])(?=[\s"]*[{re.escape(_FORMULA_STARTS)}])')

# Stored in E.164 (validated to "+" and digits), so its "+" cannot start a
# formula; a "'" would only corrupt the number for whoever imports it.
_NOT_FORMULA_COLUMNS = {"recipient_phone_number"}

# Spreadsheet programs read a CSV file as UTF-8 only when it starts with a byte
# order mark; without it they guess a legacy code page and garble non-ASCII text.
BYTE_ORDER_MARK = "\ufeff"

CHUNK_SIZE = 2000


class _Echo:
    """A file-like object whose write() returns what it was given, for csv.writer."""

    def write(self, value: str) -> str:
        return value


def csv_safe(value: object) -> str:
    """The text of a cell, with a "'" wherever a spreadsheet could take what follows for a formula."""
    if value is None:
        return ""
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return _CELL_START.sub("'", _AFTER_SEPARATOR.sub("'", text), count=1)


def messages_csv_lines(*, queryset: QuerySet[Message]) -> Iterator[str]:
    """A byte order mark and the header, then one CSV line per message of `queryset`,
    read in chunks so an export of millions of rows never holds them all in memory."""
    writer = csv.writer(_Echo())
    yield BYTE_ORDER_MARK + writer.writerow(MESSAGE_CSV_COLUMNS)
    for row in queryset.values_list(*MESSAGE_CSV_COLUMNS).iterator(chunk_size=CHUNK_SIZE):
        yield writer.writerow(
            [
                value if column in _NOT_FORMULA_COLUMNS else csv_safe(value)
                for column, value in zip(MESSAGE_CSV_COLUMNS, row, strict=True)
            ]
        )
