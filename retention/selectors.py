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
    # How long the oldest transaction on the database has been open (None: none is), and its
    # state: while it stays open, vacuum keeps every row version the queue leaves dead
    # after it began, and the claim's index scan walks them (docs/RELIABILITY.md).
    oldest_transaction_seconds: float | None
    oldest_transaction_state: str

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


def oldest_transaction() -> tuple[float | None, str]:
    """(seconds, state) of the oldest open transaction that holds back vacuum on this
    database (one with a snapshot or a transaction id), this session's own left out."""
    with connection.cursor() as cursor:
        # Statistics views are read once per transaction: a second read in one would repeat the first.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT greatest(extract(epoch FROM clock_timestamp() - xact_start), 0), state FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
            " AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL) ORDER BY xact_start LIMIT 1"
        )
        row = cursor.fetchone()
    return (float(row[0]), row[1] or "") if row else (None, "")


def retention_summary() -> RetentionSummary:
    rows, size = message_table_size()
    oldest_seconds, oldest_state = oldest_transaction()
    # The first message by id: ids grow with creation, and the primary key finds it at once.
    oldest = Message.objects.order_by("pk").values_list("created_at", flat=True).first()
    return RetentionSummary(
        settings=retention_settings(),
        message_rows_estimate=rows,
        message_table_bytes=size,
        oldest_message_at=oldest,
        last_run=RetentionRun.objects.order_by("-pk").first(),
        oldest_transaction_seconds=oldest_seconds,
        oldest_transaction_state=oldest_state,
    )
