"""Reads of consent, for the API, the admin, message creation and the dispatcher."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import TruncDate
from django.utils import timezone

from consent.models import Consent, ConsentChange, InboundMessage
from messages_app.models import Message


def consent_list() -> QuerySet[Consent]:
    return Consent.objects.all()


def consent_for_number(*, phone_number: str) -> Consent | None:
    """The record of `phone_number` (E.164), or None: nobody has opted it in or out."""
    return Consent.objects.filter(phone_number=phone_number).first()


def consent_history(*, consent_id: int) -> QuerySet[ConsentChange]:
    return ConsentChange.objects.filter(consent_id=consent_id).order_by("-changed_at", "-id")


def numbers_opted_out(*, phone_numbers: Iterable[str]) -> set[str]:
    """Which of `phone_numbers` (E.164) are opted out: one query, on the opted-out index."""
    numbers = sorted(set(phone_numbers))
    if not numbers:
        return set()
    return set(
        Consent.objects.filter(phone_number__in=numbers, status=Consent.Status.OPTED_OUT).values_list(
            "phone_number", flat=True
        )
    )


def inbound_list() -> QuerySet[InboundMessage]:
    return InboundMessage.objects.all()


def _refusal(consent: Consent) -> str:
    how = consent.get_method_display().lower()
    return f"The recipient opted out ({how}, {consent.changed_at:%Y-%m-%d %H:%M} UTC); no message may be sent to it."


def recipients_refused(*, phone_numbers: Iterable[str]) -> dict[str, str]:
    """messages_app's recipient policy (settings.MESSAGE_RECIPIENT_POLICY): the opted-out
    numbers among `phone_numbers`, each with why. One query."""
    numbers = sorted(set(phone_numbers))
    if not numbers:
        return {}
    return {
        consent.phone_number: _refusal(consent)
        for consent in Consent.objects.filter(phone_number__in=numbers, status=Consent.Status.OPTED_OUT).only(
            "phone_number", "method", "changed_at"
        )
    }


def messages_to_suppress(*, message_ids: Iterable[int]) -> dict[int, str]:
    """Which of these messages (a chunk a worker is about to send) go to a number that
    opted out, each with why: one query for the chunk. The one answer to a person's own
    keyword reply (their STOP's confirmation) is not among them."""
    ids = list(message_ids)
    if not ids:
        return {}
    opted_out = Consent.objects.filter(phone_number=OuterRef("recipient_phone_number"), status=Consent.Status.OPTED_OUT)
    rows = (
        Message.objects.filter(pk__in=ids)
        .annotate(
            opted_out_at=Subquery(opted_out.values("changed_at")[:1]),
            opted_out_by=Subquery(opted_out.values("method")[:1]),
        )
        .filter(opted_out_at__isnull=False)
        .exclude(Exists(InboundMessage.objects.filter(reply_message_id=OuterRef("pk"))))
        .values_list("pk", "opted_out_at", "opted_out_by")
    )
    return {
        pk: _refusal(Consent(method=method, changed_at=changed_at)).replace("may be", "was")
        for pk, changed_at, method in rows
    }


@dataclass(frozen=True)
class ConsentDay:
    day: date
    opted_out: int
    opted_in: int


@dataclass(frozen=True)
class ConsentSummary:
    """What the dashboard and /metrics show of consent: changes per day (UTC), the numbers
    opted out now, marketing messages held for quiet hours, replies received."""

    days: list[ConsentDay]
    opted_out_numbers: int
    held_for_quiet_hours: int
    replies_last_day: int
    keywords_last_day: int


def consent_summary(*, days: int = 7, now: datetime | None = None) -> ConsentSummary:
    now = now or timezone.now()
    first = (now - timedelta(days=days - 1)).date()
    per_day: dict[tuple[date, str], int] = {
        (row["day"], row["status"]): row["n"]
        for row in ConsentChange.objects.filter(changed_at__date__gte=first)
        .annotate(day=TruncDate("changed_at"))
        .order_by()
        .values("day", "status")
        .annotate(n=Count("id"))
    }
    replies = InboundMessage.objects.filter(received_at__gte=now - timedelta(days=1)).aggregate(
        all=Count("id"), keywords=Count("id", filter=~Q(keyword=""))
    )
    return ConsentSummary(
        days=[
            ConsentDay(
                day=first + timedelta(days=offset),
                opted_out=per_day.get((first + timedelta(days=offset), Consent.Status.OPTED_OUT), 0),
                opted_in=per_day.get((first + timedelta(days=offset), Consent.Status.OPTED_IN), 0),
            )
            for offset in range(days)
        ],
        opted_out_numbers=Consent.objects.filter(status=Consent.Status.OPTED_OUT).count(),
        held_for_quiet_hours=messages_held_for_quiet_hours(),
        replies_last_day=replies["all"],
        keywords_last_day=replies["keywords"],
    )


def messages_held_for_quiet_hours() -> int:
    """Marketing messages waiting for their recipient's window to open."""
    return (
        Message.objects.filter(
            status=Message.Status.UNSENT, category=Message.Category.MARKETING, next_attempt_at__gt=timezone.now()
        )
        .exclude(status_reason="")
        .count()
    )
