from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from dispatcher.conf import BATCH_SIZE, INTERVAL_SECONDS

MAX_BATCH_SIZE = int(BATCH_SIZE.maximum)
MAX_INTERVAL_SECONDS = int(INTERVAL_SECONDS.maximum)


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
    # When that window last said it is alive (the database's clock), or when a qcluster last
    # asked for a new one. Older than dispatcher.state.WINDOW_LOST_AFTER (or None): no window
    # paces, and the next qcluster's scheduler pass starts one (dispatcher_window_revive_claim)
    # rather than leaving the pace stopped until the minute schedule's next window.
    window_seen_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Since when the cluster has not kept up with the pace: a due tick waited
    # because a whole batch from before was still being sent. None: on pace.
    behind_since = models.DateTimeField(null=True, blank=True, editable=False)
    # The pace as a budget: the claims of the last interval, [database time as Unix
    # seconds, messages claimed], oldest first. A claim takes at most batch_size minus
    # what these add up to, so no window of interval_seconds holds more than batch_size
    # claims, cluster-wide (dispatcher.state).
    recent_claims = models.JSONField(default=list, blank=True, editable=False)
    # Where the paced claims start reading each priority's due queue: {priority: ISO time}.
    # Everything below a floor was claimed (or was committed too late to be seen); the
    # claim skips the index entries those claims left dead, which a long-open transaction
    # elsewhere keeps from being cleaned up. The dispatch window sweeps below the floors
    # for late rows and lowers them (dispatcher.engine.claiming).
    claim_floors = models.JSONField(default=dict, blank=True, editable=False)
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
