"""Writes of consent: one number's change (API, admin, a keyword reply, a provider's
report) or a list's (CSV import). Each change is the record's new state, a history
row and an audit entry, in one transaction."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from audit.services import Action, Via, control_action_record
from consent.events import consent_changes_announce
from consent.models import Consent, ConsentChange, InboundMessage
from consent.recent_opt_outs import recent_opt_outs_add
from messages_app.models import Message
from messages_app.transitions import messages_suppress_unsent
from messages_app.validators import normalize_phone_number

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

Status = Consent.Status
Method = Consent.Method
# The audit log keeps at most this many of the numbers one import changed (and how many).
AUDIT_RECORDED_NUMBERS = 1000


@dataclass(frozen=True)
class ConsentChangeResult:
    consent: Consent
    changed: bool  # False: the number already had that status, and nothing was written


def consent_set(
    *,
    phone_number: str,
    status: str,
    method: str,
    via: str,
    actor: AbstractBaseUser | None = None,
    note: str = "",
    inbound_message: InboundMessage | None = None,
) -> ConsentChangeResult:
    """Give `phone_number` (any format; stored in E.164, ValidationError otherwise) the
    consent `status`. A number that already has it keeps its record as it was."""
    number = normalize_phone_number(phone_number)
    if status not in Status.values:
        raise ValueError(f"unknown consent status {status!r}")
    with transaction.atomic():
        consent, created = _locked_or_new(number)
        if not created and consent.status == status:
            return ConsentChangeResult(consent=consent, changed=False)
        audit = control_action_record(
            action=Action.CONSENT,
            actor=actor,
            via=via,
            actor_label=number if via == Via.INBOUND else "",
            detail={"phone_number": number, "status": status, "method": method, "note": note[:200]},
        )
        consent.status, consent.method, consent.changed_by = status, method, audit.actor_label
        consent.changed_at, consent.note, consent.inbound_message = audit.created_at, note, inbound_message
        consent.save()
        ConsentChange.objects.create(
            consent=consent,
            phone_number=number,
            status=status,
            method=method,
            changed_at=consent.changed_at,
            actor=audit.actor,
            changed_by=audit.actor_label,
            inbound_message=inbound_message,
            note=note,
        )
        suppressed = 0
        if status == Status.OPTED_OUT:
            # Before the commit: a send that starts once the opt-out is on record finds it.
            recent_opt_outs_add(phone_numbers=[number])
            suppressed = _suppress_queued([number])
        consent_changes_announce(numbers=[number], status=status, method=method)
    logger.info(
        "consent of %s is now %s (%s, by %s)%s",
        number,
        status,
        method,
        consent.changed_by[:100],
        f"; {suppressed} queued message(s) suppressed" if suppressed else "",
    )
    return ConsentChangeResult(consent=consent, changed=True)


def _suppress_queued(numbers: list[str]) -> int:
    """Messages waiting for these numbers (just opted out) end `suppressed` now, except the
    answers to their own keyword replies. Those already claimed are caught by the worker."""
    queued = Message.objects.filter(recipient_phone_number__in=numbers).exclude(
        Exists(InboundMessage.objects.filter(reply_message_id=OuterRef("pk")))
    )
    return messages_suppress_unsent(queryset=queued, reason="The recipient opted out after it was queued; not sent.")


def _locked_or_new(number: str) -> tuple[Consent, bool]:
    """The number's record, locked until the transaction ends, and whether it was just
    created (with a placeholder status the caller overwrites in the same transaction).
    Two changes of one number wait for each other; a first record written meanwhile by
    another transaction is found when ours fails to insert it (the savepoint)."""
    consent = Consent.objects.select_for_update().filter(phone_number=number).first()
    if consent is not None:
        return consent, False
    try:
        with transaction.atomic():
            created = Consent.objects.create(
                phone_number=number, status=Status.OPTED_IN, method=Method.API, changed_by=""
            )
            return created, True
    except IntegrityError:
        return Consent.objects.select_for_update().get(phone_number=number), False


def consents_opt_out_many(
    *,
    phone_numbers: Sequence[str],
    method: str,
    via: str,
    actor: AbstractBaseUser | None = None,
    note: str = "",
) -> int:
    """Opt out every number of `phone_numbers` (E.164, already normalised) in one
    transaction; return how many changed. One audit entry for the lot."""
    numbers = sorted(set(phone_numbers))
    if not numbers:
        return 0
    with transaction.atomic():
        now = timezone.now()
        existing = dict(
            Consent.objects.select_for_update()
            .filter(phone_number__in=numbers)
            .order_by()
            .values_list("phone_number", "status")
        )
        to_change = [n for n in numbers if existing.get(n) != Status.OPTED_OUT]
        if not to_change:
            return 0
        audit = control_action_record(
            action=Action.CONSENT,
            actor=actor,
            via=via,
            detail={
                "status": Status.OPTED_OUT,
                "method": method,
                "count": len(to_change),
                "phone_numbers": to_change[:AUDIT_RECORDED_NUMBERS],
                "note": note[:200],
            },
        )
        fields = {"status": Status.OPTED_OUT, "method": method, "changed_by": audit.actor_label, "note": note}
        Consent.objects.bulk_create(
            [Consent(phone_number=n, changed_at=now, **fields) for n in to_change if n not in existing]
        )
        Consent.objects.filter(phone_number__in=[n for n in to_change if n in existing]).update(
            changed_at=now, **fields
        )
        ids = dict(Consent.objects.filter(phone_number__in=to_change).values_list("phone_number", "pk"))
        ConsentChange.objects.bulk_create(
            ConsentChange(consent_id=ids[n], phone_number=n, changed_at=now, actor=audit.actor, **fields)
            for n in to_change
        )
        recent_opt_outs_add(phone_numbers=to_change)  # before the commit, as in consent_set
        suppressed = _suppress_queued(to_change)
        consent_changes_announce(numbers=to_change, status=Status.OPTED_OUT, method=method)
    logger.info(
        "opted out %d numbers (%s, by %s); %d queued message(s) suppressed",
        len(to_change),
        method,
        audit.actor_label[:100],
        suppressed,
    )
    return len(to_change)
