from __future__ import annotations

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

MAX_BATCH_SIZE = 10_000
MAX_INTERVAL_SECONDS = 86_400


class DispatcherState(models.Model):
    """The one cluster-wide switch and pace of the dispatcher (always pk=1).

    Every web and worker process reads it from the database, so start/stop
    applies to all of them and survives restarts.
    """

    SINGLETON_PK = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=SINGLETON_PK, editable=False)
    running = models.BooleanField(default=True)
    batch_size = models.PositiveIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(MAX_BATCH_SIZE)],
        help_text="How many messages one tick claims and sends.",
    )
    interval_seconds = models.PositiveIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(MAX_INTERVAL_SECONDS)],
        help_text="Seconds between the starts of two ticks.",
    )
    last_tick_at = models.DateTimeField(null=True, blank=True)
    next_tick_at = models.DateTimeField(null=True, blank=True)
    # The dispatch window that currently paces ticks; an older window that sees
    # a newer id here hands over and ends, so windows do not pile up.
    window_id = models.UUIDField(null=True, blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "dispatcher"
        verbose_name_plural = "dispatcher"
        constraints = [
            models.CheckConstraint(condition=models.Q(id=1), name="dispatcher_state_singleton"),
            models.CheckConstraint(
                condition=models.Q(batch_size__gte=1, batch_size__lte=MAX_BATCH_SIZE),
                name="dispatcher_batch_size_range",
            ),
            models.CheckConstraint(
                condition=models.Q(interval_seconds__gte=1, interval_seconds__lte=MAX_INTERVAL_SECONDS),
                name="dispatcher_interval_range",
            ),
        ]
        # Controlling the dispatcher is its own permission, separate from the model's
        # change permission, so it can be granted to operators who are not staff.
        permissions = [("control_dispatcher", "Can start, stop and pace the dispatcher")]

    def __str__(self) -> str:
        return "Dispatcher (running)" if self.running else "Dispatcher (stopped)"


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

    class Via(models.TextChoices):
        API = "api", "REST API"
        SEED_API = "seed-api", "Seed-compatible API"
        ADMIN = "admin", "Admin"
        COMMAND = "command", "manage.py"

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
        ordering = ["-created_at", "-id"]
        # Only viewing makes sense for a log: no add/change/delete permission exists
        # to be granted by mistake.
        default_permissions = ("view",)
        indexes = [models.Index(fields=["-created_at", "-id"], name="control_action_recent")]

    def __str__(self) -> str:
        return f"{self.get_action_display()} by {self.actor_label} via {self.get_via_display()}"
