"""Writes to messages. Every status change goes through `messages_transition`,
which puts the expected current status in the UPDATE's WHERE clause so that a
concurrent change makes the loser update nothing instead of overwriting."""

from __future__ import annotations

import codecs
import csv
import itertools
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F, QuerySet

from audit.services import Action, Via, control_action_record
from messages_app.errors import MessageImportError, MessageStateError
from messages_app.models import Message
from messages_app.validators import normalize_phone_number, parse_aware_datetime, validate_content

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

Status = Message.Status


def messages_transition(
    *,
    queryset: QuerySet[Message] | None = None,
    message_ids: Iterable[int] | None = None,
    from_status: Status | Sequence[Status],
    to_status: Status,
    increment_attempts: bool = False,
    **fields: Any,
) -> int:
    """Move messages from `from_status` to `to_status`; return how many moved."""
    qs = queryset if queryset is not None else Message.objects.all()
    if message_ids is not None:
        qs = qs.filter(pk__in=list(message_ids))
    allowed = [from_status] if isinstance(from_status, str) else list(from_status)
    updates: dict[str, Any] = {"status": to_status, **fields}
    if increment_attempts:
        updates["attempts"] = F("attempts") + 1
    return qs.filter(status__in=allowed).update(**updates)


def messages_mark_sent(
    *,
    claim_token: uuid.UUID | None,
    deliveries: Sequence[tuple[int, datetime, str]],
    delivery_cache_pending: bool,
) -> int:
    """processing -> sent for a batch of (id, sent_at, provider_message_id) held under
    `claim_token`, in one statement; return how many moved.

    The same guarded transition as messages_transition, written as a single
    UPDATE ... FROM unnest(...) on PostgreSQL because a CASE per row costs more
    to build than the HTTP requests it records.
    """
    if not deliveries:
        return 0
    if connection.vendor != "postgresql":
        changed = 0
        for pk, sent_at, provider_message_id in deliveries:
            changed += messages_transition(
                queryset=Message.objects.filter(claim_token=claim_token),
                message_ids=[pk],
                from_status=Status.PROCESSING,
                to_status=Status.SENT,
                increment_attempts=True,
                sent_at=sent_at,
                provider_message_id=provider_message_id,
                delivery_cache_pending=delivery_cache_pending,
                last_error="",
                claim_token=None,
                lease_expires_at=None,
            )
        return changed
    ids, sent_ats, provider_ids = zip(*deliveries, strict=True)
    table = Message._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {table} AS m
               SET status = %s, sent_at = v.sent_at, provider_message_id = v.provider_message_id,
                   attempts = m.attempts + 1, last_error = '', claim_token = NULL,
                   lease_expires_at = NULL, delivery_cache_pending = %s
              FROM unnest(%s::bigint[], %s::timestamptz[], %s::varchar[]) AS v(id, sent_at, provider_message_id)
             WHERE m.id = v.id AND m.status = %s AND m.claim_token IS NOT DISTINCT FROM %s
            """,  # noqa: S608 - the table name is ours; every value is a parameter
            [
                Status.SENT,
                delivery_cache_pending,
                list(ids),
                list(sent_ats),
                list(provider_ids),
                Status.PROCESSING,
                claim_token,
            ],
        )
        return cursor.rowcount


def message_create(*, recipient_phone_number: str, content: str, send_after: datetime | None = None) -> Message:
    message = Message.objects.create(
        recipient_phone_number=normalize_phone_number(recipient_phone_number),
        content=validate_content(content),
        send_after=send_after,
        next_attempt_at=send_after,
    )
    logger.info(
        "queued message id=%s uuid=%s%s", message.pk, message.uuid, f" to send after {send_after}" if send_after else ""
    )
    return message


def messages_bulk_create(*, items: Sequence[dict[str, Any]]) -> list[Message]:
    """Create all messages or none. Callers validate first to report per-item errors."""
    messages = [
        Message(
            recipient_phone_number=normalize_phone_number(item["recipient_phone_number"]),
            content=validate_content(item["content"]),
            send_after=item.get("send_after"),
            next_attempt_at=item.get("send_after"),
        )
        for item in items
    ]
    with transaction.atomic():
        created = Message.objects.bulk_create(messages)
    logger.info(
        "queued %d messages in bulk (ids %s..%s)",
        len(created),
        created[0].pk if created else "-",
        created[-1].pk if created else "-",
    )
    return created


# A requeued message starts afresh: due now, with a new budget of attempts.
_REQUEUED = {"to_status": Status.UNSENT, "claimed_at": None, "next_attempt_at": None, "attempts": 0}


# The audit log keeps at most this many of the ids an operator selected (and how
# many there were): "select all" in the admin can pick millions.
REQUEUE_RECORDED_IDS = 1000


def message_requeue(*, message_id: int, actor: AbstractBaseUser | None = None, via: str = Via.COMMAND) -> Message:
    """Put a failed message back in the queue; raise MessageStateError otherwise.

    A requeue is recorded in the audit log as done by `actor` through `via`; a
    refused one (the message is not failed) is not, as it did nothing.
    """
    with transaction.atomic():
        changed = messages_transition(message_ids=[message_id], from_status=Status.FAILED, **_REQUEUED)
        if changed:
            control_action_record(
                action=Action.REQUEUE, actor=actor, via=via, detail={"message_ids": [message_id], "count": changed}
            )
    message = Message.objects.get(pk=message_id)
    if not changed:
        raise MessageStateError(f"Only failed messages can be requeued; this one is {message.status}.")
    logger.info("requeued message id=%s uuid=%s", message.pk, message.uuid)
    return message


def messages_requeue_failed(
    *,
    message_ids: Iterable[int] | None = None,
    created_since: datetime | None = None,
    dry_run: bool = False,
    actor: AbstractBaseUser | None = None,
    via: str = Via.COMMAND,
) -> int:
    """Requeue failed messages (all of them, or those among `message_ids`, and/or those
    created at or after `created_since`); return the count. A dry run only counts them.

    Recorded in the audit log (a dry run is not) as done by `actor` through `via`,
    even when nothing was failed: "requeue" with the selected ids, or
    "requeue_all" with `created_since`.
    """
    queryset = Message.objects.all() if created_since is None else Message.objects.filter(created_at__gte=created_since)
    if message_ids is not None:
        message_ids = list(message_ids)
    if dry_run:
        if message_ids is not None:
            queryset = queryset.filter(pk__in=message_ids)
        return queryset.filter(status=Status.FAILED).count()
    if message_ids is not None:
        action = Action.REQUEUE
        detail: dict[str, Any] = {"message_ids": message_ids[:REQUEUE_RECORDED_IDS], "selected": len(message_ids)}
    else:
        action = Action.REQUEUE_ALL
        detail = {"created_since": created_since.isoformat() if created_since else None}
    with transaction.atomic():
        changed = messages_transition(
            queryset=queryset, message_ids=message_ids, from_status=Status.FAILED, **_REQUEUED
        )
        control_action_record(action=action, actor=actor, via=via, detail={**detail, "count": changed})
    logger.info(
        "requeued %d failed messages%s", changed, f" created since {created_since.isoformat()}" if created_since else ""
    )
    return changed


# --- Import from CSV ----------------------------------------------------------------

MESSAGE_IMPORT_REQUIRED_COLUMNS = ("recipient_phone_number", "content")
MESSAGE_IMPORT_OPTIONAL_COLUMNS = ("send_after",)


@dataclass(frozen=True)
class MessageImportRow:
    line: int  # where the row starts in its file; the header is line 1
    recipient_phone_number: str
    content: str
    send_after: str = ""


@dataclass(frozen=True)
class MessageImportRejection:
    line: int
    reason: str


@dataclass
class MessageImportResult:
    imported: int = 0  # in a dry run: how many would have been
    rejected: int = 0


def _import_lines(stream: BinaryIO) -> Iterator[str]:
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


def messages_import_csv_rows(*, stream: BinaryIO) -> Iterator[MessageImportRow]:
    """The data rows of a CSV file with a header line, with their line numbers.

    Columns are found by name in the header; extra columns are ignored, blank lines
    (and rows of empty cells) skipped. Raise MessageImportError if the file is not
    UTF-8, is malformed CSV or lacks a required column.
    """
    # strict: a quote left open would otherwise swallow every later line into one
    # field, so the rows after it could not be told apart.
    reader = csv.reader(_import_lines(stream), strict=True)
    last_line = 0
    try:
        header = next(reader, None)
        if header is None:
            raise MessageImportError(f"the file is empty; expected a header line with {_import_columns_text()}.")
        names = [name.strip().lower() for name in header]
        missing = [name for name in MESSAGE_IMPORT_REQUIRED_COLUMNS if name not in names]
        if missing:
            raise MessageImportError(
                f"the header line lacks {', '.join(missing)}; expected {_import_columns_text()} "
                f"(found: {', '.join(name for name in names if name) or 'nothing'})."
            )
        # The first column of a name wins, should a file repeat one.
        positions = {
            name: names.index(name)
            for name in MESSAGE_IMPORT_REQUIRED_COLUMNS + MESSAGE_IMPORT_OPTIONAL_COLUMNS
            if name in names
        }
        last_line = reader.line_num
        for cells in reader:
            # A quoted field may span lines: a row starts just after the previous one ended.
            line, last_line = last_line + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            yield MessageImportRow(
                line=line, **{name: cells[pos] if pos < len(cells) else "" for name, pos in positions.items()}
            )
    except csv.Error as exc:
        raise MessageImportError(f"the row starting on line {last_line + 1} is not valid CSV: {exc}.") from None


def _import_columns_text() -> str:
    required = ", ".join(MESSAGE_IMPORT_REQUIRED_COLUMNS)
    return f"{required} (and optionally {', '.join(MESSAGE_IMPORT_OPTIONAL_COLUMNS)})"


def _message_from_import_row(row: MessageImportRow) -> Message:
    """The unsaved message a row asks for, validated as the API validates one;
    raise ValidationError with every problem of the row."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    checks: list[tuple[str, Callable[[str], Any]]] = [
        ("recipient_phone_number", normalize_phone_number),
        ("content", validate_content),
    ]
    if row.send_after.strip():
        checks.append(("send_after", parse_aware_datetime))
    for field, check in checks:
        try:
            values[field] = check(getattr(row, field))
        except ValidationError as exc:
            problems.append(f"{field}: {' '.join(exc.messages)}")
    if problems:
        raise ValidationError("; ".join(problems))
    send_after = values.get("send_after")
    return Message(
        recipient_phone_number=values["recipient_phone_number"],
        content=values["content"],
        send_after=send_after,
        next_attempt_at=send_after,
    )


def messages_import_rows(
    *,
    rows: Iterable[MessageImportRow],
    batch_size: int = 1000,
    dry_run: bool = False,
    on_rejected: Callable[[MessageImportRejection], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> MessageImportResult:
    """Queue the valid rows as unsent messages, `batch_size` rows at a time, each
    batch stored in one transaction; a dry run stores nothing.

    An invalid row never stops the import: it goes to `on_rejected` with its line
    and reason. `on_progress` gets the number of rows done after each batch.
    Rows are consumed as they come, so a file of any size takes bounded memory.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    result = MessageImportResult()
    pending = iter(rows)
    while batch := list(itertools.islice(pending, batch_size)):
        messages: list[Message] = []
        for row in batch:
            try:
                messages.append(_message_from_import_row(row))
            except ValidationError as exc:
                result.rejected += 1
                if on_rejected is not None:
                    on_rejected(MessageImportRejection(line=row.line, reason=exc.messages[0]))
        if messages and not dry_run:
            with transaction.atomic():
                Message.objects.bulk_create(messages)
        result.imported += len(messages)
        if on_progress is not None:
            on_progress(len(batch))
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
) -> MessageImportResult:
    """Import a CSV file (see messages_import_csv_rows and messages_import_rows) from
    a seekable binary `stream`.

    The file is read to its end once before any row is stored, so that one which
    turns out half-way not to be UTF-8 or not CSV raises MessageImportError having
    stored nothing; that pass also counts the rows, given to `on_checked`. Reading
    twice costs little next to the inserts, and keeps memory bounded either way.
    """
    total = sum(1 for _ in messages_import_csv_rows(stream=stream))
    if on_checked is not None:
        on_checked(total)
    stream.seek(0)
    return messages_import_rows(
        rows=messages_import_csv_rows(stream=stream),
        batch_size=batch_size,
        dry_run=dry_run,
        on_rejected=on_rejected,
        on_progress=on_progress,
    )


# --- Prune old messages -------------------------------------------------------------

# History that is safe to drop: messages still on their way are live work.
MESSAGE_PRUNABLE_STATUSES = (Status.SENT, Status.FAILED)


def messages_prune(
    *,
    created_before: datetime,
    statuses: Iterable[str] = (Status.SENT,),
    batch_size: int = 5000,
    dry_run: bool = False,
    on_checked: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Delete the messages created before `created_before` in `statuses` (sent and/or
    failed), with their delivery attempts; return how many messages went (in a dry
    run: would go). Raise MessageStateError for a status that is not final.

    Deletes `batch_size` at a time, each batch its own short transaction, so a
    large prune neither holds locks for long nor builds one huge transaction.
    `on_checked` gets the count found at the start; `on_progress` the count
    deleted by each batch.
    """
    chosen = list(dict.fromkeys(statuses))
    live = [status for status in chosen if status not in MESSAGE_PRUNABLE_STATUSES]
    if live or not chosen:
        raise MessageStateError(
            f"Only sent and failed messages can be pruned; {', '.join(live) or 'no status'} given "
            "(unsent and processing messages are still being delivered)."
        )
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    prunable = Message.objects.filter(created_at__lt=created_before, status__in=chosen)
    total = prunable.count()
    if on_checked is not None:
        on_checked(total)
    if dry_run:
        return total
    deleted = 0
    while True:
        with transaction.atomic():
            # Lock the batch: a failed message requeued meanwhile (failed -> unsent) is
            # live again and must not be deleted as history; the requeue waits for this
            # commit and then finds nothing. Rows someone else holds are left for now.
            ids = list(
                prunable.select_for_update(skip_locked=True).order_by("pk").values_list("pk", flat=True)[:batch_size]
            )
            if not ids:
                break
            # only("pk"): the delete needs the ids, not the content of every message.
            _, per_model = Message.objects.filter(pk__in=ids).only("pk").delete()
        batch_deleted = per_model.get(Message._meta.label, 0)
        deleted += batch_deleted
        if on_progress is not None:
            on_progress(batch_deleted)
    logger.info("pruned %d %s messages created before %s", deleted, "/".join(chosen), created_before.isoformat())
    return deleted
