"""Reads of messages, shared by the API, the admin and the dispatcher status."""

from __future__ import annotations

from django.db.models import Count, QuerySet

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


def message_attempts(*, message_id: int) -> QuerySet[DeliveryAttempt]:
    return DeliveryAttempt.objects.filter(message_id=message_id).order_by("id")
