"""Status callbacks with real processes: `qcluster` sends through the fake provider, and a
second `qcluster` on the callbacks cluster (Q_CLUSTER_NAME=callbacks) delivers the events to
the tests' own HTTP endpoints (devtools.callback_receiver, signatures checked with the
`standardwebhooks` package). Each assertion is about what the endpoints received and what
the database ends with."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from contextlib import contextmanager

import pytest
from django.utils import timezone

from audit.models import ControlAction
from callbacks.models import CallbackEndpoint, CallbackEvent
from callbacks.services import endpoint_create
from devtools.callback_receiver import receiver_server
from dispatcher.state import dispatcher_configure, dispatcher_start, dispatcher_stop
from messages_app.models import Message
from messages_app.transitions import AttemptRecord, message_record_delivery, messages_claim, messages_mark_sent
from tests.factories import make_message, phone_number
from tests.processes import fake_provider, logs_of, qcluster_running, wait_for

pytestmark = [pytest.mark.process, pytest.mark.django_db(transaction=True)]

State = CallbackEvent.State
FAST_RETRIES = "0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"


@contextmanager
def receiving():
    server = receiver_server(port=0, secrets=[], quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def register(receiver, name: str = "app", **kwargs) -> CallbackEndpoint:
    registered = endpoint_create(name=name, url=receiver.url, **kwargs)
    receiver.state.secrets = [registered.secret]
    return registered.endpoint


def callbacks_cluster(tmp_path, log_name: str = "callbacks.log", **env: str):
    env = {
        "Q_CLUSTER_NAME": "callbacks",
        "CALLBACK_POLL_SECONDS": "0.1",
        "CALLBACK_LEASE_SECONDS": "3",
        "CALLBACK_TIMEOUT_SECONDS": "1",
        "CALLBACK_RETRY_SCHEDULE": FAST_RETRIES,
        "QCLUSTER_WORKERS": "2",
        **env,
    }
    return qcluster_running(tmp_path, log_name=log_name, **env)


def wait_or_fail(predicate, *, timeout: float, what: str, processes) -> None:
    try:
        wait_for(predicate, timeout=timeout, interval=0.2, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs_of(*processes)}") from None


def sent_and_delivered(n: int) -> list[Message]:
    """n messages, each sent then delivered (a receipt): two events each, sequence 1 and 2."""
    messages = [make_message() for _ in range(n)]
    for message in messages:
        token = uuid.uuid4()
        messages_claim(message_ids=[message.pk], claim_token=token, lease_seconds=60)
        messages_mark_sent(
            claim_token=token,
            attempts=[
                AttemptRecord(
                    message_id=message.pk, number=1, started_at=timezone.now(), provider_message_id=f"p-{message.pk}"
                )
            ],
            sent_at=timezone.now(),
            delivery_cache_pending=False,
        )
        message_record_delivery(
            provider_message_id=f"p-{message.pk}", status="delivered", error_code="", occurred_at=timezone.now()
        )
    return messages


def test_every_sent_message_is_called_back_once_while_a_dead_endpoint_delays_nothing(tmp_path):
    dispatcher_stop()
    with receiving() as healthy, receiving() as dead:
        register(healthy, name="healthy", event_types=["message.sent"])
        register(dead, name="dead", event_types=["message.sent"])
        dead.state.mode = {"mode": "hang", "delay": 30}  # never answers within the 1 s timeout
        Message.objects.bulk_create(
            [Message(recipient_phone_number=phone_number(), content=f"callback {i}") for i in range(20)]
        )
        ids = set(Message.objects.values_list("pk", flat=True))
        dispatcher_configure(batch_size=50, interval_seconds=1)
        with (
            fake_provider(tmp_path) as provider,
            qcluster_running(
                tmp_path, DISPATCH_PROVIDER_BACKEND="webhook", WEBHOOK_URL=provider.url, QCLUSTER_WORKERS="2"
            ) as sender,
            callbacks_cluster(tmp_path) as callbacks,
        ):
            dispatcher_start()
            processes = (sender, callbacks, provider)
            wait_or_fail(
                lambda: Message.objects.filter(status="sent").count() == 20,
                timeout=60,
                what="every message sent",
                processes=processes,
            )
            wait_or_fail(lambda: len(healthy.state.events) >= 20, timeout=30, what="20 callbacks", processes=processes)
            time.sleep(1)  # a duplicate would arrive now
            dispatcher_stop()
        got = healthy.state.events
        assert len(got) == 20 and len({e["webhook_id"] for e in got}) == 20, logs_of(*processes)
        assert {e["data"]["message_id"] for e in got} == ids
        assert all(e["type"] == "message.sent" and e["data"]["status"] == "sent" for e in got)
        assert healthy.state.refused == 0
        # The dead endpoint was tried, not hammered: its first batch (as many at once as
        # CALLBACK_CONCURRENCY) timed out, then one probe at a time; nothing delivered.
        assert CallbackEvent.objects.filter(endpoint__name="dead", state=State.PENDING).count() == 20
        assert len(dead.state.attempts) <= 8 + 5


def test_an_endpoint_down_for_a_while_then_up_gets_every_event_in_sequence(tmp_path):
    with receiving() as receiver:
        endpoint = register(receiver)
        receiver.state.mode = {"mode": "error"}
        messages = sent_and_delivered(5)
        with callbacks_cluster(tmp_path) as callbacks:
            wait_or_fail(
                lambda: CallbackEndpoint.objects.get(pk=endpoint.pk).failures_in_row >= 3,
                timeout=30,
                what="three failed tries in a row",
                processes=(callbacks,),
            )
            endpoint.refresh_from_db()
            assert endpoint.last_success_at is None and endpoint.failing_since is not None
            receiver.state.mode = {"mode": "ok"}
            wait_or_fail(
                lambda: len({e["webhook_id"] for e in receiver.state.events}) == 10,
                timeout=30,
                what="all ten events",
                processes=(callbacks,),
            )
        for message in messages:
            mine = sorted(
                (e for e in receiver.state.events if e["data"]["message_id"] == message.pk),
                key=lambda e: e["data"]["sequence"],
            )
            assert [(e["data"]["sequence"], e["type"]) for e in mine] == [
                (1, "message.sent"),
                (2, "message.delivered"),
            ]
        endpoint.refresh_from_db()
        assert endpoint.failures_in_row == 0 and endpoint.last_success_at is not None


def test_sigkill_of_the_callbacks_worker_mid_delivery_loses_no_event(tmp_path):
    with receiving() as receiver:
        register(receiver)
        receiver.state.mode = {"mode": "hang", "delay": 4}
        messages = sent_and_delivered(4)
        with callbacks_cluster(tmp_path, log_name="first.log", CALLBACK_TIMEOUT_SECONDS="10") as first:
            wait_or_fail(
                lambda: receiver.state.requests >= 1, timeout=30, what="a delivery under way", processes=(first,)
            )
            first.signal_group(signal.SIGKILL)
            first.popen.wait(10)
        receiver.state.mode = {"mode": "ok"}
        assert CallbackEvent.objects.filter(state=State.DELIVERED).count() == 0
        with callbacks_cluster(tmp_path, log_name="second.log") as second:
            wait_or_fail(
                lambda: CallbackEvent.objects.filter(state=State.DELIVERED).count() == 8,
                timeout=40,
                what="every event delivered after the kill",
                processes=(second,),
            )
        expected = set(CallbackEvent.objects.values_list("event_id", flat=True))
        assert {e["webhook_id"] for e in receiver.state.events} == expected
        assert len(expected) == 2 * len(messages)


def test_429_retry_after_is_honoured_and_a_4xx_is_not_retried(tmp_path):
    with receiving() as throttled, receiving() as rejecting:
        register(throttled, name="throttled")
        register(rejecting, name="rejecting")
        throttled.state.mode = {"mode": "throttle", "retry_after": 3}
        rejecting.state.mode = {"mode": "reject"}
        make_message_cancelled = sent_and_delivered(1)
        assert make_message_cancelled
        with callbacks_cluster(tmp_path) as callbacks:
            wait_or_fail(lambda: len(throttled.state.attempts) >= 1, timeout=30, what="a try", processes=(callbacks,))
            throttled.state.mode = {"mode": "ok"}
            wait_or_fail(
                lambda: len(throttled.state.events) == 2, timeout=30, what="both events", processes=(callbacks,)
            )
            time.sleep(2)  # time for a retry of the rejected events, which must not come
        first_try = throttled.state.attempts[0]
        retry = next(a for a in throttled.state.attempts[1:] if a["webhook_id"] == first_try["webhook_id"])
        assert retry["at"] - first_try["at"] >= 2.9  # Retry-After: 3, not the schedule's 1 s
        assert len(rejecting.state.attempts) == 2  # one per event, never again
        assert set(CallbackEvent.objects.filter(endpoint__name="rejecting").values_list("state", flat=True)) == {
            State.FAILED
        }


def test_an_endpoint_failing_past_the_limit_is_disabled_and_audited(tmp_path):
    with receiving() as receiver:
        endpoint = register(receiver)
        receiver.state.mode = {"mode": "error"}
        sent_and_delivered(1)
        with callbacks_cluster(tmp_path, CALLBACK_DISABLE_AFTER="2") as callbacks:
            wait_or_fail(
                lambda: not CallbackEndpoint.objects.get(pk=endpoint.pk).enabled,
                timeout=30,
                what="the endpoint disabled",
                processes=(callbacks,),
            )
        endpoint.refresh_from_db()
        assert "disabled automatically" in endpoint.disabled_reason
        assert ControlAction.objects.filter(action="callback", via="worker", detail__endpoint=endpoint.pk).exists()
