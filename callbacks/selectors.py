"""Reads of endpoints and events: lists scoped to who asks, health, the oldest pending event."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Min, QuerySet
from django.utils import timezone

from callbacks.models import CallbackAttempt, CallbackEndpoint, CallbackEvent

VIEW_ALL_ENDPOINTS = "callbacks.view_callbackendpoint"


def endpoints_visible(*, user) -> QuerySet[CallbackEndpoint]:
    """Every endpoint for a user who may view them all (the model permission, as in the
    admin); a user's own otherwise."""
    endpoints = CallbackEndpoint.objects.order_by("id")
    return endpoints if user.has_perm(VIEW_ALL_ENDPOINTS) else endpoints.filter(owner=user)


def events_visible(*, user) -> QuerySet[CallbackEvent]:
    events = CallbackEvent.objects.select_related("endpoint").order_by("-id")
    return events if user.has_perm(VIEW_ALL_ENDPOINTS) else events.filter(endpoint__owner=user)


def event_attempts(*, event: CallbackEvent) -> QuerySet[CallbackAttempt]:
    return CallbackAttempt.objects.filter(event=event).order_by("id")


@dataclass(frozen=True)
class CallbackSummary:
    endpoints: int
    disabled: list[CallbackEndpoint]
    failing: list[CallbackEndpoint]
    pending: int
    oldest_pending_at: datetime | None

    @property
    def oldest_pending_seconds(self) -> float:
        if self.oldest_pending_at is None:
            return 0.0
        return max(0.0, (timezone.now() - self.oldest_pending_at).total_seconds())


def callback_summary() -> CallbackSummary:
    """For the dashboard and /metrics: endpoints disabled or failing, events waiting."""
    endpoints = list(CallbackEndpoint.objects.order_by("id"))
    pending = CallbackEvent.objects.filter(state=CallbackEvent.State.PENDING, endpoint__enabled=True)
    oldest = pending.aggregate(oldest=Min("created_at"))["oldest"]
    return CallbackSummary(
        endpoints=len(endpoints),
        disabled=[e for e in endpoints if not e.enabled],
        failing=[e for e in endpoints if e.enabled and e.failures_in_row],
        pending=pending.count(),
        oldest_pending_at=oldest,
    )
