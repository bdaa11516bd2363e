"""Expiry under faults, with real processes: no message reaches the provider after its expires_at,
whatever happens on the way (a slow provider, a retry backoff, a qcluster killed with SIGKILL and
restarted).

The fake provider records a request after its --latency-ms delay (`received_at`, unix time), so a
request reached it at `received_at - latency`. Prints its figures on a `FAULT-FIGURES` line.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from django.db.models import Count

from dispatcher.schedule import enqueue_dispatch_window
from dispatcher.state import dispatcher_configure, dispatcher_start, dispatcher_stop
from messages_app.models import DeliveryAttempt, Message
from messages_app.transitions import database_now
from tests.factories import phone_number
from tests.processes import (
    fake_provider,
    logs_of,
    provider_faults,
    provider_requests,
    qcluster_running,
    wait_for,
)

Status = Message.Status

pytestmark = [pytest.mark.process, pytest.mark.django_db(transaction=True)]

LATENCY_MS = 500
# A request leaves the worker a moment after its expiry was last checked (a thread hand-off and a
# local TCP connect); the fake provider's clock is the same host's.
TRANSIT_TOLERANCE = timedelta(milliseconds=250)
MESSAGES = 16


def dispatcher_env(provider_url: str) -> dict[str, str]:
    return {
        "DISPATCH_PROVIDER_BACKEND": "webhook",
        "WEBHOOK_URL": provider_url,
        "WEBHOOK_TIMEOUT_SECONDS": "2",
        "DISPATCH_LEASE_SECONDS": "1",
        "DISPATCH_CONCURRENCY": "2",
        "DISPATCH_MAX_ATTEMPTS": "5",
        "DISPATCH_WINDOW_SECONDS": "150",
        "QCLUSTER_WORKERS": "2",
    }


@pytest.fixture
def stopped_dispatcher():
    dispatcher_stop()
    yield
    dispatcher_stop()


def status_counts() -> dict[str, int]:
    return dict(Message.objects.order_by().values_list("status").annotate(n=Count("id")))


def test_no_message_reaches_the_provider_after_its_expiry_through_retries_and_a_sigkill(
    tmp_path, stopped_dispatcher, capsys
):
    dispatcher_configure(batch_size=4, interval_seconds=1)
    with fake_provider(tmp_path, "--latency-ms", str(LATENCY_MS)) as provider:
        # The first answers are 503 with Retry-After 2: a message expiring sooner must expire, not retry.
        provider_faults(provider.url, script=[503, 503, 503, 503], retry_after=2)
        env = dispatcher_env(provider.url)
        with qcluster_running(tmp_path, log_name="qcluster-killed.log", **env) as first:
            start = database_now()
            # Expiries from 2.5 s to 10 s out, 0.5 s apart: at about 4 sends a second, the later
            # ones are sent, the earlier ones expire in the queue, in a backoff or in a dead worker.
            Message.objects.bulk_create(
                Message(
                    recipient_phone_number=phone_number(),
                    content=f"expiring {i}",
                    expires_at=start + timedelta(seconds=2.5 + 0.5 * i),
                )
                for i in range(MESSAGES)
            )
            dispatcher_start()
            wait_for(
                lambda: Message.objects.filter(status=Status.PROCESSING, sending_started_at__isnull=False).exists(),
                timeout=30,
                what="a send in flight",
            )
            in_flight = set(
                Message.objects.filter(status=Status.PROCESSING, sending_started_at__isnull=False).values_list(
                    "pk", flat=True
                )
            )
            os.killpg(first.popen.pid, signal.SIGKILL)  # the cluster and its workers, mid-send
            first.popen.wait(10)
            killed_after = (database_now() - start).total_seconds()

        with qcluster_running(tmp_path, log_name="qcluster-restarted.log", **env) as second:
            enqueue_dispatch_window()  # what the minute schedule would do, without waiting for it
            try:
                wait_for(
                    lambda: not Message.objects.filter(status__in=[Status.UNSENT, Status.PROCESSING]).exists(),
                    timeout=45,
                    interval=0.2,
                    what="every message sent or expired",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}; {status_counts()}\n{logs_of(first, second, provider)}") from None
            received = provider_requests(provider.url)
            logs = logs_of(first, second, provider)

    messages = {str(m.uuid): m for m in Message.objects.all()}
    assert set(status_counts()) <= {Status.SENT, Status.EXPIRED}, (status_counts(), logs)

    late = []
    for request in received:
        message = messages[request["idempotency_key"]]
        reached = datetime.fromtimestamp(request["received_at"], UTC) - timedelta(milliseconds=LATENCY_MS)
        if reached > message.expires_at + TRANSIT_TOLERANCE:
            late.append((message.pk, request["status"], (reached - message.expires_at).total_seconds()))
    assert not late, f"requests after the expiry (id, answer, seconds late): {late}\n{logs}"

    # An expired message was never accepted by the provider; a sent one was, before its expiry.
    accepted = {r["idempotency_key"] for r in received if 200 <= r["status"] < 300}
    for key, message in messages.items():
        assert (key in accepted) == (message.status == Status.SENT), (message.pk, message.status, logs)

    # The run went through the paths it is meant to: some sent, some expired after a try.
    attempts = Counter(DeliveryAttempt.objects.values_list("outcome", flat=True))
    expired = Message.objects.filter(status=Status.EXPIRED)
    tried_then_expired = (
        expired.filter(attempts__gte=1).count()
        + expired.filter(delivery_attempts__outcome=DeliveryAttempt.Outcome.LEASE_EXPIRED).count()
    )
    assert Message.objects.filter(status=Status.SENT).exists(), logs
    assert expired.exists(), logs
    assert tried_then_expired >= 1, (attempts, logs)

    with capsys.disabled():
        print(
            "\nFAULT-FIGURES expiry_sigkill_retry "
            f"messages={MESSAGES} sent={status_counts().get(Status.SENT, 0)} "
            f"expired={status_counts().get(Status.EXPIRED, 0)} requests={len(received)} "
            f"in_flight_at_kill={len(in_flight)} killed_after_s={killed_after:.1f} "
            f"attempt_outcomes={dict(attempts)} late_requests={len(late)}"
        )
