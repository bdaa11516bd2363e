"""Filling messages_app_message fast with PostgreSQL COPY (psycopg 3)."""

from __future__ import annotations

import json
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
# The model's defaults of NOT NULL columns, read once from Django (see _copy_extras).
_model_defaults: dict[str, object] | None = None
MODEL_DEFAULTS_SCRIPT = (
    "import json; from messages_app.models import Message;"
    "print('DEFAULTS', json.dumps({f.column: f.get_default() for f in Message._meta.concrete_fields"
    " if not f.null and f.has_default() and not callable(f.default)}))"
)


def _copy_extras(conn) -> tuple[str, str]:
    """The COPY statement and the text every row ends with, for the NOT NULL columns the
    service added since COLUMNS was written (priority, segments...): each gets the model's
    own default, so loading keeps working as the schema grows."""
    global _model_defaults
    missing = [
        name
        for (name,) in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'messages_app_message'"
            " AND is_nullable = 'NO' AND column_default IS NULL AND is_identity = 'NO' ORDER BY ordinal_position"
        ).fetchall()
        if name not in COLUMNS
    ]
    if not missing:
        return COPY_SQL, ""
    if _model_defaults is None:
        from bench.common import BenchError, manage, service_env

        out = manage(service_env(), "shell", "-c", MODEL_DEFAULTS_SCRIPT)
        try:
            _model_defaults = json.loads(out.split("DEFAULTS ", 1)[1].splitlines()[0])
        except (IndexError, ValueError):
            raise BenchError(f"could not read the Message model's defaults:\n{out}") from None
    unknown = [name for name in missing if name not in _model_defaults]
    if unknown:
        from bench.common import BenchError

        raise BenchError(f"messages_app_message has NOT NULL columns without a default: {', '.join(unknown)}")
    values = [_model_defaults[name] for name in missing]
    suffix = "".join("\t" + ("t" if v is True else "f" if v is False else str(v)) for v in values)
    return f"COPY messages_app_message ({', '.join((*COLUMNS, *missing))}) FROM STDIN", suffix


def _rows(lines: list[str], suffix: str) -> str:
    """The lines (each ending in a newline) with the extra columns' values appended."""
    return "".join(line[:-1] + suffix + "\n" for line in lines) if suffix else "".join(lines)


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
    copy_sql, suffix = _copy_extras(conn)
    with conn.cursor() as cur, cur.copy(copy_sql) as copy:
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
            copy.write(_rows(lines, suffix))
    return _rate(count, time.perf_counter() - started)


def copy_history(conn, *, sent: int, unsent: int = 0, start: datetime | None = None) -> dict:
    """`sent` messages sent in the past (distinct created_at and sent_at, 1 ms apart, oldest
    first), then `unsent` newer ones waiting in the queue."""
    prefix = _uuid_prefix()
    total = sent + unsent
    start = start or datetime.now(UTC) - timedelta(milliseconds=total + 60_000)
    started = time.perf_counter()
    copy_sql, suffix = _copy_extras(conn)
    with conn.cursor() as cur, cur.copy(copy_sql) as copy:
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
            copy.write(_rows(lines, suffix))
    return _rate(total, time.perf_counter() - started)


def copy_not_due(conn, count: int, *, due_in: timedelta = timedelta(hours=1)) -> dict:
    """`count` unsent messages waiting for a retry: created in the past (and so older, with
    lower ids, than a queue loaded after them), tried once, due again only `due_in` from now."""
    prefix = _uuid_prefix()
    now = datetime.now(UTC)
    start = now - timedelta(milliseconds=count + 60_000)
    due = (now + due_in).isoformat()
    started = time.perf_counter()
    copy_sql, suffix = _copy_extras(conn)
    with conn.cursor() as cur, cur.copy(copy_sql) as copy:
        for chunk in range(0, count, CHUNK_ROWS):
            lines = []
            for i in range(chunk, min(chunk + CHUNK_ROWS, count)):
                created = (start + timedelta(milliseconds=i)).isoformat()
                lines.append(
                    f"{prefix}{i:012x}\t{_phone(i)}\tbench message {i}\tunsent\t{created}\t{due}\t\\N\t\tf\t1\t"
                    "provider answered HTTP 503\n"
                )
            copy.write(_rows(lines, suffix))
    return _rate(count, time.perf_counter() - started)


def _rate(rows: int, seconds: float) -> dict:
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds) if seconds else None}
