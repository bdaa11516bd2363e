"""Reads of messages, shared by the API, the admin and the dispatcher status."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, F, QuerySet, Sum
from django.db.models.functions import TruncMinute

from messages_app.models import DeliveryAttempt, Message


def message_list() -> QuerySet[Message]:
    return Message.objects.all()


def messages_sent() -> QuerySet[Message]:
    return Message.objects.filter(status=Message.Status.SENT)


# The messages an action applies to now: the status its transition starts from
# (transitions.messages_requeue, message_cancel), which checks it again as it writes.


def messages_requeueable() -> QuerySet[Message]:
    return Message.objects.filter(status=Message.Status.FAILED)


def messages_cancellable() -> QuerySet[Message]:
    return Message.objects.filter(status=Message.Status.UNSENT)


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


@dataclass(frozen=True)
class DeliveryFunnel:
    queued: int  # unsent or being sent
    sent: int
    delivered: int
    undelivered: int
    failed: int
    expired: int
    cancelled: int
    segments_sent: int  # by the messages sent since `since`
    # Median and 95th percentile of sent -> receipt outcome, over receipts since `since`.
    latency_p50_seconds: float | None
    latency_p95_seconds: float | None


def delivery_funnel(*, since: datetime) -> DeliveryFunnel:
    counts = message_status_counts()
    sent = Message.objects.filter(status=Message.Status.SENT)
    deliveries = dict(
        sent.exclude(delivery_status="").order_by().values_list("delivery_status").annotate(n=Count("id"))
    )
    segments = sent.filter(sent_at__gte=since).aggregate(total=Sum("segments"))["total"] or 0
    latencies = sorted(
        (status_at - sent_at).total_seconds()
        for sent_at, status_at in sent.filter(delivery_status_at__gte=since)
        .values_list("sent_at", "delivery_status_at")
        .order_by("-delivery_status_at")[:10_000]
        if sent_at is not None
    )

    def percentile(p: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1) if latencies else None

    return DeliveryFunnel(
        queued=counts["unsent"] + counts["processing"],
        sent=counts["sent"],
        delivered=deliveries.get(Message.Delivery.DELIVERED, 0),
        undelivered=deliveries.get(Message.Delivery.UNDELIVERED, 0),
        failed=counts["failed"],
        expired=counts["expired"],
        cancelled=counts["cancelled"],
        segments_sent=segments,
        latency_p50_seconds=percentile(0.5),
        latency_p95_seconds=percentile(0.95),
    )


def message_ids_failed(*, created_since: datetime | None = None, limit: int = 1000) -> list[int]:
    """The ids of failed messages (created at or after `created_since`), oldest first."""
    failed = Message.objects.filter(status=Message.Status.FAILED)
    if created_since is not None:
        failed = failed.filter(created_at__gte=created_since)
    return list(failed.order_by("id").values_list("id", flat=True)[:limit])
