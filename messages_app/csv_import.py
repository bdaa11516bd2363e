"""Queueing messages from a CSV file (`manage.py import_messages`): reading the file,
checking each row as the API checks a message, and storing the valid rows, all in
one transaction."""

from __future__ import annotations

import codecs
import csv
import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from messages_app.due_signal import due_earliest, messages_due_announce
from messages_app.errors import MessageImportError
from messages_app.models import Message
from messages_app.recipient_policy import recipients_refused
from messages_app.services import message_new
from messages_app.template_source import TemplateLookup
from messages_app.validators import (
    normalize_phone_number,
    parse_aware_datetime,
    validate_category,
    validate_content,
    validate_priority,
)

logger = logging.getLogger(__name__)

MESSAGE_IMPORT_REQUIRED_COLUMNS = ("recipient_phone_number", "content")
MESSAGE_IMPORT_OPTIONAL_COLUMNS = ("send_after", "expires_at", "priority", "category")
# An import from a template: no content column; an optional language per row, and every
# other column a placeholder's value (header = placeholder name).
MESSAGE_IMPORT_TEMPLATE_REQUIRED_COLUMNS = ("recipient_phone_number",)
MESSAGE_IMPORT_TEMPLATE_OPTIONAL_COLUMNS = (*MESSAGE_IMPORT_OPTIONAL_COLUMNS, "language")


@dataclass(frozen=True)
class MessageImportTemplate:
    """The template every row of an import is made from (name or id), its version (None:
    the current one) and the language for rows without a language column (None: its default)."""

    template: str | int
    version: int | None = None
    language: str | None = None


@dataclass(frozen=True)
class MessageImportRow:
    line: int  # where the row starts in its file; the header is line 1
    recipient_phone_number: str
    content: str = ""  # none in an import from a template
    send_after: str = ""
    expires_at: str = ""
    priority: str = ""
    category: str = ""
    language: str = ""
    # An import from a template: the row's placeholder columns (header -> cell).
    personalisation: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class MessageImportRejection:
    line: int
    reason: str


@dataclass
class MessageImportResult:
    imported: int = 0  # in a dry run: how many would have been
    rejected: int = 0
    segments: int = 0  # the SMS segments of the messages imported (or that would be)


def csv_import_lines(stream: BinaryIO) -> Iterator[str]:
    """The decoded lines of `stream`, line breaks kept for the csv module.

    Decoding line by line (a newline byte is never part of a multi-byte UTF-8
    character) lets an encoding error name its line; "utf-8-sig" drops the byte
    order mark that spreadsheet programs write first.
    """
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    number = 0
    for number, raw in enumerate(stream, start=1):
        try:
            text = decoder.decode(raw)
        except UnicodeDecodeError:
            raise MessageImportError(f"line {number} is not UTF-8 text; save the file as CSV UTF-8.") from None
        yield text
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:  # the file ends inside a character
        raise MessageImportError(f"line {number} is not UTF-8 text; save the file as CSV UTF-8.") from None


def messages_import_csv_rows(*, stream: BinaryIO, from_template: bool = False) -> Iterator[MessageImportRow]:
    """The data rows of a CSV file with a header line, with their line numbers.

    Columns are found by name in the header; extra columns are ignored (`from_template`:
    they are the placeholders' values, and there is no content column), blank lines
    (and rows of empty cells) skipped. Raise MessageImportError if the file is not
    UTF-8, is malformed CSV or lacks a required column.
    """
    # strict: a quote left open would otherwise swallow every later line into one
    # field, so the rows after it could not be told apart.
    reader = csv.reader(csv_import_lines(stream), strict=True)
    last_line = 0
    try:
        header = next(reader, None)
        if header is None:
            raise MessageImportError(f"the file is empty; expected a header line with {_import_columns_text()}.")
        names = [name.strip().lower() for name in header]
        required, optional = (
            (MESSAGE_IMPORT_TEMPLATE_REQUIRED_COLUMNS, MESSAGE_IMPORT_TEMPLATE_OPTIONAL_COLUMNS)
            if from_template
            else (MESSAGE_IMPORT_REQUIRED_COLUMNS, MESSAGE_IMPORT_OPTIONAL_COLUMNS)
        )
        missing = [name for name in required if name not in names]
        if missing:
            raise MessageImportError(
                f"the header line lacks {', '.join(missing)}; expected {_import_columns_text(from_template)} "
                f"(found: {', '.join(name for name in names if name) or 'nothing'})."
            )
        if from_template and "content" in names:
            raise MessageImportError(
                "a file imported from a template has no content column: the template makes each message's "
                "content from the row's other columns."
            )
        # The first column of a name wins, should a file repeat one.
        positions = {name: names.index(name) for name in required + optional if name in names}
        # From a template: every other named column is a placeholder, named as its header says.
        placeholders = (
            {header[pos].strip(): pos for pos, name in enumerate(names) if name and name not in positions}
            if from_template
            else {}
        )
        last_line = reader.line_num
        for cells in reader:
            # A quoted field may span lines: a row starts just after the previous one ended.
            line, last_line = last_line + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            yield MessageImportRow(
                line=line,
                **{name: cells[pos] if pos < len(cells) else "" for name, pos in positions.items()},
                # An empty cell is no value (as GOV.UK Notify reads a spreadsheet): the row is
                # rejected naming the placeholder, rather than sent with a hole in its text.
                personalisation={
                    name: cells[pos] for name, pos in placeholders.items() if pos < len(cells) and cells[pos] != ""
                },
            )
    except csv.Error as exc:
        raise MessageImportError(f"the row starting on line {last_line + 1} is not valid CSV: {exc}.") from None


def _import_columns_text(from_template: bool = False) -> str:
    if from_template:
        required = ", ".join(MESSAGE_IMPORT_TEMPLATE_REQUIRED_COLUMNS)
        optional = ", ".join(MESSAGE_IMPORT_TEMPLATE_OPTIONAL_COLUMNS)
        return f"{required} and a column per placeholder (and optionally {optional})"
    required = ", ".join(MESSAGE_IMPORT_REQUIRED_COLUMNS)
    return f"{required} (and optionally {', '.join(MESSAGE_IMPORT_OPTIONAL_COLUMNS)})"


def _message_from_import_row(
    row: MessageImportRow, template: MessageImportTemplate | None = None, lookup: TemplateLookup | None = None
) -> Message:
    """The unsaved message a row asks for, validated as the API validates one;
    raise ValidationError with every problem of the row."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    checks: list[tuple[str, Callable[[str], Any]]] = [("recipient_phone_number", normalize_phone_number)]
    if template is None:
        checks.append(("content", validate_content))
    for optional, check in (("send_after", parse_aware_datetime), ("expires_at", parse_aware_datetime)):
        if getattr(row, optional).strip():
            checks.append((optional, check))
    if row.priority.strip():
        checks.append(("priority", validate_priority))
    if row.category.strip():
        checks.append(("category", validate_category))
    for field, check in checks:
        try:
            values[field] = check(getattr(row, field))
        except ValidationError as exc:
            problems.append(f"{field}: {' '.join(exc.messages)}")
    if template is not None and lookup is not None and not problems:
        try:
            values.update(
                lookup.message_fields(
                    template=template.template,
                    version=template.version,
                    language=row.language.strip() or template.language,
                    personalisation=row.personalisation,
                    category=values.get("category"),
                )
            )
        except ValidationError as exc:
            problems.extend(f"{name}: {' '.join(messages)}" for name, messages in exc.message_dict.items())
    if problems:
        raise ValidationError("; ".join(problems))
    try:
        return message_new(**values)
    except ValidationError as exc:  # what only the fields together can say, e.g. the expiry
        raise ValidationError(f"expires_at: {' '.join(exc.messages)}") from None


def messages_import_rows(
    *,
    rows: Iterable[MessageImportRow],
    batch_size: int = 1000,
    dry_run: bool = False,
    on_rejected: Callable[[MessageImportRejection], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    template: MessageImportTemplate | None = None,
) -> MessageImportResult:
    """Queue the valid rows as unsent messages (made from `template` if given), inserted `batch_size` rows at a time,
    all in one transaction; a dry run stores nothing.

    An invalid row never stops the import: it goes to `on_rejected` with its line
    and reason. Anything else that stops it (the database refusing a row, a lost
    connection, an interrupt) stores nothing at all, so running it again cannot
    store a row twice: the rows are committed together or not at all, and only a
    committed import is reported as imported. `on_progress` gets the number of rows
    done after each batch. Rows are consumed as they come, so a file of any size
    takes bounded memory.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    result = MessageImportResult()
    pending = iter(rows)
    # The template is read once for the whole import; each row is rendered in Python.
    lookup = TemplateLookup() if template is not None else None
    if template is not None and lookup is not None:
        try:  # a template that is not there is the file's problem, not each row's
            lookup.get(template=template.template, version=template.version, language=template.language)
        except ValidationError as exc:
            raise MessageImportError(" ".join(" ".join(m) for m in exc.message_dict.values())) from None
    # The earliest due time per priority among the rows queued: announced at commit, so the
    # dispatcher reads from there although the import's transaction stayed open for long.
    earliest_due: dict[str, datetime] = {}
    with nullcontext() if dry_run else transaction.atomic():
        while batch := list(itertools.islice(pending, batch_size)):
            checked: list[tuple[MessageImportRow, Message]] = []
            for row in batch:
                try:
                    checked.append((row, _message_from_import_row(row, template, lookup)))
                except ValidationError as exc:
                    result.rejected += 1
                    if on_rejected is not None:
                        on_rejected(MessageImportRejection(line=row.line, reason=exc.messages[0]))
            # Recipients who opted out: one question per batch, their rows rejected, the rest queued.
            refused = recipients_refused(phone_numbers=[message.recipient_phone_number for _, message in checked])
            messages: list[Message] = []
            for row, message in checked:
                if message.recipient_phone_number not in refused:
                    messages.append(message)
                    continue
                result.rejected += 1
                if on_rejected is not None:
                    reason = f"recipient_phone_number: {refused[message.recipient_phone_number]}"
                    on_rejected(MessageImportRejection(line=row.line, reason=reason))
            if messages and not dry_run:
                Message.objects.bulk_create(messages)
                queued = ((m.priority, m.next_attempt_at) for m in messages)
                earliest_due = due_earliest([*earliest_due.items(), *queued])
            result.imported += len(messages)
            result.segments += sum(message.segments for message in messages)
            if on_progress is not None:
                on_progress(len(batch))
        now = timezone.now()
        due = [(priority, moment) for priority, moment in earliest_due.items() if moment <= now]
        if due:
            messages_due_announce(due=due)
    logger.info(
        "%s %d messages from an import; %d rows rejected",
        "would queue" if dry_run else "queued",
        result.imported,
        result.rejected,
    )
    return result


def messages_import_csv(
    *,
    stream: BinaryIO,
    batch_size: int = 1000,
    dry_run: bool = False,
    on_checked: Callable[[int], None] | None = None,
    on_rejected: Callable[[MessageImportRejection], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    template: MessageImportTemplate | None = None,
) -> MessageImportResult:
    """Import a CSV file (see messages_import_csv_rows and messages_import_rows) from
    a seekable binary `stream`.

    The file is read to its end once before any row is stored, so that one which
    turns out half-way not to be UTF-8 or not CSV raises MessageImportError having
    stored nothing; that pass also counts the rows, given to `on_checked`. Reading
    twice costs little next to the inserts, and keeps memory bounded either way.
    """
    from_template = template is not None
    total = sum(1 for _ in messages_import_csv_rows(stream=stream, from_template=from_template))
    if on_checked is not None:
        on_checked(total)
    stream.seek(0)
    return messages_import_rows(
        rows=messages_import_csv_rows(stream=stream, from_template=from_template),
        batch_size=batch_size,
        dry_run=dry_run,
        on_rejected=on_rejected,
        on_progress=on_progress,
        template=template,
    )
