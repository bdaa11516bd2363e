"""Consent to be texted, one record per number, every change kept; and the replies
people send back (inbound messages), which is how most changes arrive."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from messages_app.models import Message


class InboundMessage(models.Model):
    """A reply a provider delivered to us, kept once per id (a replay is ignored)."""

    class Keyword(models.TextChoices):
        NONE = "", "None (an ordinary reply)"
        OPT_OUT = "opt_out", "Opt-out"
        OPT_IN = "opt_in", "Opt-in"
        HELP = "help", "Help"

    # The callback's webhook-id (or a batch item's id; "twilio:<provider>:<MessageSid>"):
    # unique by a constraint, not unique=True, which would add a LIKE index nothing reads.
    inbound_id = models.CharField(max_length=255)
    provider = models.CharField(max_length=32)
    provider_message_id = models.CharField(max_length=255, blank=True, default="")
    # E.164 when it is a phone number; as sent otherwise (a short code, an alphanumeric sender).
    from_number = models.CharField(max_length=32)
    to_number = models.CharField(max_length=32, blank=True, default="")
    text = models.TextField(blank=True, default="")
    received_at = models.DateTimeField(default=timezone.now)
    keyword = models.CharField(max_length=16, choices=Keyword.choices, blank=True, default="")
    # The confirmation (or help) reply queued for it: exactly one, and the only message
    # to an opted-out number the dispatcher lets through.
    reply_message = models.OneToOneField(
        Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="consent_reply_to"
    )

    class Meta:
        ordering = ["-id"]
        default_permissions = ("view",)
        constraints = [models.UniqueConstraint(fields=["inbound_id"], name="inbound_id_once")]
        indexes = [
            models.Index(fields=["from_number", "-id"], name="inbound_from_recent"),
            models.Index(fields=["received_at"], name="inbound_received_at"),
        ]

    def __str__(self) -> str:
        return f"Reply {self.pk} from {self.from_number}"


class Consent(models.Model):
    """Whether a number may be texted, and the latest change's when, how and who.
    No record: it may (nobody has opted out)."""

    class Status(models.TextChoices):
        OPTED_IN = "opted_in", "Opted in"
        OPTED_OUT = "opted_out", "Opted out"

    class Method(models.TextChoices):
        KEYWORD = "keyword", "Keyword reply"
        API = "api", "REST API"
        ADMIN = "admin", "Admin"
        CSV_IMPORT = "csv_import", "CSV import"
        PROVIDER_REPORT = "provider_report", "Provider report"

    phone_number = models.CharField(max_length=16, help_text="E.164.")
    status = models.CharField(max_length=16, choices=Status.choices)
    changed_at = models.DateTimeField(default=timezone.now)
    method = models.CharField(max_length=16, choices=Method.choices)
    changed_by = models.CharField(max_length=200, help_text="Who: a user, manage.py, or the number itself.")
    inbound_message = models.ForeignKey(
        InboundMessage, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    note = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        ordering = ["-changed_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["phone_number"], name="consent_one_per_number")]
        indexes = [
            # The dispatcher asks which of a chunk's numbers are opted out: the few
            # opted-out rows among them, by number.
            models.Index(fields=["phone_number"], name="consent_opted_out", condition=Q(status="opted_out")),
            models.Index(fields=["status", "-changed_at"], name="consent_status_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.phone_number}: {self.get_status_display()}"


class ConsentChange(models.Model):
    """One change of a number's consent, never edited: the proof of when it was given or revoked."""

    consent = models.ForeignKey(Consent, on_delete=models.CASCADE, related_name="history")
    phone_number = models.CharField(max_length=16)
    status = models.CharField(max_length=16, choices=Consent.Status.choices)
    method = models.CharField(max_length=16, choices=Consent.Method.choices)
    changed_at = models.DateTimeField(default=timezone.now)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    changed_by = models.CharField(max_length=200)
    inbound_message = models.ForeignKey(
        InboundMessage, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    note = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        ordering = ["-changed_at", "-id"]
        default_permissions = ("view",)
        indexes = [models.Index(fields=["changed_at"], name="consent_change_at")]

    def __str__(self) -> str:
        return f"{self.phone_number}: {self.get_status_display()} ({self.get_method_display()})"
