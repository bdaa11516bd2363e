"""Reads of messages, shared by the API, the admin and the dispatcher status."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Count, F, QuerySet
from django.db.models.functions import TruncMinute

from messages_app.models import DeliveryAttempt, Message


def message_list() -> QuerySet[Message]:
    return Message.objects.all()


def messages_sent() -> QuerySet[Message]:
    return Message.objects.filter(status=Message.Status.SENT)


def message_status_counts() -> dict[str, int]:
    counts = {status.value: 0 for status in Message.Status}
    for row in Message.objects.order_by().values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    return counts


def message_count(*, status: str) -> int:
    return Message.objects.filter(status=status).count()


def message_attempts(*, message_id: int) -> QuerySet[DeliveryAttempt]:
    return DeliveryAttempt.objects.filter(message_id=message_id).order_by("id")


def messages_recent_failures(*, limit: int = 10) -> QuerySet[Message]:
    """The failed messages that failed last. A message keeps `claimed_at` from the
    claim whose send failed it, so that is when it failed; failed rows never
    claimed (there are none outside tests) come last, newest first."""
    failed = Message.objects.filter(status=Message.Status.FAILED)
    return failed.order_by(F("claimed_at").desc(nulls_last=True), "-id")[:limit]


def delivery_outcomes_per_minute(*, since: datetime) -> dict[datetime, dict[str, int]]:
    """Sent and failed delivery attempts started at or after `since`, counted per
    minute: {minute: {"sent": n, "failed": m}}, only minutes that had any."""
    outcomes = [DeliveryAttempt.Outcome.SENT, DeliveryAttempt.Outcome.FAILED]
    rows = (
        DeliveryAttempt.objects.filter(started_at__gte=since, outcome__in=outcomes)
        .annotate(minute=TruncMinute("started_at"))
        .values("minute", "outcome")
        .annotate(n=Count("id"))
        .order_by("minute")
    )
    per_minute: dict[datetime, dict[str, int]] = {}
    for row in rows:
        per_minute.setdefault(row["minute"], {outcome.value: 0 for outcome in outcomes})[row["outcome"]] = row["n"]
    return per_minute
