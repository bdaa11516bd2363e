"""End to end with real processes: `manage.py qcluster` sends through `manage.py fakeprovider`.

The test process writes messages and operates the dispatcher through the service and the API;
the qcluster subprocess (against the same test database) does the sending.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from dispatcher.models import DispatcherState
from dispatcher.permissions import CONTROL_DISPATCHER
from dispatcher.state import dispatcher_configure, dispatcher_start, dispatcher_stop
from messages_app.models import Message
from tests.factories import MESSAGE_CLIENT_PERMS, make_user, phone_number
from tests.processes import fake_provider, http_json, logs_of, qcluster_running, wait_for

Status = Message.Status

pytestmark = [pytest.mark.process, pytest.mark.django_db(transaction=True)]

WINDOW_SECONDS = 20


@pytest.fixture
def stopped_dispatcher():
    """Start every test stopped, so nothing is sent before the test starts the dispatcher."""
    dispatcher_stop()


@pytest.fixture
def cluster(tmp_path, stopped_dispatcher):
    """A running fake provider and qcluster wired to it; yields (fakeprovider, qcluster)."""

    @contextmanager
    def start():
        with (
            fake_provider(tmp_path) as provider,
            qcluster_running(
                tmp_path,
                DISPATCH_PROVIDER_BACKEND="webhook",
                WEBHOOK_URL=provider.url,
                WEBHOOK_TIMEOUT_SECONDS="5",
                DISPATCH_WINDOW_SECONDS=str(WINDOW_SECONDS),
                QCLUSTER_WORKERS="2",
            ) as cluster_process,
        ):
            try:
                yield provider, cluster_process
            finally:
                # A stopped dispatcher ends the window at once, so the cluster stops quickly.
                dispatcher_stop()

    return start


def make_messages(n: int) -> list[Message]:
    Message.objects.bulk_create(
        [Message(recipient_phone_number=phone_number(), content=f"e2e message {i}") for i in range(n)]
    )
    return list(Message.objects.order_by("id"))


def count(status: str) -> int:
    return Message.objects.filter(status=status).count()


def wait_or_fail(predicate, *, timeout: float, what: str, processes) -> None:
    try:
        wait_for(predicate, timeout=timeout, interval=0.2, what=what)
    except AssertionError as exc:
        counts = dict(Message.objects.order_by().values_list("status").annotate(n=Count("id")))
        raise AssertionError(f"{exc}; messages: {counts}\n{logs_of(*processes)}") from None


def test_started_dispatcher_sends_everything_once_and_caches_each_delivery(cluster):
    messages = make_messages(7)
    dispatcher_configure(batch_size=2, interval_seconds=1)

    with cluster() as (provider, qcluster):
        dispatcher_start()  # enqueues a window at once; the qcluster picks it up
        wait_or_fail(
            lambda: count(Status.SENT) == len(messages),
            timeout=30,
            what="all messages to be sent",
            processes=(qcluster, provider),
        )
        received = http_json("GET", provider.url + "_fake/requests")

    logs = logs_of(qcluster, provider)
    sent = list(Message.objects.order_by("id"))
    assert all(m.status == Status.SENT and m.attempts == 1 and m.sent_at for m in sent), logs
    # The provider saw each message exactly once, with its content.
    assert sorted((r["to"], r["content"]) for r in received) == sorted(
        (m.recipient_phone_number, m.content) for m in messages
    ), logs
    assert all(r["status"] == 202 for r in received)
    assert {m.provider_message_id for m in sent} == {r["message_id"] for r in received}
    # Oldest first, in batches of two a second apart (the two of a batch are sent at once).
    by_claim = sorted(sent, key=lambda m: (m.claimed_at, m.pk))
    assert [m.pk for m in by_claim] == [m.pk for m in messages]
    assert len({m.claimed_at for m in sent}) == -(-len(messages) // 2)
    # Four ticks a second apart: judged by when each was claimed, since a chunk's sending time
    # also carries how soon a worker took it (0.4 s for the first on a busy machine).
    assert (by_claim[-1].claimed_at - by_claim[0].claimed_at) >= timedelta(seconds=2.5), logs
    # The delivery record is in Redis under the bare key, as JSON.
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        for message in sent:
            raw = client.get(f"messages:{message.provider_message_id}")
            assert raw is not None, f"no cache record for {message.provider_message_id}\n{logs}"
            assert json.loads(raw) == {
                "messageId": message.provider_message_id,
                "timestamp": int(message.sent_at.timestamp()),
            }
    finally:
        client.close()


def test_the_cluster_keeps_the_pace(cluster):
    make_messages(40)
    dispatcher_configure(batch_size=1, interval_seconds=1)

    with cluster() as (provider, qcluster):
        dispatcher_start()
        wait_or_fail(lambda: count(Status.SENT) >= 1, timeout=30, what="the first send", processes=(qcluster, provider))
        first = Message.objects.filter(status=Status.SENT).order_by("sent_at").first().sent_at
        until = first + timedelta(seconds=10)
        while timezone.now() < until + timedelta(seconds=0.5):
            time.sleep(0.2)
        in_ten_seconds = Message.objects.filter(sent_at__gte=first, sent_at__lt=until).count()
        logs = logs_of(qcluster, provider)

    assert 8 <= in_ten_seconds <= 12, f"{in_ten_seconds} sent in 10 s at 1 per second\n{logs}"


def test_the_go_service_flow_over_the_seed_routes(cluster, client_for):
    # Controlling, reading and queueing each need their permission; staff status grants none.
    staff = make_user(username="ops", staff=True, perms=[*MESSAGE_CLIENT_PERMS, CONTROL_DISPATCHER])
    client = client_for(staff)  # Authorization: Token <key>, as the Go service's clients send

    response = client.post("/messages/worker/stop")
    assert response.status_code == 200, response.content
    assert response.json() == {"status": 200, "success": "OK"}
    dispatcher_configure(batch_size=3, interval_seconds=1)

    created = []
    for i in range(10):
        response = client.post(
            "/messages", {"recipient_phone_number": f"+90 555 000 00 {i:02d}", "content": f"go flow {i}"}, format="json"
        )
        assert response.status_code == 200, response.content
        created.append(response.json()["success"]["id"])
    response = client.get("/messages")
    assert response.json() == {"status": 200, "success": []}

    with cluster() as (provider, qcluster):

        def listed() -> list[dict]:
            return client.get("/messages").json()["success"]

        response = client.post("/messages/worker/start")
        assert response.status_code == 200, response.content
        wait_or_fail(
            lambda: len(listed()) == 10, timeout=30, what="10 sent messages listed", processes=(qcluster, provider)
        )

        sent = listed()
        assert sorted(m["id"] for m in sent) == sorted(created)
        assert all(m["status"] == "sent" and m["sent_at"] and m["provider_message_id"] for m in sent)
        assert [m["sent_at"] for m in sent] == sorted((m["sent_at"] for m in sent), reverse=True)

        response = client.post("/messages/worker/stop")
        assert response.status_code == 200, response.content
        assert DispatcherState.objects.get().running is False


def test_nothing_is_claimed_after_stop_returns(cluster):
    make_messages(40)
    dispatcher_configure(batch_size=1, interval_seconds=1)

    with cluster() as (provider, qcluster):
        dispatcher_start()
        wait_or_fail(lambda: count(Status.SENT) >= 3, timeout=30, what="three sends", processes=(qcluster, provider))

        dispatcher_stop()
        claimed_at_stop = Message.objects.exclude(status=Status.UNSENT).count()
        time.sleep(3)
        claimed_later = Message.objects.exclude(status=Status.UNSENT).count()
        logs = logs_of(qcluster, provider)
        assert claimed_later == claimed_at_stop, logs
        # what had been claimed before the stop was still sent
        assert count(Status.PROCESSING) == 0, logs
        assert count(Status.SENT) == claimed_at_stop, logs
        assert count(Status.UNSENT) == 40 - claimed_at_stop
        assert "dispatcher stopped" in qcluster.log()


def test_a_cluster_shutting_down_ends_its_window_early(cluster):
    make_messages(40)
    dispatcher_configure(batch_size=1, interval_seconds=1)

    with cluster() as (provider, qcluster):
        dispatcher_start()
        wait_or_fail(lambda: count(Status.SENT) >= 2, timeout=30, what="two sends", processes=(qcluster, provider))

        # The dispatcher still runs: only the cluster's own shutdown can end the window early.
        started = time.monotonic()
        returncode = qcluster.stop(timeout=WINDOW_SECONDS + 10)
        took = time.monotonic() - started
        logs = logs_of(qcluster, provider)

        assert returncode == 0, logs
        assert took < WINDOW_SECONDS / 2, f"stopping took {took:.1f} s\n{logs}"
        assert "qcluster is shutting down" in qcluster.log(), logs
        assert count(Status.PROCESSING) == 0, logs
        assert DispatcherState.objects.get().running is True


def test_cluster_check_passes_while_a_qcluster_runs_here(cluster):
    from io import StringIO

    from django.core.management import CommandError, call_command

    out = StringIO()

    def check() -> bool:
        try:
            call_command("dispatcher", "cluster-check", stdout=out)
        except CommandError:
            return False
        return True

    with cluster():
        wait_for(check, timeout=15, what="the qcluster's status")
    assert "qcluster running" in out.getvalue()
