"""Filling messages_app_message fast with PostgreSQL COPY (psycopg 3)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

# Every NOT NULL column without a database default (Django's `default=` is
# applied by the ORM only), plus sent_at and next_attempt_at (when an unsent
# message is due: the claim reads only due ones). The rest stay NULL; id comes from
# its identity sequence. See messages_app/migrations/000{1,2}_*.py.
COLUMNS = (
    "uuid",
    "recipient_phone_number",
    "content",
    "status",
    "created_at",
    "next_attempt_at",
    "sent_at",
    "provider_message_id",
    "delivery_cache_pending",
    "attempts",
    "last_error",
)
COPY_SQL = f"COPY messages_app_message ({', '.join(COLUMNS)}) FROM STDIN"
CHUNK_ROWS = 20_000


def _uuid_prefix() -> str:
    """The first 20 hex digits of a random UUID; rows append a 12-digit counter (unique per load)."""
    return str(uuid.uuid4())[:24]


def _phone(i: int) -> str:
    return f"+9055500{i % 100_000:05d}"  # valid Turkish mobile numbers in E.164


def copy_unsent(conn, count: int) -> dict:
    """Queue `count` unsent messages created "now" (each chunk stamped when it is written)."""
    prefix = _uuid_prefix()
    started = time.perf_counter()
    last = datetime.min.replace(tzinfo=UTC)
    with conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
        for start in range(0, count, CHUNK_ROWS):
            base = max(datetime.now(UTC), last + timedelta(microseconds=1))
            lines = []
            for i in range(start, min(start + CHUNK_ROWS, count)):
                created = base + timedelta(microseconds=i - start)
                lines.append(
                    f"{prefix}{i:012x}\t{_phone(i)}\tbench message {i}\tunsent\t{created.isoformat()}\t"
                    f"{created.isoformat()}\t\\N\t\tf\t0\t\n"
                )
            last = created
            copy.write("".join(lines))
    return _rate(count, time.perf_counter() - started)


def copy_history(conn, *, sent: int, unsent: int = 0, start: datetime | None = None) -> dict:
    """`sent` messages sent in the past (distinct created_at and sent_at, 1 ms apart, oldest
    first), then `unsent` newer ones waiting in the queue."""
    prefix = _uuid_prefix()
    total = sent + unsent
    start = start or datetime.now(UTC) - timedelta(milliseconds=total + 60_000)
    started = time.perf_counter()
    with conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
        for chunk in range(0, total, CHUNK_ROWS):
            lines = []
            for i in range(chunk, min(chunk + CHUNK_ROWS, total)):
                created = start + timedelta(milliseconds=i)
                if i < sent:
                    sent_at = (created + timedelta(milliseconds=500)).isoformat()
                    lines.append(
                        f"{prefix}{i:012x}\t{_phone(i)}\tbench message {i}\tsent\t{created.isoformat()}\t\\N\t"
                        f"{sent_at}\tbench-{prefix}{i:012x}\tf\t1\t\n"
                    )
                else:
                    lines.append(
                        f"{prefix}{i:012x}\t{_phone(i)}\tbench message {i}\tunsent\t{created.isoformat()}\t"
                        f"{created.isoformat()}\t\\N\t\tf\t0\t\n"
                    )
            copy.write("".join(lines))
    return _rate(total, time.perf_counter() - started)


def _rate(rows: int, seconds: float) -> dict:
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds) if seconds else None}
