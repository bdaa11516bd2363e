"""Writes to messages. Every status change goes through `messages_transition`,
which puts the expected current status in the UPDATE's WHERE clause so that a
concurrent change makes the loser update nothing instead of overwriting."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import F, QuerySet

from messages_app.errors import MessageStateError
from messages_app.models import Message
from messages_app.validators import normalize_phone_number, validate_content

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


def message_requeue(*, message_id: int) -> Message:
    """Put a failed message back in the queue; raise MessageStateError otherwise."""
    changed = messages_transition(message_ids=[message_id], from_status=Status.FAILED, **_REQUEUED)
    message = Message.objects.get(pk=message_id)
    if not changed:
        raise MessageStateError(f"Only failed messages can be requeued; this one is {message.status}.")
    logger.info("requeued message id=%s uuid=%s", message.pk, message.uuid)
    return message


def messages_requeue_failed(*, message_ids: Iterable[int] | None = None) -> int:
    """Requeue failed messages (all of them, or those among `message_ids`); return the count."""
    changed = messages_transition(message_ids=message_ids, from_status=Status.FAILED, **_REQUEUED)
    logger.info("requeued %d failed messages", changed)
    return changed
