"""Claim tokens, leases and their recovery (real PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from django.utils import timezone

from dispatcher.engine.claiming import LEASE_EXPIRED_ERROR, claim_batch, recover_expired_leases, release_claimed
from dispatcher.engine.providers import locmem
from dispatcher.engine.sending import deliver_batch, deliver_message
from messages_app.models import DeliveryAttempt, Message
from tests.factories import make_message

Status = Message.Status
pytestmark = pytest.mark.django_db


def test_a_claim_stamps_a_token_and_a_lease_long_enough_for_the_batch(settings):
    settings.DISPATCHER = {
        **settings.DISPATCHER,
        "LEASE_SECONDS": 30,
        "WEBHOOK_TIMEOUT_SECONDS": 10,
        "CONCURRENCY": 2,
    }
    for _ in range(5):
        make_message()
    now = timezone.now()

    claimed = claim_batch(batch_size=10, now=now)

    assert len(claimed) == 5
    assert len({m.claim_token for m in claimed}) == 1 and claimed[0].claim_token is not None
    # 30 s, plus 10 s for each of the three rounds of two sends, should all run into the timeout.
    assert all(m.lease_expires_at == now + dt.timedelta(seconds=60) for m in claimed)


def test_messages_not_yet_due_are_not_claimed():
    now = timezone.now()
    later = make_message(send_after=now + dt.timedelta(minutes=5), next_attempt_at=now + dt.timedelta(minutes=5))
    due = make_message(next_attempt_at=now - dt.timedelta(seconds=1))
    plain = make_message()

    claimed = claim_batch(batch_size=10, now=now)

    assert {m.pk for m in claimed} == {due.pk, plain.pk}
    assert Message.objects.get(pk=later.pk).status == Status.UNSENT
    assert [m.pk for m in claim_batch(batch_size=10, now=now + dt.timedelta(minutes=6))] == [later.pk]


def test_an_outcome_is_written_only_under_the_current_claim_token():
    make_message()
    [stale] = claim_batch(batch_size=1, now=timezone.now())
    # The lease ran out and another worker claimed the message anew.
    recover_expired_leases(now=timezone.now() + dt.timedelta(days=1))
    [fresh] = claim_batch(batch_size=1, now=timezone.now() + dt.timedelta(days=1))
    assert fresh.claim_token != stale.claim_token

    deliver_message(message=stale, provider=locmem.LocmemProvider())

    stored = Message.objects.get(pk=fresh.pk)
    assert stored.status == Status.PROCESSING  # the late worker changed nothing
    assert stored.claim_token == fresh.claim_token
    deliver_message(message=fresh, provider=locmem.LocmemProvider())
    assert Message.objects.get(pk=fresh.pk).status == Status.SENT


def test_expired_leases_go_back_to_the_queue_and_the_attempt_counts(settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "MAX_ATTEMPTS": 3}
    now = timezone.now()
    expired = make_message(status=Status.PROCESSING, attempts=0, lease_expires_at=now - dt.timedelta(seconds=1))
    last_chance = make_message(status=Status.PROCESSING, attempts=2, lease_expires_at=now - dt.timedelta(seconds=1))
    alive = make_message(status=Status.PROCESSING, attempts=0, lease_expires_at=now + dt.timedelta(seconds=30))

    assert recover_expired_leases(now=now) == 2

    expired.refresh_from_db()
    assert (expired.status, expired.attempts, expired.claim_token) == (Status.UNSENT, 1, None)
    assert expired.last_error == LEASE_EXPIRED_ERROR
    last_chance.refresh_from_db()
    assert (last_chance.status, last_chance.attempts) == (Status.FAILED, 3)
    assert Message.objects.get(pk=alive.pk).status == Status.PROCESSING
    outcomes = set(DeliveryAttempt.objects.values_list("message_id", "number", "outcome"))
    assert outcomes == {(expired.pk, 1, "lease_expired"), (last_chance.pk, 3, "lease_expired")}


def test_a_stopping_worker_finishes_the_send_in_flight_and_releases_the_rest(settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "CONCURRENCY": 1}
    for _ in range(4):
        make_message()
    claimed = claim_batch(batch_size=4, now=timezone.now())
    asked = []

    def stop_after_first() -> bool:
        asked.append(True)
        return len(asked) > 1

    outcomes = deliver_batch(messages=claimed, provider=locmem.LocmemProvider(), should_stop=stop_after_first)

    assert [o.message_id for o in outcomes] == [claimed[0].pk]
    statuses = dict(Message.objects.values_list("pk", "status"))
    assert statuses == {claimed[0].pk: Status.SENT, **{m.pk: Status.UNSENT for m in claimed[1:]}}
    released = Message.objects.filter(status=Status.UNSENT)
    assert all(m.attempts == 0 and m.claim_token is None and m.lease_expires_at is None for m in released)
    assert DeliveryAttempt.objects.filter(outcome="released").count() == 3
    assert not Message.objects.filter(status=Status.PROCESSING).exists()


def test_release_leaves_a_message_claimed_by_someone_else_alone():
    make_message()
    [mine] = claim_batch(batch_size=1, now=timezone.now())
    Message.objects.filter(pk=mine.pk).update(claim_token=None)  # taken over meanwhile
    assert release_claimed(messages=[mine]) == 0
    assert Message.objects.get(pk=mine.pk).status == Status.PROCESSING


class SlowProvider(locmem.LocmemProvider):
    def send(self, message):
        time.sleep(0.3)
        return super().send(message)


def test_a_stopping_worker_with_concurrent_sends_lets_those_in_flight_finish(settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "CONCURRENCY": 2}
    for _ in range(6):
        make_message()
    claimed = claim_batch(batch_size=6, now=timezone.now())
    started = time.monotonic()

    outcomes = deliver_batch(
        messages=claimed, provider=SlowProvider(), should_stop=lambda: time.monotonic() - started > 0.1
    )

    # Two sends were in flight when the stop came: both finished and were recorded.
    assert [o.message_id for o in outcomes] == [m.pk for m in claimed[:2]]
    assert all(o.sent for o in outcomes)
    statuses = dict(Message.objects.values_list("pk", "status"))
    assert statuses == {
        **{m.pk: Status.SENT for m in claimed[:2]},
        **{m.pk: Status.UNSENT for m in claimed[2:]},
    }
    assert DeliveryAttempt.objects.filter(outcome="released").count() == 4
