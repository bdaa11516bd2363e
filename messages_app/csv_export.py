"""Messages as CSV, for the admin's "Export CSV" of the current changelist."""

from __future__ import annotations

import csv
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
# (=HYPERLINK(...), +cmd|..., -2+3, @SUM(...); tab and CR also start one in
# some programs). Message content and provider errors come from outside.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

# Stored in E.164 (validated to "+" and digits), so its "+" cannot start a
# formula; quoting it would only corrupt the number for whoever imports it.
_NOT_FORMULA_COLUMNS = {"recipient_phone_number"}

CHUNK_SIZE = 2000


class _Echo:
    """A file-like object whose write() returns what it was given, for csv.writer."""

    def write(self, value: str) -> str:
        return value


def csv_safe(value: object) -> str:
    """The text of a cell, with a leading quote if a spreadsheet would take it for a formula."""
    if value is None:
        return ""
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def messages_csv_lines(*, queryset: QuerySet[Message]) -> Iterator[str]:
    """The header, then one CSV line per message of `queryset`, read in chunks
    so an export of millions of rows never holds them all in memory."""
    writer = csv.writer(_Echo())
    yield writer.writerow(MESSAGE_CSV_COLUMNS)
    for row in queryset.values_list(*MESSAGE_CSV_COLUMNS).iterator(chunk_size=CHUNK_SIZE):
        yield writer.writerow(
            [
                value if column in _NOT_FORMULA_COLUMNS else csv_safe(value)
                for column, value in zip(MESSAGE_CSV_COLUMNS, row, strict=True)
            ]
        )
