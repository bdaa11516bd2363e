"""Callback endpoints, the outbox of events for them, and each delivery attempt."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class EventType(models.TextChoices):
    SENT = "message.sent", "Message sent"
    FAILED = "message.failed", "Message failed"
    DELIVERED = "message.delivered", "Message delivered"
    UNDELIVERED = "message.undelivered", "Message undelivered"
    EXPIRED = "message.expired", "Message expired"
    CANCELLED = "message.cancelled", "Message cancelled"
    SUPPRESSED = "message.suppressed", "Message suppressed"
    INBOUND = "inbound.received", "Reply received"
    OPTED_OUT = "consent.opted_out", "Number opted out"
    OPTED_IN = "consent.opted_in", "Number opted in"


class CallbackEndpoint(models.Model):
    name = models.CharField(max_length=100)
    url = models.CharField(max_length=2000)
    # scheme://host[:port] of `url`: a message's own callback_url must start with it.
    origin = models.CharField(max_length=300, editable=False)
    event_types = models.JSONField(default=list, blank=True, help_text="Event types sent; empty: all of them.")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="callback_endpoints",
        help_text="If set, only events about this user's messages (and no consent or reply events).",
    )
    enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    # The signing secret is derived from CALLBACK_SECRET_KEY and this salt; never stored.
    secret_salt = models.CharField(max_length=64, editable=False)
    # After a rotation, the previous secret signs too until it expires (the overlap).
    previous_secret_salt = models.CharField(max_length=64, blank=True, default="", editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Health
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    failing_since = models.DateTimeField(null=True, blank=True)
    failures_in_row = models.PositiveIntegerField(default=0)
    last_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    # Delivery state: not tried again before retry_at (it failed), one task at a time (busy_until: its lease).
    retry_at = models.DateTimeField(null=True, blank=True, editable=False)
    busy_until = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.url})"


class CallbackEvent(models.Model):
    """One event for one endpoint: the outbox row, written in the transaction of the change."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed (given up)"

    event_id = models.CharField(max_length=40, unique=True)
    # No constraint: a process whose list of endpoints is a few seconds old may still write
    # an event for one just deleted, and that must never fail the status change it rides
    # with. Such a row is never delivered (claims join enabled endpoints); indexed by
    # callback_event_endpoint.
    endpoint = models.ForeignKey(
        CallbackEndpoint, on_delete=models.CASCADE, related_name="events", db_index=False, db_constraint=False
    )
    # The message's own callback_url (on the endpoint's origin), else empty: the endpoint's URL.
    target_url = models.CharField(max_length=2000, blank=True, default="")
    event_type = models.CharField(max_length=32, choices=EventType.choices)
    # The message: plain values (it may be pruned before its events are delivered).
    message_id = models.BigIntegerField(null=True, blank=True)
    message_uuid = models.UUIDField(null=True, blank=True)
    client_reference = models.CharField(max_length=255, blank=True, default="")
    status = models.CharField(max_length=16, blank=True, default="")
    error_code = models.CharField(max_length=64, blank=True, default="")
    detail = models.CharField(max_length=500, blank=True, default="")
    # 1, 2, 3... per message, in the order of its changes: a client ignores a lower one than it has.
    sequence = models.PositiveIntegerField(default=1)
    occurred_at = models.DateTimeField()
    data = models.JSONField(null=True, blank=True)  # what a reply or consent event says
    state = models.CharField(max_length=12, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    claim_token = models.UUIDField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField()
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(
                fields=["endpoint", "next_attempt_at", "id"], name="callback_event_due", condition=Q(state="pending")
            ),
            models.Index(fields=["message_id", "sequence"], name="callback_event_message"),
            models.Index(fields=["endpoint", "-id"], name="callback_event_endpoint"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"


class CallbackAttempt(models.Model):
    class Outcome(models.TextChoices):
        DELIVERED = "delivered", "Delivered"
        RETRY = "retry", "Will retry"
        FAILED = "failed", "Failed (not retried)"

    event = models.ForeignKey(CallbackEvent, on_delete=models.CASCADE, related_name="attempts_made")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=12, choices=Outcome.choices)
    error = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        ordering = ["event_id", "id"]
        indexes = [models.Index(fields=["started_at"], name="callback_attempt_started")]

    def __str__(self) -> str:
        return f"attempt {self.number} of event {self.event_id}: {self.outcome}"
