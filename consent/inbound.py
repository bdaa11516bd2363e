"""Replies people send back: stored once per id, and a keyword among them acted on.

`inbound_receive` is what every way a reply arrives calls (the Standard Webhooks
callback, Twilio's inbound webhook), with callbacks already trusted by their
signature. In one transaction it stores the reply (a replayed id stores nothing
and does nothing more), changes the number's consent for STOP or START, and
queues the one confirmation (or HELP answer) through the normal pipeline. So a
replay, or a retry of a callback whose answer was lost, never sends a second one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import Via
from consent.conf import consent_settings
from consent.events import consent_events
from consent.keywords import OPT_IN, OPT_OUT, keyword_match
from consent.models import Consent, InboundMessage
from consent.services import consent_set
from messages_app.models import Message
from messages_app.services import message_create
from messages_app.validators import normalize_phone_number

logger = logging.getLogger(__name__)

KEYWORD_STATUS = {OPT_OUT: Consent.Status.OPTED_OUT, OPT_IN: Consent.Status.OPTED_IN}


@dataclass(frozen=True)
class InboundIn:
    """A reply as a provider reported it (checked by the caller: types and lengths)."""

    inbound_id: str
    provider: str
    from_number: str
    to_number: str = ""
    text: str = ""
    provider_message_id: str = ""
    received_at: datetime | None = None


@dataclass(frozen=True)
class InboundResult:
    outcome: str  # "stored" or "replayed"
    inbound_message_id: int | None = None
    keyword: str = ""  # what it was: opt_out, opt_in, help or "" (an ordinary reply)
    reply_message_id: int | None = None


def inbound_receive_many(*, replies: Sequence[InboundIn]) -> list[InboundResult]:
    """Receive a provider's batch: all of it, in one transaction, or (on an error) none.

    Its replies are stored in one statement, and only the keywords among them (a few in
    a hundred) are acted on one by one. Should another request store one of the same ids
    meanwhile, the batch is taken again a reply at a time, each replay known as such."""
    with transaction.atomic():
        try:
            with transaction.atomic():  # a savepoint: the batch's insert alone is undone
                return _receive_together(replies)
        except IntegrityError:
            return [inbound_receive(reply=reply) for reply in replies]


def _receive_together(replies: Sequence[InboundIn]) -> list[InboundResult]:
    ids = [reply.inbound_id for reply in replies]
    seen = set(InboundMessage.objects.filter(inbound_id__in=ids).values_list("inbound_id", flat=True))
    new: dict[str, InboundMessage] = {}
    for reply in replies:
        if reply.inbound_id not in seen and reply.inbound_id not in new:
            new[reply.inbound_id] = _inbound_row(reply)
    InboundMessage.objects.bulk_create(new.values())  # PostgreSQL returns their ids
    results, ordinary, taken = [], [], set()
    for reply in replies:
        inbound = new.get(reply.inbound_id)
        if inbound is None or reply.inbound_id in taken:
            results.append(InboundResult(outcome="replayed"))
            continue
        taken.add(reply.inbound_id)
        result = _act_on_keyword(inbound, reply)
        if not result.keyword:
            ordinary.append(inbound.pk)
        results.append(result)
    ordinary_ids = set(ordinary)
    _replies_announce([new[i] for i in taken if new[i].pk in ordinary_ids])
    logger.info(
        "inbound batch: %d stored (%d ordinary replies, ids %s..%s), %d replays ignored",
        len(new),
        len(ordinary),
        min(ordinary, default="-"),
        max(ordinary, default="-"),
        len(replies) - len(new),
    )
    return results


def _replies_announce(replies: list[InboundMessage]) -> None:
    """Ordinary replies just stored (a keyword's is told as the consent change it made)."""
    if replies and consent_events.wanted("inbound"):
        consent_events.announce(
            kind="inbound",
            subject={
                "items": [
                    {
                        "inbound_id": r.pk,
                        "from_number": r.from_number,
                        "to_number": r.to_number,
                        "text": r.text,
                        "received_at": r.received_at.isoformat(),
                        "provider": r.provider,
                    }
                    for r in replies
                ]
            },
        )


def _inbound_row(reply: InboundIn) -> InboundMessage:
    return InboundMessage(
        inbound_id=reply.inbound_id,
        provider=reply.provider,
        provider_message_id=reply.provider_message_id,
        from_number=_number_or_as_sent(reply.from_number),
        to_number=reply.to_number,
        text=reply.text,
        received_at=reply.received_at or timezone.now(),
    )


def inbound_receive(*, reply: InboundIn) -> InboundResult:
    with transaction.atomic():
        try:
            # A savepoint: a replayed id fails only this insert, not a batch around it.
            with transaction.atomic():
                inbound = _inbound_row(reply)
                inbound.save(force_insert=True)
        except IntegrityError:
            logger.info("inbound %s from %s: a replay, ignored", reply.inbound_id[:80], reply.provider)
            return InboundResult(outcome="replayed")
        result = _act_on_keyword(inbound, reply)
        if not result.keyword:
            _replies_announce([inbound])
    if not result.keyword:
        logger.info("inbound id=%s from %s: an ordinary reply", inbound.pk, reply.provider)
    return result


def _act_on_keyword(inbound: InboundMessage, reply: InboundIn) -> InboundResult:
    """A stored reply that is a keyword: its number's consent changed (STOP, START) and its
    one answer queued. Any other reply is kept as it is."""
    match = keyword_match(reply.text, rules=consent_settings().rules)
    if match is None or not inbound.from_number.startswith("+"):
        # An ordinary reply (or from a sender that is no phone number): kept, nothing else.
        return InboundResult(outcome="stored", inbound_message_id=inbound.pk)
    # In the transaction that stored the reply (both callers): a replay finds it, and does nothing.
    inbound.keyword = match.kind
    if match.kind in KEYWORD_STATUS:
        consent_set(
            phone_number=inbound.from_number,
            status=KEYWORD_STATUS[match.kind],
            method=Consent.Method.KEYWORD,
            via=Via.INBOUND,
            note=f"replied {match.keyword}",
            inbound_message=inbound,
        )
    reply_message = message_create(
        recipient_phone_number=inbound.from_number,
        content=consent_settings().reply_for(kind=match.kind, language=match.language),
        # The one message an opted-out number still gets: the confirmation of its own STOP.
        recipient_policy_exempt=True,
    )
    inbound.reply_message = reply_message
    inbound.save(update_fields=["keyword", "reply_message"])
    logger.info(
        "inbound id=%s: %s keyword %s; reply queued as message id=%s",
        inbound.pk,
        match.kind,
        match.keyword,
        reply_message.pk,
    )
    return InboundResult(
        outcome="stored", inbound_message_id=inbound.pk, keyword=match.kind, reply_message_id=reply_message.pk
    )


def _number_or_as_sent(value: str) -> str:
    try:
        return normalize_phone_number(value)
    except ValidationError:
        return value.strip()[:32]


def inbound_prune_batch(*, received_before: datetime, batch_size: int) -> int:
    """Delete up to `batch_size` of the oldest replies received before `received_before`,
    in one short transaction; return how many went (0: none left). The retention
    schedule calls it (retention.services).

    A reply whose answer is still queued (unsent or processing) stays: that answer is the
    one message to an opted-out number the dispatcher lets through, and it is known by its
    reply. The consent records and history that name a reply keep their change and lose
    the link (their foreign key sets it to NULL). Rows are locked with SKIP LOCKED, so a
    reply being written is left for a later batch.
    """
    live = (Message.Status.UNSENT, Message.Status.PROCESSING)
    with transaction.atomic():
        ids = list(
            InboundMessage.objects.filter(received_at__lt=received_before)
            .exclude(reply_message__status__in=live)
            .select_for_update(skip_locked=True, of=("self",))
            .order_by("pk")
            .values_list("pk", flat=True)[:batch_size]
        )
        if not ids:
            return 0
        _, per_model = InboundMessage.objects.filter(pk__in=ids).delete()
    return per_model.get(InboundMessage._meta.label, 0)
