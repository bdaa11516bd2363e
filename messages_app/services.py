"""Writes to messages. Every status change goes through `messages_transition`,
which puts the expected current status in the UPDATE's WHERE clause so that a
concurrent change makes the loser update nothing instead of overwriting."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from django.db import transaction
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
