from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q


class Message(models.Model):
    class Status(models.TextChoices):
        UNSENT = "unsent", "Unsent"
        PROCESSING = "processing", "Processing"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # Stored in E.164 (at most 15 digits plus the leading "+").
    recipient_phone_number = models.CharField(max_length=16)
    content = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UNSENT)
    created_at = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    provider_message_id = models.CharField(max_length=255, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The claim reads the oldest unsent rows; a partial index keeps that
            # lookup proportional to the queue, not to the whole history.
            models.Index(
                fields=["created_at", "id"],
                name="message_unsent_queue",
                condition=Q(status="unsent"),
            ),
            # The sent list pages backwards through sending time.
            models.Index(
                fields=["-sent_at", "-id"],
                name="message_sent_recent",
                condition=Q(status="sent"),
            ),
            models.Index(fields=["status", "-id"], name="message_status_recent"),
            models.Index(fields=["recipient_phone_number", "-id"], name="message_recipient_recent"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["unsent", "processing", "sent", "failed"]),
                name="message_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"Message {self.pk} to {self.recipient_phone_number} ({self.status})"
