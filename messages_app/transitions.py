"""A message's state machine: every change of status, one function each.

    unsent ──claim──▶ processing ──mark_sent──▶ sent
                      processing ──schedule_retry──▶ unsent (due later)
                      processing ──fail──▶ failed
                      processing ──recover_expired──▶ unsent, or failed (no attempts left)
                      processing ──release_unsent──▶ unsent
    failed ──requeue──▶ unsent
    unsent ──cancel──▶ cancelled
    unsent ──expire──▶ expired (its expires_at passed; also instead of a retry or a
                                 lease recovery that would fall after it)
    sent: a delivery receipt records delivered/undelivered beside the status

Each is one UPDATE with the state it expects in its WHERE clause (status, and
for a claimed message its claim token), so a concurrent change makes the loser
change nothing instead of overwriting; each writes the attempt row that belongs
to it. No other module builds these field sets or attempt rows.

Times that decide who owns a message (claims, leases, when a retry is due) come
from the database's clock, never the worker's: a worker whose clock runs fast
must not take over the others' messages.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import DateTimeField, DurationField, ExpressionWrapper, F, QuerySet, Value
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from messages_app.events import message_events
from messages_app.models import DeliveryAttempt, DeliveryReceipt, Message

Status = Message.Status
Outcome = DeliveryAttempt.Outcome
MAX_ERROR_LENGTH = 2000
LEASE_EXPIRED_ERROR = "lease expired: the worker sending it stopped or lost its connection before recording an outcome"
RELEASED_ERROR = "released unsent: the worker was shutting down"
# The longest a message waits for its next try, whatever a provider asks, and the furthest
# ahead any time written here lies (a lease is shorter).
MAX_DELAY_SECONDS = 86_400


def _announce(kind: str, message_ids: Iterable[int]) -> None:
    """Tell the listeners (messages_app.events) which messages just took status `kind`:
    called inside the transition's transaction, once per batch."""
    ids = sorted(message_ids)
    if ids:
        message_events.announce(kind=kind, message_ids=ids)


def _atomic_if_wanted(*kinds: str):
    """A transaction around a transition that is otherwise one autocommit statement, when
    a listener wants one of `kinds` (its rows are written in the same transaction).

    Inside a caller's transaction (record_results' for messages_mark_sent) no savepoint:
    it cost two round trips per batch, and the statement alone, with nobody listening,
    has none either (a failure rolls back the caller's transaction the same way)."""
    if any(message_events.wanted(kind) for kind in kinds):
        return transaction.atomic(savepoint=False)
    return contextlib.nullcontext()


def database_now() -> datetime:
    """The database's current time: the one clock every worker agrees on.

    The time of the statement, not of the transaction (which CURRENT_TIMESTAMP
    would give), with sub-second precision on SQLite too: the same clock as
    Django's Now() in a query.
    """
    if connection.vendor == "postgresql":
        sql = "SELECT STATEMENT_TIMESTAMP()"
    else:
        sql = "SELECT STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')"
    with connection.cursor() as cursor:
        cursor.execute(sql)
        value = cursor.fetchone()[0]
    if isinstance(value, str):  # SQLite answers text in UTC
        value = datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value


def database_now_plus(seconds: float) -> ExpressionWrapper:
    """`now() + seconds` computed by the database, for use in an UPDATE; `seconds` taken
    between 0 and MAX_DELAY_SECONDS.

    Every delay becomes a time here. The callers cap theirs already; this is the last
    guard: infinity made timedelta raise OverflowError (the outcome went unwritten), and
    years ahead is a date nobody should have to wait for. NaN counts as the longest.
    """
    if not seconds <= MAX_DELAY_SECONDS:
        seconds = MAX_DELAY_SECONDS
    seconds = max(seconds, 0.0)
    return ExpressionWrapper(
        Now() + Value(timedelta(seconds=seconds), output_field=DurationField()), output_field=DateTimeField()
    )


@dataclass(frozen=True)
class AttemptRecord:
    """One call to the provider, as the attempt log keeps it."""

    message_id: int
    number: int  # 1 for the first attempt
    started_at: datetime
    duration_ms: int | None = None
    http_status: int | None = None
    error: str = ""
    provider_message_id: str = ""
    provider: str = ""

    def row(self, outcome: str) -> DeliveryAttempt:
        return DeliveryAttempt(
            message_id=self.message_id,
            provider=self.provider,
            number=self.number,
            started_at=self.started_at,
            duration_ms=self.duration_ms,
            http_status=self.http_status,
            outcome=outcome,
            error=self.error[:MAX_ERROR_LENGTH],
            provider_message_id=self.provider_message_id,
        )


def _held(message_ids: Iterable[int], claim_token: uuid.UUID) -> QuerySet[Message]:
    return Message.objects.filter(pk__any=message_ids, status=Status.PROCESSING, claim_token=claim_token)


def _lock_held(message_ids: Iterable[int], claim_token: uuid.UUID, *, not_started: bool = False) -> set[int]:
    """The ids among `message_ids` still held under `claim_token` (and, if `not_started`,
    not yet begun), locked against deletion until the transaction ends: a message deleted
    meanwhile is simply not among them, so it can never make the others' outcome writes fail."""
    held = _held(message_ids, claim_token)
    if not_started:
        held = held.filter(sending_started_at__isnull=True)
    # No ORDER BY: with it the planner walked every processing row in id order
    # instead of looking the few ids up by primary key.
    return set(held.select_for_update(no_key=True).order_by().values_list("pk", flat=True))


# --- unsent -> processing --------------------------------------------------------------


def messages_claim(
    *, message_ids: Sequence[int], claim_token: uuid.UUID, lease_seconds: float, claimed_at: datetime | None = None
) -> int:
    """Lease unsent messages to `claim_token` for `lease_seconds` (the caller holds their
    row locks). `claimed_at`, a database_now() reading, stamps a claim made in several
    statements with one time; by default the statement's own."""
    return Message.objects.filter(pk__any=message_ids, status=Status.UNSENT).update(
        status=Status.PROCESSING,
        claimed_at=claimed_at or Now(),
        claim_token=claim_token,
        lease_expires_at=(claimed_at + timedelta(seconds=lease_seconds))
        if claimed_at
        else database_now_plus(lease_seconds),
        sending_started_at=None,
    )


def messages_renew_lease(
    *, message_ids: Sequence[int], claim_token: uuid.UUID, lease_seconds: float, starting: bool = False
) -> set[int]:
    """Extend the lease of the messages still held under `claim_token`; return their ids.

    `starting` marks the moment a worker begins sending them: a message whose
    lease runs out before that was never tried, and goes back without spending
    an attempt.
    """
    with transaction.atomic():
        # Once started, a chunk is never started again under the same claim: a task
        # that django-q2 hands out twice (its broker trusts each worker's clock)
        # finds nothing to send the second time.
        held = _lock_held(message_ids, claim_token, not_started=starting)
        if held:
            fields = {"lease_expires_at": database_now_plus(lease_seconds)}
            if starting:
                fields["sending_started_at"] = Now()
            Message.objects.filter(pk__any=held).update(**fields)
    return held


# What a worker reads of a message it sends: the request, the provider it stays with,
# the attempt count, the expiry. Any other field would be loaded by a query per
# message, from inside the send (tests/dispatcher/test_sending.py checks there is none).
SENDING_FIELDS = ("id", "uuid", "recipient_phone_number", "content", "provider", "attempts", "expires_at", "category")


def messages_start_sending(
    *, message_ids: Sequence[int], claim_token: uuid.UUID, lease_seconds: float
) -> list[Message]:
    """A worker begins sending a chunk: renew the lease of the messages still held under
    `claim_token` and not yet started, mark them started (`messages_renew_lease` with
    `starting`), and return them, in any order.

    On PostgreSQL one `UPDATE ... RETURNING` does all three: this runs once per chunk
    on every worker, and the lock, update and read as three statements cost a
    worker a tenth of its CPU. A message deleted meanwhile is simply not returned.
    It returns the fields sending reads (SENDING_FIELDS), the others deferred:
    turning each row's half-dozen timestamps into datetimes cost a sending worker
    5 % of its CPU.
    """
    if connection.vendor != "postgresql":
        held = messages_renew_lease(
            message_ids=message_ids, claim_token=claim_token, lease_seconds=lease_seconds, starting=True
        )
        return list(Message.objects.filter(pk__any=held))
    table = Message._meta.db_table
    return list(
        Message.objects.raw(
            f"""
            UPDATE {table}
               SET lease_expires_at = statement_timestamp() + make_interval(secs => %s),
                   sending_started_at = statement_timestamp()
             WHERE id = ANY(%s::bigint[]) AND status = %s AND claim_token = %s AND sending_started_at IS NULL
            RETURNING {", ".join(Message._meta.get_field(name).column for name in SENDING_FIELDS)}
            """,  # noqa: S608 - the table and column names are ours; every value is a parameter
            [lease_seconds, [int(pk) for pk in message_ids], Status.PROCESSING.value, claim_token],
        )
    )


# --- processing -> sent / unsent / failed -----------------------------------------------


def messages_mark_sent(
    *, claim_token: uuid.UUID, attempts: Sequence[AttemptRecord], sent_at: datetime, delivery_cache_pending: bool
) -> set[int]:
    """processing -> sent at `sent_at` (a time on the database's clock) for the messages of
    `attempts` still held under `claim_token`, in one UPDATE, with their attempt
    rows; return the ids that moved.

    One `UPDATE ... FROM v RETURNING`: each row gets its own provider ids from v,
    the guard is in the WHERE clause, and the updated rows stay locked until the
    commit, so a message deleted meanwhile is simply not among them. (Django's
    Case/When per row cost more CPU than the sends it recorded.) On PostgreSQL the
    attempt rows are written by the same statement (`_mark_sent_postgresql`); on
    SQLite, v is a VALUES list and the rows follow in a bulk insert.
    """
    if not attempts:
        return set()
    by_id = {a.message_id: a for a in attempts}
    if connection.vendor == "postgresql":
        with _atomic_if_wanted(Status.SENT):
            held = _mark_sent_postgresql(
                by_id, claim_token=claim_token, sent_at=sent_at, delivery_cache_pending=delivery_cache_pending
            )
            _announce(Status.SENT, held)
        return held
    table = Message._meta.db_table
    rows = ", ".join(["(CAST(%s AS BIGINT), CAST(%s AS VARCHAR(255)), CAST(%s AS VARCHAR(32)))"] * len(by_id))
    values = [item for a in by_id.values() for item in (a.message_id, a.provider_message_id, a.provider)]
    field = Message._meta.get_field
    params_without_values = [
        Status.SENT,
        field("sent_at").get_db_prep_value(sent_at, connection),
        delivery_cache_pending,
        Status.PROCESSING,
        field("claim_token").get_db_prep_value(claim_token, connection),
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH v(message_id, answered_id, answered_by) AS (VALUES {rows})
            UPDATE {table}
               SET status = %s, sent_at = %s, provider_message_id = v.answered_id,
                   provider = v.answered_by, attempts = attempts + 1, last_error = '', claim_token = NULL,
                   lease_expires_at = NULL, sending_started_at = NULL, next_attempt_at = NULL,
                   delivery_cache_pending = %s
              FROM v
             WHERE id = v.message_id AND status = %s AND claim_token = %s
            RETURNING id
            """,  # noqa: S608 - the table name is ours; every value is a parameter
            [*values, *params_without_values],
        )
        held = {row[0] for row in cursor.fetchall()}
        DeliveryAttempt.objects.bulk_create(by_id[pk].row(Outcome.SENT) for pk in sorted(held))
        _announce(Status.SENT, held)
    return held


def _mark_sent_postgresql(
    by_id: dict[int, AttemptRecord], *, claim_token: uuid.UUID, sent_at: datetime, delivery_cache_pending: bool
) -> set[int]:
    """messages_mark_sent on PostgreSQL: the update and the attempt rows in one statement,
    the values passed as arrays, so its text (and psycopg's parsing of it) is the same
    whatever the number of messages. Rows not held are neither moved nor logged."""
    records = list(by_id.values())
    field = Message._meta.get_field
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH v AS (
                SELECT * FROM unnest(
                    %s::bigint[], %s::varchar[], %s::varchar[], %s::integer[], %s::timestamptz[],
                    %s::integer[], %s::integer[], %s::text[]
                ) AS v(message_id, answered_id, answered_by, number, started_at, duration_ms, http_status, error)
            ),
            moved AS (
                UPDATE {Message._meta.db_table} AS m
                   SET status = %s, sent_at = %s, provider_message_id = v.answered_id,
                       provider = v.answered_by, attempts = m.attempts + 1, last_error = '', claim_token = NULL,
                       lease_expires_at = NULL, sending_started_at = NULL, next_attempt_at = NULL,
                       delivery_cache_pending = %s
                  FROM v
                 WHERE m.id = v.message_id AND m.status = %s AND m.claim_token = %s
                RETURNING m.id
            )
            INSERT INTO {DeliveryAttempt._meta.db_table}
                   (message_id, provider, number, started_at, duration_ms, http_status, outcome, error,
                    provider_message_id)
            SELECT v.message_id, v.answered_by, v.number, v.started_at, v.duration_ms, v.http_status, %s,
                   v.error, v.answered_id
              FROM v JOIN moved ON moved.id = v.message_id
             ORDER BY v.message_id
            RETURNING message_id
            """,  # noqa: S608 - the table names are ours; every value is a parameter
            [
                [a.message_id for a in records],
                [a.provider_message_id for a in records],
                [a.provider for a in records],
                [a.number for a in records],
                [a.started_at for a in records],
                [a.duration_ms for a in records],
                [a.http_status for a in records],
                [a.error[:MAX_ERROR_LENGTH] for a in records],
                Status.SENT,
                field("sent_at").get_db_prep_value(sent_at, connection),
                delivery_cache_pending,
                Status.PROCESSING,
                field("claim_token").get_db_prep_value(claim_token, connection),
                Outcome.SENT,
            ],
        )
        return {row[0] for row in cursor.fetchall()}


def message_schedule_retry(
    *, claim_token: uuid.UUID, attempt: AttemptRecord, retry_in_seconds: float, sticky: bool = True
) -> str | None:
    """processing -> unsent, due again in `retry_in_seconds`; or -> expired if that
    would fall after the message's expiry. Return the new status, None if no
    longer held. `sticky`: the provider may have taken it (the outcome is
    unknown), so only that provider may be asked again."""
    return _back_to_queue(
        claim_token=claim_token, attempt=attempt, retry_in_seconds=retry_in_seconds, sticky=sticky, counted=True
    )


def message_defer(
    *, claim_token: uuid.UUID, attempt: AttemptRecord, retry_in_seconds: float, sticky: bool = False
) -> str | None:
    """processing -> unsent, due in `retry_in_seconds`, the attempt NOT counted: no
    provider could take the message (their circuits are open, they throttle), which
    is no fault of the message's. Expired instead if that would fall after its
    expiry. Return the new status, None if no longer held. `sticky`: the provider
    may have taken it (a timeout that opened its circuit), so only that provider
    may be asked again."""
    return _back_to_queue(
        claim_token=claim_token, attempt=attempt, retry_in_seconds=retry_in_seconds, sticky=sticky, counted=False
    )


def _back_to_queue(
    *, claim_token: uuid.UUID, attempt: AttemptRecord, retry_in_seconds: float, sticky: bool, counted: bool
) -> str | None:
    """A retry (`counted`) or a deferral: unsent and due later, or expired if later is too late."""
    with transaction.atomic():
        if not _lock_held([attempt.message_id], claim_token):
            return None
        retry_at = database_now_plus(retry_in_seconds)
        fields = {
            "last_error": attempt.error[:MAX_ERROR_LENGTH],
            "claim_token": None,
            "lease_expires_at": None,
            "sending_started_at": None,
        }
        if counted:
            fields["attempts"] = F("attempts") + 1
        if sticky and attempt.provider:
            fields["provider"] = attempt.provider
        outcome = Outcome.RETRY if counted else Outcome.DEFERRED
        if Message.objects.filter(pk=attempt.message_id, expires_at__lte=retry_at).update(
            status=Status.EXPIRED, next_attempt_at=None, **fields
        ):
            attempt.row(outcome).save()
            _announce(Status.EXPIRED, [attempt.message_id])
            return Status.EXPIRED
        Message.objects.filter(pk=attempt.message_id).update(status=Status.UNSENT, next_attempt_at=retry_at, **fields)
        attempt.row(outcome).save()
    return Status.UNSENT


def message_fail(*, claim_token: uuid.UUID, attempt: AttemptRecord) -> bool:
    """processing -> failed for good; False if no longer held."""
    with transaction.atomic():
        if not _lock_held([attempt.message_id], claim_token):
            return False
        Message.objects.filter(pk=attempt.message_id).update(
            status=Status.FAILED,
            attempts=F("attempts") + 1,
            last_error=attempt.error[:MAX_ERROR_LENGTH],
            # No retry will come: nothing is due any more.
            next_attempt_at=None,
            claim_token=None,
            lease_expires_at=None,
            sending_started_at=None,
        )
        attempt.row(Outcome.FAILED).save()
        _announce(Status.FAILED, [attempt.message_id])
    return True


def messages_release_unsent(*, claim_token: uuid.UUID, message_ids: Sequence[int]) -> set[int]:
    """processing -> unsent, due now, for messages a stopping worker will not send;
    the attempt does not count. Return the ids that moved."""
    with transaction.atomic():
        held = _lock_held(message_ids, claim_token)
        if not held:
            return held
        rows = list(Message.objects.filter(pk__in=held).values_list("pk", "attempts", "claimed_at"))
        Message.objects.filter(pk__in=held).update(
            status=Status.UNSENT,
            next_attempt_at=Now(),
            claim_token=None,
            lease_expires_at=None,
            sending_started_at=None,
        )
        DeliveryAttempt.objects.bulk_create(
            AttemptRecord(message_id=pk, number=attempts + 1, started_at=claimed_at, error=RELEASED_ERROR).row(
                Outcome.RELEASED
            )
            for pk, attempts, claimed_at in rows
        )
    return held


@dataclass(frozen=True)
class RecoveredLeases:
    requeued: list[int]  # tried, back to unsent; the lost attempt counts
    failed: list[int]  # tried, and that was the last attempt
    never_started: list[int]  # claimed but no worker began sending: back, no attempt spent
    expired: list[int]  # past their expiry: never sent now

    @property
    def count(self) -> int:
        return len(self.requeued) + len(self.failed) + len(self.never_started) + len(self.expired)


def messages_recover_expired(
    *, max_attempts: int, limit: int = 1000, expired_since: datetime | None = None
) -> RecoveredLeases:
    """Return messages whose lease ran out (their worker vanished) to the queue; with
    `expired_since`, only those whose lease ran out since then.

    A message a worker had begun sending counts the lost attempt, so one that
    kills its worker every time fails after `max_attempts` instead of looping;
    one that waited in the task queue and was never started spends nothing.
    """
    lapsed = Message.objects.filter(status=Status.PROCESSING, lease_expires_at__lt=Now())
    if expired_since is not None:
        lapsed = lapsed.filter(lease_expires_at__gte=expired_since)
    with transaction.atomic():
        expired = list(
            lapsed.select_for_update(skip_locked=True).values_list("pk", "attempts", "sending_started_at")[:limit]
        )
        if not expired:
            return RecoveredLeases([], [], [], [])
        never = [pk for pk, _, started in expired if started is None]
        tried = [(pk, attempts, started) for pk, attempts, started in expired if started is not None]
        # Whatever is back in the queue but past its expiry is never sent: expired.
        past_expiry = set(
            Message.objects.filter(pk__in=[pk for pk, _, _ in expired], expires_at__lte=Now()).values_list(
                "pk", flat=True
            )
        )
        to_failed = [pk for pk, attempts, _ in tried if attempts + 1 >= max_attempts]
        to_unsent = [pk for pk, attempts, _ in tried if attempts + 1 < max_attempts]
        released = {"claim_token": None, "lease_expires_at": None, "sending_started_at": None}
        if past_expiry:
            Message.objects.filter(pk__in=past_expiry, status=Status.PROCESSING).update(
                status=Status.EXPIRED, next_attempt_at=None, **released
            )
        if never:
            Message.objects.filter(pk__in=never, status=Status.PROCESSING).update(
                status=Status.UNSENT, next_attempt_at=Now(), **released
            )
        if to_unsent:
            Message.objects.filter(pk__in=to_unsent, status=Status.PROCESSING).update(
                status=Status.UNSENT,
                attempts=F("attempts") + 1,
                next_attempt_at=Now(),
                last_error=LEASE_EXPIRED_ERROR,
                **released,
            )
        if to_failed:
            Message.objects.filter(pk__in=to_failed, status=Status.PROCESSING).update(
                status=Status.FAILED,
                attempts=F("attempts") + 1,
                next_attempt_at=None,
                last_error=LEASE_EXPIRED_ERROR,
                **released,
            )
        DeliveryAttempt.objects.bulk_create(
            AttemptRecord(message_id=pk, number=attempts + 1, started_at=started, error=LEASE_EXPIRED_ERROR).row(
                Outcome.LEASE_EXPIRED
            )
            for pk, attempts, started in tried
        )
        _announce(Status.FAILED, [pk for pk in to_failed if pk not in past_expiry])
        _announce(Status.EXPIRED, past_expiry)
    return RecoveredLeases(
        requeued=[pk for pk in to_unsent if pk not in past_expiry],
        failed=[pk for pk in to_failed if pk not in past_expiry],
        never_started=[pk for pk in never if pk not in past_expiry],
        expired=sorted(past_expiry),
    )


# --- failed -> unsent -------------------------------------------------------------------


def messages_requeue(*, queryset: QuerySet[Message]) -> int:
    """failed -> unsent for the failed messages among `queryset`: due now, with a fresh
    budget of attempts. Return how many moved."""
    return queryset.filter(status=Status.FAILED).update(
        status=Status.UNSENT, claimed_at=None, next_attempt_at=Now(), attempts=0
    )


# --- unsent -> cancelled / expired --------------------------------------------------------


def message_cancel(*, message_id: int) -> bool:
    """unsent (scheduled or not) -> cancelled; False if it is not unsent (being sent, or done)."""
    with _atomic_if_wanted(Status.CANCELLED):
        moved = bool(
            Message.objects.filter(pk=message_id, status=Status.UNSENT).update(
                status=Status.CANCELLED, next_attempt_at=None
            )
        )
        if moved:
            _announce(Status.CANCELLED, [message_id])
    return moved


def _update_unsent_announced(*, queryset: QuerySet[Message], kind: str, **fields: Any) -> int:
    """UPDATE the unsent messages among `queryset` with `fields`; return how many moved.
    When a listener wants `kind`, the rows are locked and their ids read first, in the
    same transaction, so the listener is told exactly which moved."""
    unsent = queryset.filter(status=Status.UNSENT)
    if not message_events.wanted(kind):
        return unsent.update(**fields)
    with transaction.atomic():
        ids = list(unsent.select_for_update(no_key=True, of=("self",)).order_by().values_list("pk", flat=True))
        moved = Message.objects.filter(pk__in=ids, status=Status.UNSENT).update(**fields) if ids else 0
        _announce(kind, ids)
    return moved


def messages_cancel(*, queryset: QuerySet[Message]) -> int:
    """unsent -> cancelled for the unsent messages among `queryset`; return how many moved."""
    return _update_unsent_announced(
        queryset=queryset, kind=Status.CANCELLED, status=Status.CANCELLED, next_attempt_at=None
    )


def messages_expire(*, limit: int = 10_000) -> list[int]:
    """unsent -> expired for messages whose expiry has passed; return their ids."""
    with transaction.atomic():
        ids = list(
            Message.objects.filter(status=Status.UNSENT, expires_at__lte=Now())
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)[:limit]
        )
        if ids:
            Message.objects.filter(pk__in=ids, status=Status.UNSENT).update(status=Status.EXPIRED, next_attempt_at=None)
            _announce(Status.EXPIRED, ids)
    return ids


def messages_expire_claimed(*, claim_token: uuid.UUID, message_ids: Sequence[int]) -> set[int]:
    """processing -> expired for held messages a worker found past their expiry before
    sending them: never sent. Return the ids that moved."""
    with transaction.atomic():
        held = _lock_held(message_ids, claim_token)
        if held:
            rows = list(Message.objects.filter(pk__in=held).values_list("pk", "attempts"))
            Message.objects.filter(pk__in=held).update(
                status=Status.EXPIRED,
                next_attempt_at=None,
                claim_token=None,
                lease_expires_at=None,
                sending_started_at=None,
            )
            now = database_now()
            DeliveryAttempt.objects.bulk_create(
                AttemptRecord(
                    message_id=pk, number=attempts + 1, started_at=now, error="not sent: past its expiry"
                ).row(Outcome.EXPIRED)
                for pk, attempts in rows
            )
            _announce(Status.EXPIRED, held)
    return held


# --- unsent / processing -> suppressed (the recipient opted out) ----------------------------

MAX_REASON_LENGTH = 200


def messages_suppress_unsent(*, queryset: QuerySet[Message], reason: str) -> int:
    """unsent -> suppressed for the unsent messages among `queryset` (their recipient
    opted out while they waited); return how many moved. Never sent: nothing is due."""
    return _update_unsent_announced(
        queryset=queryset,
        kind=Status.SUPPRESSED,
        status=Status.SUPPRESSED,
        next_attempt_at=None,
        status_reason=reason[:MAX_REASON_LENGTH],
    )


def messages_suppress_claimed(*, claim_token: uuid.UUID, reasons: dict[int, str]) -> set[int]:
    """processing -> suppressed for held messages a worker found, just before sending them,
    addressed to a number that opted out (`reasons`: message id -> why). Never sent, no
    provider asked; an attempt row says so. Return the ids that moved."""
    with transaction.atomic():
        held = _lock_held(reasons, claim_token)
        if held:
            rows = list(Message.objects.filter(pk__in=held).values_list("pk", "attempts"))
            for pk, _ in rows:
                Message.objects.filter(pk=pk).update(
                    status=Status.SUPPRESSED,
                    status_reason=reasons[pk][:MAX_REASON_LENGTH],
                    next_attempt_at=None,
                    claim_token=None,
                    lease_expires_at=None,
                    sending_started_at=None,
                )
            now = database_now()
            DeliveryAttempt.objects.bulk_create(
                AttemptRecord(message_id=pk, number=attempts + 1, started_at=now, error=reasons[pk]).row(
                    Outcome.SUPPRESSED
                )
                for pk, attempts in rows
            )
            _announce(Status.SUPPRESSED, held)
    return held


# --- processing -> unsent (held for quiet hours) -------------------------------------------


def messages_hold_claimed(*, claim_token: uuid.UUID, holds: dict[int, tuple[datetime, str]]) -> set[int]:
    """processing -> unsent for held marketing messages a worker found, just before
    sending them, inside their recipient's quiet hours (`holds`: message id -> (when the
    window opens, why)): due then, the attempt not counted, no provider asked. Return
    the ids that moved."""
    with transaction.atomic():
        held = _lock_held(holds, claim_token)
        for pk in held:
            opening, reason = holds[pk]
            Message.objects.filter(pk=pk).update(
                status=Status.UNSENT,
                next_attempt_at=opening,
                status_reason=reason[:MAX_REASON_LENGTH],
                claim_token=None,
                lease_expires_at=None,
                sending_started_at=None,
            )
    return held


# --- sent: the delivery receipt -----------------------------------------------------------


def message_record_delivery(
    *, provider_message_id: str, status: str, error_code: str, occurred_at: datetime
) -> tuple[int, datetime] | None:
    """Record a receipt's outcome on the sent message with `provider_message_id`; return
    its id and sending time, or None if no sent message has that id (yet). The
    dispatch status stays `sent`; a receipt older than the one recorded does not
    overwrite it."""
    # The common case (the newest receipt for a sent message) in one statement; the
    # lookup only when nothing moved: an older receipt, or no such sent message.
    field = Message._meta.get_field
    with _atomic_if_wanted(status), connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {Message._meta.db_table}
               SET delivery_status = %s, delivery_error_code = %s, delivery_status_at = %s
             WHERE provider_message_id = %s AND status = %s
               AND (delivery_status_at IS NULL OR delivery_status_at <= %s)
            RETURNING id, sent_at
            """,  # noqa: S608 - the table name is ours; every value is a parameter
            [
                status,
                error_code,
                field("delivery_status_at").get_db_prep_value(occurred_at, connection),
                provider_message_id,
                Status.SENT,
                field("delivery_status_at").get_db_prep_value(occurred_at, connection),
            ],
        )
        row = cursor.fetchone()
        if row is not None:
            _announce(status, [row[0]])
    if row is not None:
        return row[0], _aware(row[1])
    sent = Message.objects.filter(provider_message_id=provider_message_id, status=Status.SENT).order_by()
    return next(iter(sent.values_list("pk", "sent_at")[:1]), None)


@dataclass(frozen=True)
class ReceiptIn:
    """A verified delivery receipt, as the provider reported it."""

    receipt_id: str
    provider_message_id: str
    status: str
    error_code: str
    occurred_at: datetime


@dataclass(frozen=True)
class ReceiptKept:
    """What `messages_record_receipts` did with one receipt: `kept` is False for a
    replayed receipt id (nothing changed); `message_id` and `sent_at` name the sent
    message it belongs to, None when no sent message has its messageId (yet)."""

    kept: bool
    message_id: int | None = None
    sent_at: datetime | None = None


def messages_record_receipts(receipts: Sequence[ReceiptIn]) -> list[ReceiptKept]:
    """Keep each delivery receipt once per `receipt_id` and record its outcome on the
    sent message with its `provider_message_id` (as `message_record_delivery` does); a
    replayed receipt id changes nothing. One ReceiptKept per receipt, in order; a
    receipt id given twice in `receipts` counts as a replay the second time.

    On PostgreSQL this is one statement in autocommit, however many receipts: the web
    takes a receipt per request, or a provider's batch of them, and the transaction of
    a lookup, an update and an insert per receipt (five round trips with its BEGIN and
    COMMIT) cost a web worker more CPU than everything else it did for the request.
    The receipt rows are written first, linked to their messages, and an outcome
    follows only from a new row; of several for one message, the latest.

    The messages are found by provider id and by primary key, never by status: the
    sent check is written `IS NOT DISTINCT FROM`, which no index serves, because
    right after a burst of sends the statistics still call `sent` rare, and the
    planner then walked every sent message in the status index for each callback.
    """
    first: dict[str, ReceiptIn] = {}
    for receipt in receipts:
        first.setdefault(receipt.receipt_id, receipt)
    fresh = list(first.values())
    if connection.vendor == "postgresql":
        with _atomic_if_wanted(*Message.Delivery.values):
            recorded = _record_receipts_in_one_statement(fresh) if fresh else {}
    else:
        recorded = _record_receipts_portable(fresh)
    answers, seen = [], set()
    for receipt in receipts:
        replay = receipt.receipt_id in seen or receipt.receipt_id not in recorded
        seen.add(receipt.receipt_id)
        answers.append(ReceiptKept(kept=False) if replay else recorded[receipt.receipt_id])
    return answers


def _record_receipts_in_one_statement(receipts: list[ReceiptIn]) -> dict[str, ReceiptKept]:
    """The receipts newly kept, by receipt id (a replayed one is absent)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH incoming AS (
                SELECT * FROM unnest(%(receipt_ids)s::text[], %(provider_message_ids)s::text[],
                                     %(statuses)s::text[], %(error_codes)s::text[], %(occurred_ats)s::timestamptz[])
                       AS r(receipt_id, provider_message_id, status, error_code, occurred_at)
            ), target AS (
                SELECT DISTINCT ON (provider_message_id) provider_message_id, id, sent_at
                  FROM {Message._meta.db_table}
                 WHERE provider_message_id = ANY(%(provider_message_ids)s::text[])
                   AND status IS NOT DISTINCT FROM %(sent)s
                 ORDER BY provider_message_id, id
            ), kept AS (
                INSERT INTO {DeliveryReceipt._meta.db_table}
                       (receipt_id, provider_message_id, status, error_code, occurred_at, received_at, message_id)
                SELECT i.receipt_id, i.provider_message_id, i.status, i.error_code, i.occurred_at,
                       statement_timestamp(), t.id
                  FROM incoming i LEFT JOIN target t USING (provider_message_id)
                ON CONFLICT (receipt_id) DO NOTHING
                RETURNING receipt_id, message_id, status, error_code, occurred_at
            ), latest AS (
                SELECT DISTINCT ON (message_id) message_id, status, error_code, occurred_at
                  FROM kept WHERE message_id IS NOT NULL
                 ORDER BY message_id, occurred_at DESC
            ), applied AS (
                UPDATE {Message._meta.db_table} m
                   SET delivery_status = latest.status, delivery_error_code = latest.error_code,
                       delivery_status_at = latest.occurred_at
                  FROM latest
                 WHERE m.id = latest.message_id AND m.status IS NOT DISTINCT FROM %(sent)s
                   AND (m.delivery_status_at IS NULL OR m.delivery_status_at <= latest.occurred_at)
                RETURNING m.id, m.delivery_status
            )
            SELECT kept.receipt_id, kept.message_id, target.sent_at, applied.delivery_status
              FROM kept LEFT JOIN target ON target.id = kept.message_id
                   LEFT JOIN applied ON applied.id = kept.message_id
            """,  # noqa: S608 - the table names are ours; every value is a parameter
            {
                "receipt_ids": [r.receipt_id for r in receipts],
                "provider_message_ids": [r.provider_message_id for r in receipts],
                "statuses": [r.status for r in receipts],
                "error_codes": [r.error_code for r in receipts],
                "occurred_ats": [r.occurred_at for r in receipts],
                "sent": Status.SENT.value,
            },
        )
        rows = cursor.fetchall()
    applied: dict[str, set[int]] = {}
    for _, message_id, _, delivery_status in rows:
        if delivery_status:
            applied.setdefault(delivery_status, set()).add(message_id)
    for delivery_status, message_ids in applied.items():
        _announce(delivery_status, message_ids)
    return {
        receipt_id: ReceiptKept(kept=True, message_id=message_id, sent_at=_aware(sent_at))
        for receipt_id, message_id, sent_at, _ in rows
    }


def _record_receipts_portable(receipts: list[ReceiptIn]) -> dict[str, ReceiptKept]:
    """`messages_record_receipts` where a statement cannot both insert and update
    (SQLite): one transaction, each receipt in a savepoint of its own that the unique
    receipt id rolls back when it is a replay."""
    recorded: dict[str, ReceiptKept] = {}
    with transaction.atomic():
        for receipt in receipts:
            try:
                with transaction.atomic():
                    found = message_record_delivery(
                        provider_message_id=receipt.provider_message_id,
                        status=receipt.status,
                        error_code=receipt.error_code,
                        occurred_at=receipt.occurred_at,
                    )
                    DeliveryReceipt.objects.create(
                        receipt_id=receipt.receipt_id,
                        provider_message_id=receipt.provider_message_id,
                        status=receipt.status,
                        error_code=receipt.error_code,
                        occurred_at=receipt.occurred_at,
                        message_id=found[0] if found else None,
                    )
            except IntegrityError:
                continue
            recorded[receipt.receipt_id] = (
                ReceiptKept(kept=True, message_id=found[0], sent_at=found[1]) if found else ReceiptKept(kept=True)
            )
    return recorded


def _aware(value: datetime | str | None) -> datetime | None:
    """A datetime read by raw SQL (SQLite hands back text), aware and in UTC."""
    if isinstance(value, str):
        value = parse_datetime(value)
    if value is not None and timezone.is_naive(value):
        value = value.replace(tzinfo=UTC)
    return value
