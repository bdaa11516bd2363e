"""What the dashboard and /metrics show of retention: the settings, the messages
table's size and oldest message, and the last run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection

from messages_app.models import Message
from retention.conf import SCHEDULE_MINUTES, RetentionSettings, retention_settings
from retention.models import RetentionRun


@dataclass(frozen=True)
class RetentionSummary:
    settings: RetentionSettings
    # PostgreSQL's estimate (pg_class.reltuples, kept by autovacuum and ANALYZE): a count(*)
    # of a table with years of history would read all of it on every page load.
    message_rows_estimate: int
    message_table_bytes: int
    oldest_message_at: datetime | None
    last_run: RetentionRun | None

    @property
    def schedule_minutes(self) -> int:
        return SCHEDULE_MINUTES

    @property
    def kept_days(self) -> list[tuple[str, int]]:
        return list(self.settings.days_by_status.items())


def message_table_size() -> tuple[int, int]:
    """(estimated rows, bytes with indexes and TOAST) of the messages table."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT greatest(reltuples, 0)::bigint, pg_total_relation_size(oid) FROM pg_class WHERE oid = %s::regclass",
            [Message._meta.db_table],
        )
        rows, size = cursor.fetchone()
    return int(rows), int(size)


def retention_summary() -> RetentionSummary:
    rows, size = message_table_size()
    # The first message by id: ids grow with creation, and the primary key finds it at once.
    oldest = Message.objects.order_by("pk").values_list("created_at", flat=True).first()
    return RetentionSummary(
        settings=retention_settings(),
        message_rows_estimate=rows,
        message_table_bytes=size,
        oldest_message_at=oldest,
        last_run=RetentionRun.objects.order_by("-pk").first(),
    )
