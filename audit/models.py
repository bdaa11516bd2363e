"""The audit log: who started, stopped, paced the dispatcher or requeued messages."""

from __future__ import annotations

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models


class ControlAction(models.Model):
    """The audit log: one row per control action an operator took (who, what, when, how).

    Written by the services themselves (dispatcher_start/stop/configure,
    message_requeue, messages_requeue_failed), in the transaction of the change,
    so no caller can skip it and a change that rolls back leaves no record. A call
    that succeeds is recorded even when it changed nothing (starting a running
    dispatcher is still something someone did; `detail` says it changed nothing);
    a call refused with an error (401/403, invalid input, 409) is not. Rows are
    never edited: the admin shows them read-only.
    """

    class Action(models.TextChoices):
        START = "start", "Start sending"
        STOP = "stop", "Stop sending"
        CONFIGURE = "configure", "Change the pace"
        REQUEUE = "requeue", "Requeue messages"
        REQUEUE_ALL = "requeue_all", "Requeue all failed"
        CANCEL = "cancel", "Cancel messages"
        DELETE = "delete", "Delete messages"
        CONSENT = "consent", "Change consent"
        TEMPLATE = "template", "Change a template"
        CALLBACK = "callback", "Change a callback endpoint"

    class Via(models.TextChoices):
        API = "api", "REST API"
        SEED_API = "seed-api", "Seed-compatible API"
        ADMIN = "admin", "Admin"
        COMMAND = "command", "manage.py"
        # A person's reply (STOP) or a provider's report of an opt-out: no user acted.
        INBOUND = "inbound", "Reply or provider report"
        # What a worker decided by itself (a callback endpoint failing for too long, disabled).
        WORKER = "worker", "Worker (automatic)"

    created_at = models.DateTimeField(auto_now_add=True)
    # Kept when the user is deleted: the record outlives the account, and
    # actor_label still says who it was.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(
        max_length=200, help_text="The username at the time, or manage.py and the OS user for a command."
    )
    action = models.CharField(max_length=16, choices=Action.choices)
    via = models.CharField(max_length=16, choices=Via.choices)
    detail = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)

    class Meta:
        # The table keeps the name it had when the log lived in the dispatcher app
        # (moved by a state-only migration, so existing rows stay where they are).
        db_table = "dispatcher_controlaction"
        ordering = ["-created_at", "-id"]
        # Only viewing makes sense for a log: no add/change/delete permission exists
        # to be granted by mistake.
        default_permissions = ("view",)
        indexes = [models.Index(fields=["-created_at", "-id"], name="control_action_recent")]

    def __str__(self) -> str:
        return f"{self.get_action_display()} by {self.actor_label} via {self.get_via_display()}"
