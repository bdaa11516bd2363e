"""The message state machine (messages_app.transitions), one transition at a time.

Each transition is guarded in its WHERE clause: a message not in the state it
expects (another status, another claim token) is left exactly as it was, and the
transition says so by what it returns.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from messages_app.models import DeliveryAttempt, Message
from messages_app.transitions import (
    LEASE_EXPIRED_ERROR,
    MAX_DELAY_SECONDS,
    MAX_ERROR_LENGTH,
    RELEASED_ERROR,
    AttemptRecord,
    RecoveredLeases,
    database_now,
    message_defer,
    message_fail,
    message_schedule_retry,
    messages_claim,
    messages_mark_sent,
    messages_recover_expired,
    messages_release_unsent,
    messages_renew_lease,
    messages_requeue,
)
from tests.factories import make_message

Status = Message.Status
pytestmark = pytest.mark.django_db


def snapshot(*messages: Message) -> list[dict]:
    """Every column of the messages as stored, to show that nothing changed."""
    return list(Message.objects.filter(pk__in=[m.pk for m in messages]).order_by("pk").values())


def claimed(n: int = 1, *, lease_seconds: float = 60, **fields) -> tuple[uuid.UUID, list[Message]]:
    """`n` messages claimed together under one new token."""
    messages = [make_message(**fields) for _ in range(n)]
    token = uuid.uuid4()
    assert messages_claim(message_ids=[m.pk for m in messages], claim_token=token, lease_seconds=lease_seconds) == n
    return token, list(Message.objects.filter(pk__in=[m.pk for m in messages]).order_by("pk"))


def attempt(message: Message, **fields) -> AttemptRecord:
    fields.setdefault("started_at", timezone.now())
    return AttemptRecord(message_id=message.pk, number=message.attempts + 1, **fields)


def attempt_rows(message: Message) -> list[tuple]:
    return list(DeliveryAttempt.objects.filter(message=message).values_list("number", "outcome", "error"))


# --- the database's clock ---------------------------------------------------------------


def test_database_now_is_the_statement_time_not_the_transaction_start():
    with transaction.atomic():
        first = database_now()
        time.sleep(0.01)
        second = database_now()
    assert first.tzinfo is not None
    assert second > first
    assert abs(timezone.now() - second) < timedelta(seconds=5)


# --- unsent -> processing -----------------------------------------------------------------


def test_claim_leases_unsent_messages_by_the_database_clock():
    messages = [make_message(), make_message()]
    token = uuid.uuid4()
    before = database_now()

    assert messages_claim(message_ids=[m.pk for m in messages], claim_token=token, lease_seconds=30) == 2

    for message in Message.objects.filter(pk__in=[m.pk for m in messages]):
        assert (message.status, message.claim_token, message.attempts) == (Status.PROCESSING, token, 0)
        assert before <= message.claimed_at <= database_now()
        assert message.lease_expires_at == message.claimed_at + timedelta(seconds=30)
        assert message.sending_started_at is None
    assert not DeliveryAttempt.objects.exists()  # a claim is no attempt


@pytest.mark.parametrize("status", [Status.PROCESSING, Status.SENT, Status.FAILED])
def test_claim_of_a_message_that_is_not_unsent_changes_nothing(status):
    message = make_message(status=status, claim_token=uuid.uuid4() if status == Status.PROCESSING else None)
    before = snapshot(message)

    assert messages_claim(message_ids=[message.pk], claim_token=uuid.uuid4(), lease_seconds=30) == 0

    assert snapshot(message) == before


# --- renewing a lease ---------------------------------------------------------------------


def test_renew_extends_the_lease_of_the_messages_still_held():
    token, messages = claimed(3, lease_seconds=1)
    other = messages[2]
    Message.objects.filter(pk=other.pk).update(claim_token=uuid.uuid4())  # taken over meanwhile
    before = database_now()

    held = messages_renew_lease(message_ids=[m.pk for m in messages], claim_token=token, lease_seconds=90)

    assert held == {messages[0].pk, messages[1].pk}
    for message in Message.objects.filter(pk__in=held):
        assert before + timedelta(seconds=90) <= message.lease_expires_at <= database_now() + timedelta(seconds=90)
        assert message.sending_started_at is None  # renewing is not starting
    assert Message.objects.get(pk=other.pk).lease_expires_at == other.lease_expires_at


def test_renew_when_starting_marks_when_sending_began():
    token, [message] = claimed()
    before = database_now()

    assert messages_renew_lease(message_ids=[message.pk], claim_token=token, lease_seconds=60, starting=True) == {
        message.pk
    }

    stored = Message.objects.get(pk=message.pk)
    assert before <= stored.sending_started_at <= database_now()


def test_renew_under_the_wrong_token_or_status_changes_nothing():
    token, [message] = claimed()
    sent = make_message(status=Status.SENT, claim_token=token)  # a stale token on a message that is not processing
    before = snapshot(message, sent)

    assert messages_renew_lease(message_ids=[message.pk], claim_token=uuid.uuid4(), lease_seconds=99) == set()
    assert messages_renew_lease(message_ids=[sent.pk], claim_token=token, lease_seconds=99, starting=True) == set()

    assert snapshot(message, sent) == before


# --- processing -> sent -------------------------------------------------------------------


def test_mark_sent_moves_the_held_messages_with_their_attempt_rows():
    token, messages = claimed(2, attempts=0)
    Message.objects.filter(pk=messages[1].pk).update(attempts=2, last_error="earlier failure")
    messages[1].refresh_from_db()
    sent_at = database_now()
    records = [
        attempt(m, provider_message_id=f"provider-{m.pk}", http_status=202, duration_ms=15 + i)
        for i, m in enumerate(messages)
    ]

    moved = messages_mark_sent(claim_token=token, attempts=records, sent_at=sent_at, delivery_cache_pending=True)

    assert moved == {m.pk for m in messages}
    for message, expected_attempts in zip(messages, (1, 3), strict=True):
        stored = Message.objects.get(pk=message.pk)
        assert (stored.status, stored.sent_at, stored.attempts) == (Status.SENT, sent_at, expected_attempts)
        assert stored.provider_message_id == f"provider-{message.pk}"  # each its own
        assert stored.last_error == ""
        assert stored.delivery_cache_pending is True
        assert (stored.claim_token, stored.lease_expires_at, stored.sending_started_at) == (None, None, None)
        assert stored.next_attempt_at is None
    rows = list(
        DeliveryAttempt.objects.order_by("message_id").values_list(
            "message_id", "number", "outcome", "http_status", "duration_ms", "provider_message_id"
        )
    )
    assert rows == [
        (messages[0].pk, 1, "sent", 202, 15, f"provider-{messages[0].pk}"),
        (messages[1].pk, 3, "sent", 202, 16, f"provider-{messages[1].pk}"),
    ]


def test_mark_sent_under_the_wrong_token_changes_nothing_and_logs_nothing():
    _, [message] = claimed()
    before = snapshot(message)

    moved = messages_mark_sent(
        claim_token=uuid.uuid4(),
        attempts=[attempt(message, provider_message_id="p-1")],
        sent_at=database_now(),
        delivery_cache_pending=False,
    )

    assert moved == set()
    assert snapshot(message) == before
    assert not DeliveryAttempt.objects.exists()


def test_mark_sent_of_nothing_does_nothing():
    assert (
        messages_mark_sent(claim_token=uuid.uuid4(), attempts=[], sent_at=None, delivery_cache_pending=False) == set()
    )


def test_a_message_deleted_mid_chunk_does_not_block_the_others():
    token, messages = claimed(3)
    records = [attempt(m, provider_message_id=f"p-{m.pk}") for m in messages]
    deleted = messages[1]
    Message.objects.filter(pk=deleted.pk).delete()  # an operator removed it while it was being sent

    moved = messages_mark_sent(
        claim_token=token, attempts=records, sent_at=database_now(), delivery_cache_pending=False
    )

    assert moved == {messages[0].pk, messages[2].pk}
    assert set(Message.objects.values_list("status", flat=True)) == {Status.SENT}
    assert sorted(DeliveryAttempt.objects.values_list("message_id", flat=True)) == [messages[0].pk, messages[2].pk]


# --- processing -> unsent (retry later) ---------------------------------------------------


def test_schedule_retry_puts_the_message_back_due_after_the_delay():
    token, [message] = claimed()
    messages_renew_lease(message_ids=[message.pk], claim_token=token, lease_seconds=60, starting=True)
    long_error = "provider answered HTTP 503: " + "x" * MAX_ERROR_LENGTH
    before = database_now()

    assert message_schedule_retry(
        claim_token=token, attempt=attempt(message, error=long_error, http_status=503), retry_in_seconds=40
    )

    stored = Message.objects.get(pk=message.pk)
    assert (stored.status, stored.attempts) == (Status.UNSENT, 1)
    assert stored.last_error == long_error[:MAX_ERROR_LENGTH]
    assert before + timedelta(seconds=40) <= stored.next_attempt_at <= database_now() + timedelta(seconds=40)
    assert (stored.claim_token, stored.lease_expires_at, stored.sending_started_at) == (None, None, None)
    assert attempt_rows(message) == [(1, "retry", long_error[:MAX_ERROR_LENGTH])]


@pytest.mark.parametrize("seconds", [float("inf"), 1e12, float("nan")])
def test_a_delay_beyond_a_day_or_not_a_number_is_written_as_a_day(seconds):
    # timedelta(seconds=inf) raised OverflowError (the outcome went unrecorded); 1e12 s is beyond
    # timedelta too, and a few years less would be a date no page could show.
    token, [message] = claimed()
    before = database_now()

    assert message_schedule_retry(claim_token=token, attempt=attempt(message, error="e"), retry_in_seconds=seconds)

    stored = Message.objects.get(pk=message.pk)
    day = timedelta(seconds=MAX_DELAY_SECONDS)
    assert MAX_DELAY_SECONDS == 86_400
    assert before + day <= stored.next_attempt_at <= database_now() + day


def test_a_negative_delay_is_no_delay():
    token, [message] = claimed()
    before = database_now()
    assert message_defer(claim_token=token, attempt=attempt(message, error="e"), retry_in_seconds=-3600)
    assert before <= Message.objects.get(pk=message.pk).next_attempt_at <= database_now()


def test_schedule_retry_under_the_wrong_token_changes_nothing():
    _, [message] = claimed()
    before = snapshot(message)

    assert not message_schedule_retry(claim_token=uuid.uuid4(), attempt=attempt(message, error="e"), retry_in_seconds=5)

    assert snapshot(message) == before
    assert attempt_rows(message) == []


# --- processing -> failed -----------------------------------------------------------------


def test_fail_fails_for_good_and_nothing_is_due_any_more():
    token, [message] = claimed(attempts=2)
    assert message.next_attempt_at is not None

    assert message_fail(claim_token=token, attempt=attempt(message, error="bad number", http_status=400))

    stored = Message.objects.get(pk=message.pk)
    assert (stored.status, stored.attempts, stored.last_error) == (Status.FAILED, 3, "bad number")
    assert stored.next_attempt_at is None
    assert (stored.claim_token, stored.lease_expires_at, stored.sending_started_at) == (None, None, None)
    assert attempt_rows(message) == [(3, "failed", "bad number")]


@pytest.mark.parametrize("status", [Status.UNSENT, Status.SENT, Status.FAILED])
def test_fail_of_a_message_that_is_not_processing_changes_nothing(status):
    token = uuid.uuid4()
    message = make_message(status=status, claim_token=token)  # even with the right token
    before = snapshot(message)

    assert not message_fail(claim_token=token, attempt=attempt(message, error="e"))
    assert not message_fail(claim_token=uuid.uuid4(), attempt=attempt(message, error="e"))

    assert snapshot(message) == before
    assert attempt_rows(message) == []


# --- processing -> unsent (released) ------------------------------------------------------


def test_release_gives_back_unsent_without_spending_an_attempt():
    token, messages = claimed(2, attempts=1)
    before = database_now()

    released = messages_release_unsent(claim_token=token, message_ids=[m.pk for m in messages])

    assert released == {m.pk for m in messages}
    for message in messages:
        stored = Message.objects.get(pk=message.pk)
        assert (stored.status, stored.attempts) == (Status.UNSENT, 1)
        assert before <= stored.next_attempt_at <= database_now()  # due again at once
        assert (stored.claim_token, stored.lease_expires_at, stored.sending_started_at) == (None, None, None)
        [row] = DeliveryAttempt.objects.filter(message=message)
        assert (row.number, row.outcome, row.error) == (2, "released", RELEASED_ERROR)
        assert row.started_at == message.claimed_at


def test_release_under_the_wrong_token_changes_nothing():
    _, [message] = claimed()
    before = snapshot(message)

    assert messages_release_unsent(claim_token=uuid.uuid4(), message_ids=[message.pk]) == set()

    assert snapshot(message) == before
    assert not DeliveryAttempt.objects.exists()


# --- processing -> unsent / failed (the worker vanished) -----------------------------------


def test_recover_expired_tells_never_started_from_tried():
    _, [never, tried, last_try, alive] = claimed(4, attempts=2)
    past = database_now() - timedelta(seconds=1)
    started = past - timedelta(seconds=10)
    Message.objects.filter(pk=never.pk).update(lease_expires_at=past)
    Message.objects.filter(pk=tried.pk).update(lease_expires_at=past, sending_started_at=started, attempts=1)
    Message.objects.filter(pk=last_try.pk).update(lease_expires_at=past, sending_started_at=started)
    before = database_now()

    recovered = messages_recover_expired(max_attempts=3)

    assert recovered == RecoveredLeases(requeued=[tried.pk], failed=[last_try.pk], never_started=[never.pk], expired=[])
    assert recovered.count == 3
    stored = {m.pk: m for m in Message.objects.all()}
    # Waited in the task queue, never tried: back at once, no attempt spent, nothing logged.
    assert (stored[never.pk].status, stored[never.pk].attempts, stored[never.pk].last_error) == (Status.UNSENT, 2, "")
    assert before <= stored[never.pk].next_attempt_at <= database_now()
    # Tried: the lost attempt counts.
    assert (stored[tried.pk].status, stored[tried.pk].attempts) == (Status.UNSENT, 2)
    assert stored[tried.pk].last_error == LEASE_EXPIRED_ERROR
    assert before <= stored[tried.pk].next_attempt_at <= database_now()
    assert (stored[last_try.pk].status, stored[last_try.pk].attempts) == (Status.FAILED, 3)
    assert stored[last_try.pk].next_attempt_at is None
    for pk in (never.pk, tried.pk, last_try.pk):
        assert (stored[pk].claim_token, stored[pk].lease_expires_at, stored[pk].sending_started_at) == (
            None,
            None,
            None,
        )
    assert stored[alive.pk].status == Status.PROCESSING
    rows = set(DeliveryAttempt.objects.values_list("message_id", "number", "outcome", "error", "started_at"))
    assert rows == {
        (tried.pk, 2, "lease_expired", LEASE_EXPIRED_ERROR, started),
        (last_try.pk, 3, "lease_expired", LEASE_EXPIRED_ERROR, started),
    }


def test_recover_expired_with_nothing_expired_changes_nothing():
    _, [message] = claimed()
    unsent = make_message(lease_expires_at=database_now() - timedelta(hours=1))  # not processing: not a lease
    before = snapshot(message, unsent)

    recovered = messages_recover_expired(max_attempts=3)

    assert recovered == RecoveredLeases([], [], [], []) and recovered.count == 0
    assert snapshot(message, unsent) == before


def test_recover_expired_takes_at_most_its_limit():
    claimed(3)
    Message.objects.update(lease_expires_at=database_now() - timedelta(seconds=1))

    assert messages_recover_expired(max_attempts=3, limit=2).count == 2
    assert Message.objects.filter(status=Status.PROCESSING).count() == 1


@pytest.mark.django_db(transaction=True)
def test_recover_expired_skips_a_message_another_transaction_holds():
    _, [busy, free] = claimed(2)
    Message.objects.update(lease_expires_at=database_now() - timedelta(seconds=1))
    locked, release = threading.Event(), threading.Event()

    def hold_the_row() -> None:
        try:
            with transaction.atomic():
                Message.objects.select_for_update().get(pk=busy.pk)
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        recovered = messages_recover_expired(max_attempts=3)
        assert time.monotonic() - started < 2  # skipped, not waited for
    finally:
        release.set()
        holder.join(10)

    assert recovered.never_started == [free.pk]
    assert Message.objects.get(pk=busy.pk).status == Status.PROCESSING


# --- failed -> unsent (requeued) ----------------------------------------------------------


def test_requeue_resets_the_attempts_and_makes_the_message_due_now():
    failed = make_message(
        status=Status.FAILED,
        attempts=5,
        last_error="gave up",
        claimed_at=timezone.now() - timedelta(hours=1),
        next_attempt_at=None,
    )
    before = database_now()

    assert messages_requeue(queryset=Message.objects.filter(pk=failed.pk)) == 1

    stored = Message.objects.get(pk=failed.pk)
    assert (stored.status, stored.attempts, stored.claimed_at) == (Status.UNSENT, 0, None)
    assert before <= stored.next_attempt_at <= database_now()
    assert stored.last_error == "gave up"  # why it failed stays visible


def test_requeue_moves_only_the_failed_messages_of_the_queryset():
    failed = make_message(status=Status.FAILED, attempts=5)
    outside = make_message(status=Status.FAILED, attempts=5, content="not selected")
    others = [make_message(status=status) for status in (Status.UNSENT, Status.PROCESSING, Status.SENT)]
    before = snapshot(outside, *others)

    moved = messages_requeue(queryset=Message.objects.exclude(pk=outside.pk))

    assert moved == 1
    assert Message.objects.get(pk=failed.pk).status == Status.UNSENT
    assert snapshot(outside, *others) == before


# --- the attempt record -------------------------------------------------------------------


def test_an_attempt_row_keeps_at_most_max_error_length_of_the_error():
    message = make_message()
    row = attempt(message, error="e" * (MAX_ERROR_LENGTH + 10)).row(DeliveryAttempt.Outcome.RETRY)
    assert (row.message_id, row.number, row.outcome) == (message.pk, 1, "retry")
    assert len(row.error) == MAX_ERROR_LENGTH
