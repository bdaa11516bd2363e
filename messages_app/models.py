from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from messages_app import lookups  # noqa: F401 - registers `__any` on the id columns


class Message(models.Model):
    class Status(models.TextChoices):
        UNSENT = "unsent", "Unsent"
        PROCESSING = "processing", "Processing"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        EXPIRED = "expired", "Expired"
        # Never sent: its recipient opted out after it was queued (status_reason says when and how).
        SUPPRESSED = "suppressed", "Suppressed"

    class Priority(models.TextChoices):
        HIGH = "high", "High"
        NORMAL = "normal", "Normal"
        LOW = "low", "Low"

    class Category(models.TextChoices):
        # One-time codes, alerts: never held.
        TRANSACTIONAL = "transactional", "Transactional"
        # Held outside quiet hours in the recipient's local time.
        MARKETING = "marketing", "Marketing"

    class Delivery(models.TextChoices):
        """What the provider's receipt said happened after it accepted the message."""

        UNKNOWN = "", "No receipt yet"
        DELIVERED = "delivered", "Delivered"
        UNDELIVERED = "undelivered", "Undelivered"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # Stored in E.164 (at most 15 digits plus the leading "+").
    recipient_phone_number = models.CharField(max_length=16)
    content = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UNSENT)
    created_at = models.DateTimeField(auto_now_add=True)
    # Not claimed before this moment (optional, set by the client).
    send_after = models.DateTimeField(null=True, blank=True)
    # When the message is next due: creation (or send_after), then each retry's
    # backoff. Set whenever a message is unsent, so the claim's index can skip
    # what is not due yet; cleared once nothing more is due (sent or failed).
    next_attempt_at = models.DateTimeField(null=True, blank=True, default=timezone.now)
    # Never sent after this moment (optional): a one-time code an hour late is worse than none.
    expires_at = models.DateTimeField(null=True, blank=True)
    # db_default too: rows written around the ORM (COPY, raw SQL) get them as well.
    priority = models.CharField(
        max_length=8, choices=Priority.choices, default=Priority.NORMAL, db_default=Priority.NORMAL
    )
    # SMS segments the content takes (GSM-7 or UCS-2), computed when it is queued.
    segments = models.PositiveSmallIntegerField(default=1, db_default=1)
    claimed_at = models.DateTimeField(null=True, blank=True)
    # Who holds the message while it is `processing`, and until when. Writes of
    # the outcome must match the token, so a worker whose lease ran out (and
    # whose message was handed to another) cannot overwrite the newer state.
    claim_token = models.UUIDField(null=True, blank=True, editable=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # When a worker began sending it under the current claim; a lease that runs
    # out before this was never tried, and costs the message no attempt.
    sending_started_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    # The provider that took the message, or that may have (an answer was lost):
    # from then on only it is asked, with the same Idempotency-Key, never another.
    provider = models.CharField(max_length=32, blank=True, default="", db_default="")
    provider_message_id = models.CharField(max_length=255, blank=True, default="")
    # Sent, but its messages:<messageId> record is not in Redis yet (Redis was down).
    delivery_cache_pending = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    # From the provider's delivery receipt; the dispatch status stays `sent`.
    delivery_status = models.CharField(max_length=16, choices=Delivery.choices, blank=True, default="", db_default="")
    delivery_error_code = models.CharField(max_length=64, blank=True, default="", db_default="")
    delivery_status_at = models.DateTimeField(null=True, blank=True)
    category = models.CharField(
        max_length=16, choices=Category.choices, default=Category.TRANSACTIONAL, db_default=Category.TRANSACTIONAL
    )
    # Why it is not sent: suppressed (its recipient opted out), or held for now (quiet hours).
    status_reason = models.CharField(max_length=200, blank=True, default="", db_default="")
    # Made from a template (the message_templates app): which one, its version and language,
    # and the personalisation it was filled with, kept with the message (and pruned with it:
    # they are its columns, not rows elsewhere). Plain values, no foreign key: messages_app
    # sits below that app, and a message outlives any later edit of its template.
    template_id = models.PositiveBigIntegerField(null=True, blank=True)
    template_version = models.PositiveIntegerField(null=True, blank=True)
    template_language = models.CharField(max_length=16, blank=True, default="", db_default="")
    personalisation = models.JSONField(null=True, blank=True)
    # The client's own: its reference for the message, echoed in every status callback, and
    # the URL (on a registered callback endpoint's origin) its callbacks go to instead.
    client_reference = models.CharField(max_length=255, blank=True, default="", db_default="")
    callback_url = models.CharField(max_length=2000, blank=True, default="", db_default="")
    # Who queued it through the API: a callback endpoint with an owner gets only its owner's
    # messages. A plain value (no constraint, no index): deleting a user never scans messages.
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The claim reads the unsent rows that are due, earliest first; a partial
            # index on the due time keeps that lookup proportional to what is due,
            # not to the history or to messages scheduled for later.
            # One range per priority (the claim reads each level on its own).
            models.Index(
                fields=["priority", "next_attempt_at", "id"],
                name="message_due_queue",
                condition=Q(status="unsent"),
            ),
            # Expiring unsent messages finds the few that carry an expiry.
            models.Index(
                fields=["expires_at"],
                name="message_unsent_expiry",
                condition=Q(status="unsent", expires_at__isnull=False),
            ),
            # Receipts find their message by the provider's id.
            models.Index(fields=["provider_message_id"], name="message_provider_id"),
            # The sent list pages backwards through sending time.
            models.Index(
                fields=["-sent_at", "-id"],
                name="message_sent_recent",
                condition=Q(status="sent"),
            ),
            # Every tick looks for expired leases among the few processing rows.
            models.Index(
                fields=["lease_expires_at"],
                name="message_processing_lease",
                condition=Q(status="processing"),
            ),
            models.Index(
                fields=["id"],
                name="message_cache_pending",
                condition=Q(delivery_cache_pending=True),
            ),
            models.Index(fields=["status", "-id"], name="message_status_recent"),
            # Retention (and prune_messages) deletes the oldest final messages first: this
            # finds them, and finds at once that none is left, whatever the history.
            # Final rows only, so the sending path writes it once per message, when the
            # message ends (an update that rewrites every index entry anyway).
            models.Index(
                fields=["created_at", "id"],
                name="message_final_created",
                condition=Q(status__in=["sent", "failed", "cancelled", "expired", "suppressed"]),
            ),
            models.Index(fields=["recipient_phone_number", "-id"], name="message_recipient_recent"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(
                    status__in=["unsent", "processing", "sent", "failed", "cancelled", "expired", "suppressed"]
                ),
                name="message_status_valid",
            ),
        ]
        # Requeueing is an operator's decision, not part of editing a message: it
        # gets its own permission (checked by the API, the admin and the dashboard).
        permissions = [
            ("requeue_message", "Can requeue failed messages"),
            ("cancel_message", "Can cancel queued messages"),
        ]

    def __str__(self) -> str:
        return f"Message {self.pk} to {self.recipient_phone_number} ({self.status})"


class DeliveryAttempt(models.Model):
    """One try at handing a message to the provider, kept for the record."""

    class Outcome(models.TextChoices):
        SENT = "sent", "Sent"
        RETRY = "retry", "Will retry"
        FAILED = "failed", "Failed"
        LEASE_EXPIRED = "lease_expired", "Lease expired (worker lost)"
        RELEASED = "released", "Released unsent (worker stopping)"
        EXPIRED = "expired", "Expired (not sent after its expiry)"
        DEFERRED = "deferred", "Deferred (provider unavailable; not counted)"
        SUPPRESSED = "suppressed", "Suppressed (the recipient opted out; not sent)"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="delivery_attempts")
    provider = models.CharField(max_length=32, blank=True, default="", db_default="")
    number = models.PositiveIntegerField(help_text="1 for the first attempt.")
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    error = models.TextField(blank=True, default="")
    provider_message_id = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        ordering = ["message_id", "id"]
        indexes = [
            models.Index(fields=["message", "id"], name="attempt_message"),
            # The dashboard counts the last hour's outcomes per minute; without this
            # it would scan every attempt ever logged.
            models.Index(fields=["started_at"], name="attempt_started_at"),
        ]

    def __str__(self) -> str:
        return f"Attempt {self.number} of message {self.message_id}: {self.outcome}"


class DeliveryReceipt(models.Model):
    """A provider's delivery receipt, kept once per receipt id (a replay is ignored).

    A receipt that arrives before its message is recorded as sent (a fast
    provider) waits here unmatched and is applied when the send is recorded. It
    goes with its message (`prune_messages`); one that never matched a message is
    pruned by age.
    """

    # Unique by a constraint, not unique=True: that would add a second index on
    # PostgreSQL (varchar_pattern_ops, for LIKE) which nothing uses and every receipt
    # written would pay for.
    receipt_id = models.CharField(max_length=255)
    provider_message_id = models.CharField(max_length=255)
    status = models.CharField(max_length=16, choices=Message.Delivery.choices)
    error_code = models.CharField(max_length=64, blank=True, default="")
    occurred_at = models.DateTimeField(help_text="When the provider says it happened.")
    received_at = models.DateTimeField(auto_now_add=True)
    message = models.ForeignKey(
        Message, null=True, blank=True, on_delete=models.CASCADE, related_name="delivery_receipts"
    )

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["provider_message_id"], name="receipt_unmatched", condition=Q(message__isnull=True)),
        ]
        constraints = [models.UniqueConstraint(fields=["receipt_id"], name="receipt_id_once")]

    def __str__(self) -> str:
        return f"Receipt {self.receipt_id}: {self.provider_message_id} {self.status}"
