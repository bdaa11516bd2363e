"""Retention settings: how long final messages (per status) and inbound replies are
kept, and how the schedule deletes what is older.

messaging_site.settings reads the environment (MESSAGE_RETENTION_*) into
settings.MESSAGE_RETENTION; everything else reads it back through
`retention_settings()`. Nothing of Django's is imported at import time: the
settings module imports this one for the names below.
"""

from __future__ import annotations

from dataclasses import dataclass

# The final statuses, each with its own MESSAGE_RETENTION_DAYS_<STATUS> (by default
# MESSAGE_RETENTION_DAYS). Unsent and processing messages are never deleted.
RETENTION_STATUSES = ("sent", "failed", "cancelled", "expired", "suppressed")
MAX_DAYS = 36_500  # a hundred years, as prune_messages allows
# One run of the schedule stops after this long (and the next continues): within the
# shortest django-q2 task timeout the settings allow (35 s, dispatcher.conf.task_timeouts).
MAX_RUN_SECONDS = 30
# django-q2 starts a run this often (dispatcher.schedule installs the schedule).
SCHEDULE_MINUTES = 10


@dataclass(frozen=True)
class RetentionSettings:
    # Days each final status is kept; 0: kept for good.
    days_by_status: dict[str, int]
    # Days inbound replies are kept (their reply messages gone or final); 0: kept for good.
    inbound_days: int
    # Messages deleted per transaction.
    batch_size: int
    # How long one run deletes before it leaves the rest to the next.
    run_seconds: int

    @property
    def enabled(self) -> bool:
        return any(self.days_by_status.values()) or self.inbound_days > 0


def retention_settings() -> RetentionSettings:
    from django.conf import settings

    raw = settings.MESSAGE_RETENTION
    return RetentionSettings(
        days_by_status={status: raw["DAYS_BY_STATUS"].get(status, 0) for status in RETENTION_STATUSES},
        inbound_days=raw["INBOUND_DAYS"],
        batch_size=raw["BATCH_SIZE"],
        run_seconds=raw["RUN_SECONDS"],
    )
