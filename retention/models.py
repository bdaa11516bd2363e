from __future__ import annotations

from django.db import models


class RetentionRun(models.Model):
    """One run of the retention schedule: when, and what it deleted (shown on the dashboard)."""

    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    # Messages deleted per status, e.g. {"sent": 12000, "failed": 40}.
    messages_deleted = models.JSONField(default=dict)
    # What went with them and beside them, by what it is, e.g. {"delivery attempts": 12040}.
    others_deleted = models.JSONField(default=dict)
    # False when the run stopped at MESSAGE_RETENTION_RUN_SECONDS with more to delete:
    # the next run continues.
    complete = models.BooleanField(default=True)

    class Meta:
        ordering = ["-id"]
        default_permissions = ("view",)

    def __str__(self) -> str:
        return f"Retention run {self.pk} at {self.started_at:%Y-%m-%d %H:%M}"

    @property
    def messages_total(self) -> int:
        return sum(self.messages_deleted.values())
