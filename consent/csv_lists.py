"""Opt-out lists as CSV: imported from another system (`manage.py import_opt_outs`)
and exported for one (`manage.py export_consents`)."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from django.core.exceptions import ValidationError

from consent.errors import ConsentImportError
from consent.models import Consent
from consent.services import consents_opt_out_many
from messages_app.csv_export import csv_safe
from messages_app.csv_import import csv_import_lines
from messages_app.errors import MessageImportError
from messages_app.validators import normalize_phone_number

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

PHONE_COLUMN = "phone_number"
EXPORT_COLUMNS = ["phone_number", "status", "changed_at", "method", "changed_by", "note"]


@dataclass(frozen=True)
class OptOutRow:
    line: int
    phone_number: str


@dataclass
class OptOutImportResult:
    opted_out: int = 0  # changed to opted out
    unchanged: int = 0  # already opted out (or the same number twice)
    rejected: int = 0


def opt_out_csv_rows(*, stream: BinaryIO) -> Iterator[OptOutRow]:
    """The rows of a CSV file whose header names a phone_number column (others ignored);
    ConsentImportError if it is not UTF-8 CSV with that column."""
    try:
        reader = csv.reader(csv_import_lines(stream), strict=True)
        header = next(reader, None)
        names = [name.strip().lower() for name in header or []]
        if PHONE_COLUMN not in names:
            raise ConsentImportError(
                f"the header line lacks {PHONE_COLUMN} (found: {', '.join(n for n in names if n) or 'nothing'})."
            )
        position, last_line = names.index(PHONE_COLUMN), reader.line_num
        for cells in reader:
            line, last_line = last_line + 1, reader.line_num
            number = cells[position].strip() if position < len(cells) else ""
            if number:
                yield OptOutRow(line=line, phone_number=number)
    except MessageImportError as exc:
        raise ConsentImportError(str(exc)) from None
    except csv.Error as exc:
        raise ConsentImportError(f"the row after line {last_line} is not valid CSV: {exc}.") from None


def opt_outs_import_csv(
    *,
    stream: BinaryIO,
    actor: AbstractBaseUser | None,
    via: str,
    batch_size: int = 1000,
    on_rejected: Callable[[int, str], None] | None = None,
) -> OptOutImportResult:
    """Opt out every valid number of the file, `batch_size` at a time (each batch one
    transaction, its history and one audit entry). The file is read through once first,
    so one that is not CSV stores nothing; an invalid number is reported and skipped."""
    for _ in opt_out_csv_rows(stream=stream):
        pass
    stream.seek(0)
    result = OptOutImportResult()
    rows = opt_out_csv_rows(stream=stream)
    while batch := list(itertools.islice(rows, batch_size)):
        numbers = []
        for row in batch:
            try:
                numbers.append(normalize_phone_number(row.phone_number))
            except ValidationError as exc:
                result.rejected += 1
                if on_rejected is not None:
                    on_rejected(row.line, exc.messages[0])
        changed = consents_opt_out_many(phone_numbers=numbers, method=Consent.Method.CSV_IMPORT, via=via, actor=actor)
        result.opted_out += changed
        result.unchanged += len(numbers) - changed
    return result


def consents_csv_lines(*, status: str | None) -> Iterator[str]:
    """The header, then one line per record (of `status`, or all), oldest change first."""

    class Echo:
        def write(self, value: str) -> str:
            return value

    writer = csv.writer(Echo())
    yield writer.writerow(EXPORT_COLUMNS)
    queryset = Consent.objects.order_by("changed_at", "id")
    if status:
        queryset = queryset.filter(status=status)
    for row in queryset.values_list(*EXPORT_COLUMNS).iterator(chunk_size=2000):
        # The number is E.164 ("+" and digits): kept as it is, its "+" starts no formula.
        yield writer.writerow([row[0], *(csv_safe(value) for value in row[1:])])
