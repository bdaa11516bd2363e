"""Writes to messages: create, requeue, prune. Status changes themselves are the
state machine's (messages_app.transitions); these services decide which and record
who asked."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from audit.services import Action, Via, control_action_record
from messages_app.callback_policy import callback_url_checked
from messages_app.due_signal import messages_due_announce
from messages_app.errors import MessageStateError, RecipientRefused
from messages_app.models import DeliveryReceipt, Message
from messages_app.recipient_policy import quiet_hours_opening, recipients_refused
from messages_app.segments import sms_segments
from messages_app.transitions import message_cancel, messages_cancel, messages_requeue
from messages_app.validators import normalize_phone_number, validate_content, validate_expiry
from restapi.storable import time_in_range

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

Status = Message.Status


def message_new(
    *,
    recipient_phone_number: str,
    content: str,
    send_after: datetime | None = None,
    expires_at: datetime | None = None,
    priority: str = Message.Priority.NORMAL,
    category: str | None = None,
    template_id: int | None = None,
    template_version: int | None = None,
    template_language: str = "",
    personalisation: dict[str, Any] | None = None,
    client_reference: str = "",
    callback_url: str = "",
    created_by: AbstractBaseUser | None = None,
) -> Message:
    """An unsaved message, validated and normalised as every way of queueing one needs
    it (API, bulk, seed route, admin, CSV import); raise ValidationError otherwise.
    One made from a template has its content rendered already (messages_app.template_source)
    and records what it was made from.

    A marketing message due in its recipient's quiet hours is due at the window's
    opening instead, the reason in `status_reason`; a transactional one is never held."""
    content = validate_content(content)
    # Each entry point checks its times already, naming the field; this holds for any caller.
    send_after, expires_at = (None if moment is None else time_in_range(moment) for moment in (send_after, expires_at))
    number = normalize_phone_number(recipient_phone_number)
    category = category or settings.MESSAGE_DEFAULT_CATEGORY
    due = send_after or timezone.now()
    held = quiet_hours_opening(phone_number=number, at=due) if category == Message.Category.MARKETING else None
    return Message(
        recipient_phone_number=number,
        content=content,
        send_after=send_after,
        next_attempt_at=held[0] if held else due,
        expires_at=validate_expiry(expires_at=expires_at, send_after=send_after),
        priority=priority,
        segments=sms_segments(content),
        category=category,
        status_reason=held[1] if held else "",
        template_id=template_id,
        template_version=template_version,
        template_language=template_language,
        personalisation=personalisation,
        client_reference=client_reference,
        callback_url=callback_url_checked(callback_url),
        created_by=created_by if created_by is not None and created_by.is_authenticated else None,
    )


def message_create(*, recipient_policy_exempt: bool = False, **fields: Any) -> Message:
    """Queue one message (fields as message_new takes them); RecipientRefused if its
    recipient may not be sent messages (opted out). `recipient_policy_exempt` is for the
    one answer to a person's own keyword reply (the confirmation of their STOP)."""
    message = message_new(**fields)
    if not recipient_policy_exempt:
        refused = recipients_refused(phone_numbers=[message.recipient_phone_number])
        if refused:
            logger.info("refused a message: its recipient %s", refused[message.recipient_phone_number][:100])
            raise RecipientRefused(refused[message.recipient_phone_number])
    message.save()
    if message.next_attempt_at <= timezone.now():
        messages_due_announce(due=[(message.priority, message.next_attempt_at)])
    logger.info(
        "queued message id=%s uuid=%s%s",
        message.pk,
        message.uuid,
        f" to send after {message.send_after}" if message.send_after else "",
    )
    if message.status_reason:
        logger.info("message id=%s held: %s", message.pk, message.status_reason[:150])
    return message


def messages_bulk_checked(
    *, items: Sequence[dict[str, Any]], on_refused: Callable[[int, str, str], None] | None = None
) -> list[Message]:
    """The unsaved messages `items` ask for, less those whose recipient may not be sent
    messages (see messages_bulk_create): what a bulk would store, for its dry run too."""
    messages = [message_new(**item) for item in items]
    refused = recipients_refused(phone_numbers=[m.recipient_phone_number for m in messages])
    if refused:
        for index, message in enumerate(messages):
            reason = refused.get(message.recipient_phone_number)
            if reason is not None and on_refused is None:
                raise RecipientRefused(reason)
            if reason is not None:
                on_refused(index, message.recipient_phone_number, reason)
        messages = [m for m in messages if m.recipient_phone_number not in refused]
    return messages


def messages_bulk_create(
    *, items: Sequence[dict[str, Any]], on_refused: Callable[[int, str, str], None] | None = None
) -> list[Message]:
    """Create all messages or none. Callers validate first to report per-item errors.

    An item whose recipient may not be sent messages (opted out) is left out and given
    to `on_refused(index, number, reason)`; without it, the first such item refuses the
    lot (RecipientRefused). One question for all the recipients."""
    messages = messages_bulk_checked(items=items, on_refused=on_refused)
    with transaction.atomic():
        created = Message.objects.bulk_create(messages)
        now = timezone.now()
        due = [(m.priority, m.next_attempt_at) for m in created if m.next_attempt_at <= now]
        if due:
            messages_due_announce(due=due)
    logger.info(
        "queued %d messages in bulk (ids %s..%s)",
        len(created),
        created[0].pk if created else "-",
        created[-1].pk if created else "-",
    )
    return created


# The audit log keeps at most this many of the ids an operator selected (and how
# many there were): "select all" in the admin can pick millions.
REQUEUE_RECORDED_IDS = 1000


def message_requeue(*, message_id: int, actor: AbstractBaseUser | None = None, via: str = Via.COMMAND) -> Message:
    """Put a failed message back in the queue; raise MessageStateError otherwise.

    A requeue is recorded in the audit log as done by `actor` through `via`; a
    refused one (the message is not failed) is not, as it did nothing.
    """
    with transaction.atomic():
        changed = messages_requeue(queryset=Message.objects.filter(pk=message_id))
        if changed:
            control_action_record(
                action=Action.REQUEUE, actor=actor, via=via, detail={"message_ids": [message_id], "count": changed}
            )
    message = Message.objects.get(pk=message_id)
    if not changed:
        raise MessageStateError(f"Only failed messages can be requeued; this one is {message.status}.")
    logger.info("requeued message id=%s uuid=%s", message.pk, message.uuid)
    return message


def message_cancel_queued(*, message_id: int, actor: AbstractBaseUser | None = None, via: str = Via.COMMAND) -> Message:
    """Cancel an unsent (or scheduled) message; raise MessageStateError once it is being
    sent or done. Recorded in the audit log like a requeue."""
    with transaction.atomic():
        changed = message_cancel(message_id=message_id)
        if changed:
            control_action_record(
                action=Action.CANCEL, actor=actor, via=via, detail={"message_ids": [message_id], "count": 1}
            )
    message = Message.objects.get(pk=message_id)
    if not changed:
        raise MessageStateError(f"Only unsent or scheduled messages can be cancelled; this one is {message.status}.")
    logger.info("cancelled message id=%s uuid=%s", message.pk, message.uuid)
    return message


def messages_cancel_queued(
    *, message_ids: Iterable[int], actor: AbstractBaseUser | None = None, via: str = Via.COMMAND
) -> int:
    """Cancel the unsent messages among `message_ids`; return how many. Audited."""
    message_ids = list(message_ids)
    with transaction.atomic():
        changed = messages_cancel(queryset=Message.objects.filter(pk__in=message_ids))
        control_action_record(
            action=Action.CANCEL,
            actor=actor,
            via=via,
            detail={"message_ids": message_ids[:REQUEUE_RECORDED_IDS], "selected": len(message_ids), "count": changed},
        )
    logger.info("cancelled %d unsent messages", changed)
    return changed


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
        if message_ids is not None:
            queryset = queryset.filter(pk__in=message_ids)
        changed = messages_requeue(queryset=queryset)
        control_action_record(action=action, actor=actor, via=via, detail={**detail, "count": changed})
    logger.info(
        "requeued %d failed messages%s", changed, f" created since {created_since.isoformat()}" if created_since else ""
    )
    return changed


@dataclass(frozen=True)
class MessagesDeleted:
    deleted: int
    skipped: int  # being sent (processing): kept


def messages_delete(
    *, queryset: QuerySet[Message], actor: AbstractBaseUser | None = None, via: str = Via.COMMAND
) -> MessagesDeleted:
    """Delete the messages of `queryset` (with their attempts) except those a worker is
    sending: their outcome is about to be written.

    Recorded in the audit log like a cancel (a queued message deleted is never sent),
    with the ids that went and how many of each status. The rows are locked as they
    are read, so none is claimed between that read and the DELETE (claims skip
    locked rows): what is recorded is what went.
    """
    with transaction.atomic():
        selected = queryset.count()
        going = dict(
            queryset.exclude(status=Status.PROCESSING)
            .select_for_update(of=("self",))
            .order_by("pk")
            .values_list("pk", "status")
        )
        statuses = dict(Counter(going.values()))
        deleted = 0
        if going:
            _, per_model = Message.objects.filter(pk__any=list(going)).delete()
            deleted = per_model.get(Message._meta.label, 0)
        control_action_record(
            action=Action.DELETE,
            actor=actor,
            via=via,
            detail={
                "message_ids": list(going)[:REQUEUE_RECORDED_IDS],
                "selected": selected,
                "count": deleted,
                "statuses": statuses,
            },
        )
    if deleted:
        logger.info("deleted %d messages (%s)", deleted, ", ".join(f"{n} {status}" for status, n in statuses.items()))
    return MessagesDeleted(deleted=deleted, skipped=selected - deleted)


# --- Prune old messages -------------------------------------------------------------

# History that is safe to drop: a message in any other status is still on its way.
MESSAGE_PRUNABLE_STATUSES = (Status.SENT, Status.FAILED, Status.CANCELLED, Status.EXPIRED, Status.SUPPRESSED)


def _prunable_statuses(statuses: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(statuses))
    live = [status for status in chosen if status not in MESSAGE_PRUNABLE_STATUSES]
    if live or not chosen:
        raise MessageStateError(
            f"Only final messages ({', '.join(MESSAGE_PRUNABLE_STATUSES)}) can be pruned; "
            f"{', '.join(live) or 'no status'} given (unsent and processing messages are still being delivered)."
        )
    return chosen


def messages_prune_batch(*, created_before: datetime, statuses: Iterable[str], batch_size: int) -> Counter[str]:
    """Delete up to `batch_size` of the oldest messages (by creation time) created before
    `created_before` in the final `statuses`, with everything that belongs to them
    (delivery attempts, receipts; models of apps above that refer to a message go or
    let go as their foreign key says), in one short transaction of its own. Return the
    rows deleted per model label (`messages_app.Message` for the messages): none left
    when that is 0. The one home of deleting history: `messages_prune` (the
    `prune_messages` command) and the retention schedule (`retention.services`) call it.

    Only final rows are read and locked (`FOR UPDATE SKIP LOCKED`), so the batch never
    waits for, nor holds, a lock the sending path takes: a claim locks unsent rows, a
    worker writes processing ones. A failed message requeued meanwhile (failed ->
    unsent) is live again: the requeue waits for this commit and then finds nothing,
    or this batch skips its locked row. Deleting a batch by id leaves each row's
    dependents to their foreign key: one DELETE per dependent table for the batch.
    """
    chosen = _prunable_statuses(statuses)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    with transaction.atomic():
        ids = list(
            # Oldest first, from the index of final messages by creation time: a batch reads
            # what it deletes, however much younger history there is, and a run that finds
            # nothing left reads nothing.
            Message.objects.filter(created_at__lt=created_before, status__in=chosen)
            .select_for_update(skip_locked=True)
            .order_by("created_at", "pk")
            .values_list("pk", flat=True)[:batch_size]
        )
        if not ids:
            return Counter()
        # only("pk"): the delete needs the ids, not the content of every message.
        _, per_model = Message.objects.filter(pk__any=ids).only("pk").delete()
    return Counter({label: count for label, count in per_model.items() if count})


def messages_prune(
    *,
    created_before: datetime,
    statuses: Iterable[str] = (Status.SENT,),
    batch_size: int = 5000,
    dry_run: bool = False,
    on_checked: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Delete the messages created before `created_before` in `statuses` (final ones:
    sent by default), with their delivery attempts and receipts, and the receipts
    received before then that never matched a message; return how many messages went
    (in a dry run: would go). Raise MessageStateError for a status that is not final.

    Deletes `batch_size` at a time (`messages_prune_batch`), each batch its own short
    transaction, so a large prune neither holds locks for long nor builds one huge
    transaction. `on_checked` gets the count found at the start; `on_progress` the
    count deleted by each batch.
    """
    chosen = _prunable_statuses(statuses)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    total = Message.objects.filter(created_at__lt=created_before, status__in=chosen).count()
    if on_checked is not None:
        on_checked(total)
    if dry_run:
        return total
    deleted = 0
    while batch := messages_prune_batch(created_before=created_before, statuses=chosen, batch_size=batch_size):
        batch_deleted = batch[Message._meta.label]
        deleted += batch_deleted
        if on_progress is not None:
            on_progress(batch_deleted)
    unmatched = receipts_unmatched_prune(received_before=created_before, batch_size=batch_size)
    logger.info(
        "pruned %d %s messages created before %s, and %d receipts that never matched a message",
        deleted,
        "/".join(chosen),
        created_before.isoformat(),
        unmatched,
    )
    return deleted


def receipts_unmatched_prune(*, received_before: datetime, batch_size: int) -> int:
    """Receipts for a messageId no sent message had (kept so a replay is known, and in
    case the send was recorded later): history once as old as the pruned messages."""
    old = DeliveryReceipt.objects.filter(message__isnull=True, received_at__lt=received_before)
    deleted = 0
    while ids := list(old.order_by("pk").values_list("pk", flat=True)[:batch_size]):
        deleted += DeliveryReceipt.objects.filter(pk__in=ids).delete()[0]
    return deleted
