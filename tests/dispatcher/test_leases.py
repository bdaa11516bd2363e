"""Claim tokens, leases, their renewal and their recovery (real PostgreSQL).

Leases are stamped by the database's clock; to let one run out, a test moves
`lease_expires_at` into the past.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from django.db import transaction

from dispatcher.engine import leases, pipeline
from dispatcher.engine.claiming import Claim, claim_batch, recover_expired_leases
from dispatcher.engine.leases import LeaseKeeper
from dispatcher.engine.pipeline import send_chunk
from dispatcher.engine.providers import locmem
from dispatcher.engine.recording import LOST
from messages_app.models import DeliveryAttempt, Message
from messages_app.transitions import LEASE_EXPIRED_ERROR, database_now, messages_release_unsent
from tests.factories import make_message
from tests.processes import wait_for

Status = Message.Status
pytestmark = pytest.mark.django_db


def claim(batch_size: int) -> Claim:
    with transaction.atomic():
        return claim_batch(batch_size=batch_size)


def expire_leases(message_ids, *, started: bool) -> None:
    """Let the leases of `message_ids` run out, as if their worker had vanished
    (after it began sending them, if `started`)."""
    past = database_now() - dt.timedelta(seconds=1)
    Message.objects.filter(pk__in=message_ids).update(
        lease_expires_at=past, sending_started_at=past - dt.timedelta(seconds=5) if started else None
    )


def test_a_claim_stamps_one_token_and_a_lease_of_lease_seconds(settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "LEASE_SECONDS": 30}
    for _ in range(5):
        make_message()

    claimed = claim(10)

    assert len(claimed.message_ids) == 5
    rows = Message.objects.filter(pk__in=claimed.message_ids)
    assert set(rows.values_list("claim_token", flat=True)) == {claimed.claim_token}
    # However big the batch: the worker renews the lease while it sends.
    assert all(m.lease_expires_at == m.claimed_at + dt.timedelta(seconds=30) for m in rows)


def test_messages_not_yet_due_are_not_claimed():
    now = database_now()
    later = make_message(send_after=now + dt.timedelta(minutes=5), next_attempt_at=now + dt.timedelta(minutes=5))
    due = make_message(next_attempt_at=now - dt.timedelta(seconds=1))
    plain = make_message()

    assert set(claim(10).message_ids) == {due.pk, plain.pk}
    assert Message.objects.get(pk=later.pk).status == Status.UNSENT

    # Six minutes pass.
    Message.objects.filter(pk=later.pk).update(next_attempt_at=database_now() - dt.timedelta(minutes=1))
    assert claim(10).message_ids == [later.pk]


# --- the claim token guards every outcome --------------------------------------------


class TakenOverMidSend(locmem.LocmemProvider):
    """While the provider is still answering, the lease runs out and another worker
    claims the message anew."""

    def __init__(self) -> None:
        super().__init__()
        self.fresh: Claim | None = None

    def send(self, message):
        expire_leases([message.pk], started=True)
        assert recover_expired_leases() == 1
        self.fresh = claim(1)
        return super().send(message)


def test_an_outcome_is_written_only_under_the_current_claim_token():
    make_message()
    stale = claim(1)
    provider = TakenOverMidSend()

    report = send_chunk(message_ids=stale.message_ids, claim_token=stale.claim_token, provider=provider)

    fresh = provider.fresh
    assert fresh.message_ids == stale.message_ids and fresh.claim_token != stale.claim_token
    [outcome] = report.outcomes
    assert outcome.outcome == LOST  # sent, but no longer ours to record
    stored = Message.objects.get(pk=fresh.message_ids[0])
    assert stored.status == Status.PROCESSING  # the late worker changed nothing
    assert stored.claim_token == fresh.claim_token
    assert not DeliveryAttempt.objects.filter(outcome="sent").exists()

    report = send_chunk(message_ids=fresh.message_ids, claim_token=fresh.claim_token, provider=locmem.LocmemProvider())
    assert [o.outcome for o in report.outcomes] == ["sent"]
    assert Message.objects.get(pk=stored.pk).status == Status.SENT


def test_a_chunk_whose_lease_passed_on_before_it_started_sends_nothing():
    make_message()
    stale = claim(1)
    expire_leases(stale.message_ids, started=False)
    recover_expired_leases()
    fresh = claim(1)

    report = send_chunk(message_ids=stale.message_ids, claim_token=stale.claim_token, provider=locmem.LocmemProvider())

    assert report.outcomes == [] and report.released == 0
    assert locmem.outbox == []
    stored = Message.objects.get(pk=fresh.message_ids[0])
    assert (stored.status, stored.claim_token) == (Status.PROCESSING, fresh.claim_token)


class RecordsWhenStarted(locmem.LocmemProvider):
    def __init__(self) -> None:
        super().__init__()
        self.started_at: dict[int, dt.datetime | None] = {}

    def send(self, message):
        self.started_at[message.pk] = Message.objects.get(pk=message.pk).sending_started_at
        return super().send(message)


def test_a_chunk_marks_its_messages_started_before_the_first_send(settings):
    # One send at a time, from this thread: the provider reads the row in the test's transaction.
    settings.DISPATCHER = {**settings.DISPATCHER, "CONCURRENCY": 1}
    make_message()
    make_message()
    claimed = claim(2)
    assert not Message.objects.filter(sending_started_at__isnull=False).exists()
    provider = RecordsWhenStarted()

    send_chunk(message_ids=claimed.message_ids, claim_token=claimed.claim_token, provider=provider)

    claimed_at = Message.objects.get(pk=claimed.message_ids[0]).claimed_at
    assert set(provider.started_at) == set(claimed.message_ids)
    assert all(started is not None and started >= claimed_at for started in provider.started_at.values())
    # Done: nothing of the claim is left on the rows.
    assert not Message.objects.filter(sending_started_at__isnull=False).exists()


# --- recovering expired leases -------------------------------------------------------


def test_expired_leases_go_back_to_the_queue_and_a_started_attempt_counts(settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "MAX_ATTEMPTS": 3}
    for _ in range(4):
        make_message()
    started, last_chance, alive, never_started = claim(4).message_ids
    Message.objects.filter(pk=last_chance).update(attempts=2)
    Message.objects.filter(pk=never_started).update(attempts=2, last_error="an earlier failure")
    expire_leases([started, last_chance], started=True)
    expire_leases([never_started], started=False)
    started_at = Message.objects.get(pk=started).sending_started_at
    before = database_now()

    assert recover_expired_leases() == 3

    message = Message.objects.get(pk=started)
    assert (message.status, message.attempts, message.claim_token) == (Status.UNSENT, 1, None)
    assert (message.lease_expires_at, message.sending_started_at) == (None, None)
    assert message.last_error == LEASE_EXPIRED_ERROR
    assert before <= message.next_attempt_at <= database_now()  # due again at once
    message = Message.objects.get(pk=last_chance)
    assert (message.status, message.attempts, message.next_attempt_at) == (Status.FAILED, 3, None)
    assert message.last_error == LEASE_EXPIRED_ERROR
    assert Message.objects.get(pk=alive).status == Status.PROCESSING
    # Claimed but never started: back in the queue, and it cost nothing, even with
    # one attempt left (waiting in the task queue is not a failure of the message).
    message = Message.objects.get(pk=never_started)
    assert (message.status, message.attempts, message.last_error) == (Status.UNSENT, 2, "an earlier failure")
    assert (message.claim_token, message.lease_expires_at) == (None, None)
    assert before <= message.next_attempt_at <= database_now()

    outcomes = set(DeliveryAttempt.objects.values_list("message_id", "number", "outcome"))
    assert outcomes == {(started, 1, "lease_expired"), (last_chance, 3, "lease_expired")}
    assert DeliveryAttempt.objects.get(message_id=started).started_at == started_at
    assert recover_expired_leases() == 0


def test_recovery_takes_at_most_its_limit():
    for _ in range(5):
        make_message()
    claimed = claim(5)
    expire_leases(claimed.message_ids, started=False)

    assert recover_expired_leases(limit=2) == 2
    assert Message.objects.filter(status=Status.PROCESSING).count() == 3
    assert recover_expired_leases() == 3
    assert Message.objects.filter(status=Status.UNSENT).count() == 5


# --- a stopping worker gives back what it did not start ------------------------------


def test_a_stopping_worker_finishes_the_send_in_flight_and_releases_the_rest(settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "CONCURRENCY": 1}
    for _ in range(4):
        make_message()
    claimed = claim(4)

    def stop_after_first() -> bool:
        return len(locmem.outbox) >= 1

    before = database_now()
    report = send_chunk(
        message_ids=claimed.message_ids,
        claim_token=claimed.claim_token,
        provider=locmem.LocmemProvider(),
        should_stop=stop_after_first,
    )

    first, *rest = claimed.message_ids
    assert [o.message_id for o in report.outcomes] == [first]
    assert report.released == 3
    statuses = dict(Message.objects.values_list("pk", "status"))
    assert statuses == {first: Status.SENT, **dict.fromkeys(rest, Status.UNSENT)}
    for message in Message.objects.filter(status=Status.UNSENT):
        assert (message.attempts, message.claim_token, message.lease_expires_at) == (0, None, None)
        assert message.sending_started_at is None
        assert before <= message.next_attempt_at <= database_now()  # due again at once
    assert DeliveryAttempt.objects.filter(outcome="released").count() == 3
    assert not Message.objects.filter(status=Status.PROCESSING).exists()


def test_release_leaves_a_message_claimed_by_someone_else_alone():
    make_message()
    mine = claim(1)
    Message.objects.filter(pk__in=mine.message_ids).update(claim_token=None)  # taken over meanwhile
    assert messages_release_unsent(claim_token=mine.claim_token, message_ids=mine.message_ids) == set()
    assert Message.objects.get(pk=mine.message_ids[0]).status == Status.PROCESSING
    assert not DeliveryAttempt.objects.exists()


class TwoAtOnceProvider(locmem.LocmemProvider):
    """Each of the first two sends waits until the other has begun too, so both are in flight
    together however late the machine schedules the second thread; `both_began` turns true then."""

    def __init__(self) -> None:
        super().__init__()
        self.together = threading.Barrier(2, timeout=30)
        self.began = 0
        self.lock = threading.Lock()

    @property
    def both_began(self) -> bool:
        with self.lock:
            return self.began >= 2

    def send(self, message):
        with self.lock:
            self.began += 1
            first_two = self.began <= 2
        if first_two:
            self.together.wait()
            time.sleep(0.2)  # still in flight when the worker sees the stop
        return super().send(message)


def test_a_stopping_worker_with_concurrent_sends_lets_those_in_flight_finish(settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "CONCURRENCY": 2}
    for _ in range(6):
        make_message()
    claimed = claim(6)
    provider = TwoAtOnceProvider()

    # The stop comes once two sends are under way (not after a fixed time: on a loaded machine
    # the second thread may not have begun by then, and would rightly not start after the stop).
    report = send_chunk(
        message_ids=claimed.message_ids,
        claim_token=claimed.claim_token,
        provider=provider,
        should_stop=lambda: provider.both_began,
    )

    # Two sends were in flight when the stop came: both finished and were recorded.
    assert sorted(o.message_id for o in report.outcomes) == claimed.message_ids[:2]
    assert all(o.sent for o in report.outcomes)
    assert report.released == 4
    statuses = dict(Message.objects.values_list("pk", "status"))
    assert statuses == {
        **dict.fromkeys(claimed.message_ids[:2], Status.SENT),
        **dict.fromkeys(claimed.message_ids[2:], Status.UNSENT),
    }
    assert DeliveryAttempt.objects.filter(outcome="released").count() == 4


# --- a worker frozen past its lease ---------------------------------------------------


class FrozenDuringItsFirstSend(locmem.LocmemProvider):
    """The worker is frozen (SIGSTOP, a paused VM) during its first send for longer than the lease:
    its clocks move on by `seconds` meanwhile, and no renewal of its keeper ran."""

    def __init__(self, freeze) -> None:
        super().__init__()
        self.freeze = freeze

    def send(self, message):
        freeze, self.freeze = self.freeze, None
        if freeze is not None:
            freeze()
        return super().send(message)


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_worker_frozen_past_its_lease_starts_no_send_after_it(settings, monkeypatch, concurrency):
    settings.DISPATCHER = {**settings.DISPATCHER, "LEASE_SECONDS": 60, "CONCURRENCY": concurrency}
    total = 6
    for _ in range(total):
        make_message()
    claimed = claim(total)
    frozen_for = [0.0]
    real_clock = leases.lease_clock
    monkeypatch.setattr(leases, "lease_clock", lambda: real_clock() + frozen_for[0])
    provider = FrozenDuringItsFirstSend(freeze=lambda: frozen_for.__setitem__(0, 60.0))

    report = send_chunk(message_ids=claimed.message_ids, claim_token=claimed.claim_token, provider=provider)

    # The sends already under way when it froze finished (and, the rows still being its own, were
    # recorded); no other began: they went back to the queue for whoever holds them now.
    sent = [entry.message_pk for entry in locmem.outbox]
    assert 1 <= len(sent) <= concurrency, sent
    assert sorted(o.message_id for o in report.outcomes if o.sent) == sorted(sent)
    assert report.released == total - len(sent)
    assert Message.objects.filter(status=Status.UNSENT, attempts=0).count() == total - len(sent)
    assert DeliveryAttempt.objects.filter(outcome="released").count() == total - len(sent)


def test_the_lease_keeper_trusts_its_lease_for_three_quarters_of_it_after_the_last_renewal():
    make_message()
    claimed = claim(1)
    now = leases.lease_clock()
    fresh = LeaseKeeper(
        message_ids=claimed.message_ids, claim_token=claimed.claim_token, lease_seconds=8, renewed_at=now
    )
    old = LeaseKeeper(
        message_ids=claimed.message_ids, claim_token=claimed.claim_token, lease_seconds=8, renewed_at=now - 6.5
    )
    assert fresh.holds() and not old.holds()
    fresh.lost = True
    assert not fresh.holds()


@pytest.mark.django_db(transaction=True)  # the keeper renews from its own connection
def test_messages_given_back_are_not_taken_for_a_lost_lease(settings, monkeypatch):
    settings.DISPATCHER = {**settings.DISPATCHER, "LEASE_SECONDS": 0.6, "CONCURRENCY": 1}  # renewed every 0.2 s
    for _ in range(3):
        make_message()
    claimed = claim(3)
    release = pipeline.messages_release_unsent

    def slow_release(**kwargs):
        released = release(**kwargs)
        time.sleep(0.5)  # before the chunk notes them done, a renewal comes
        return released

    monkeypatch.setattr(pipeline, "messages_release_unsent", slow_release)

    report = send_chunk(
        message_ids=claimed.message_ids,
        claim_token=claimed.claim_token,
        provider=locmem.LocmemProvider(),
        should_stop=lambda: len(locmem.outbox) >= 1,
    )

    assert (report.released, report.lease_lost) == (2, False)


# --- keeping a lease alive -------------------------------------------------------------
# The keeper renews from a thread with its own connection: these tests commit.


@pytest.mark.django_db(transaction=True)
def test_the_lease_keeper_renews_the_lease_while_the_worker_sends():
    for _ in range(3):
        make_message()
    claimed = claim(3)
    Message.objects.update(lease_expires_at=database_now() + dt.timedelta(seconds=0.6))
    first_leases = dict(Message.objects.values_list("pk", "lease_expires_at"))

    with LeaseKeeper(message_ids=claimed.message_ids, claim_token=claimed.claim_token, lease_seconds=0.6) as keeper:
        # Longer than the lease: without renewals it would have run out.
        time.sleep(1.0)
        assert recover_expired_leases() == 0
        leases = dict(Message.objects.values_list("pk", "lease_expires_at"))
        assert all(leases[pk] > first_leases[pk] for pk in claimed.message_ids)
        assert min(leases.values()) > database_now()

        # Done with one: its lease is no longer renewed.
        keeper.done(claimed.message_ids[:1])
        time.sleep(0.3)  # a renewal already under way may still include it
        done_lease = Message.objects.get(pk=claimed.message_ids[0]).lease_expires_at
        time.sleep(0.5)
        assert Message.objects.get(pk=claimed.message_ids[0]).lease_expires_at == done_lease
        assert Message.objects.get(pk=claimed.message_ids[1]).lease_expires_at > done_lease

    assert keeper.lost is False


@pytest.mark.django_db(transaction=True)
def test_the_lease_keeper_notices_a_message_taken_over():
    for _ in range(2):
        make_message()
    claimed = claim(2)
    with LeaseKeeper(message_ids=claimed.message_ids, claim_token=claimed.claim_token, lease_seconds=0.3) as keeper:
        Message.objects.filter(pk=claimed.message_ids[1]).update(claim_token=None)  # someone else holds it
        wait_for(lambda: keeper.lost, timeout=5, what="the keeper to notice the lost lease")
