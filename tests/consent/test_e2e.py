"""End to end with real processes: a STOP sent by `manage.py fakeprovider` as a signed reply,
through a live web server, stops every message to that number that `manage.py qcluster`
would send, except the one confirmation; START lets them through again."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from audit.services import Via
from consent.models import Consent, InboundMessage
from consent.services import consent_set
from dispatcher.engine.providers.webhook import WebhookProvider
from dispatcher.state import dispatcher_configure, dispatcher_start, dispatcher_stop
from messages_app.models import Message
from tests.factories import MESSAGE_CLIENT_PERMS, make_user, token_for
from tests.processes import drain, fake_provider, http_json, logs_of, provider_requests, qcluster_running, wait_for

pytestmark = [pytest.mark.process, pytest.mark.django_db(transaction=True)]

SECRET = "whsec_" + base64.b64encode(b"inbound signing key for the e2e").decode()
NUMBER = "+12125550123"
OTHER = "+12125550124"
Status = Message.Status


def signed(body: str, *, webhook_id: str, secret: str = SECRET) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "Content-Type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, now, body),
    }


def test_stop_through_the_live_server_suppresses_and_confirms_once_and_start_reenables(live_server, settings, tmp_path):
    settings.DISPATCHER = {**settings.DISPATCHER, "INBOUND_SECRET": SECRET}
    dispatcher_stop()
    dispatcher_configure(batch_size=10, interval_seconds=1)
    api = requests.Session()
    api.headers["Authorization"] = f"Token {token_for(make_user(username='app', perms=MESSAGE_CLIENT_PERMS))}"

    def create(number: str, content: str) -> requests.Response:
        return api.post(
            f"{live_server.url}/api/messages/", json={"recipient_phone_number": number, "content": content}, timeout=10
        )

    queued = [create(NUMBER, f"queued {i}").json()["id"] for i in range(3)]
    assert create(OTHER, "to someone else").status_code == 201

    with fake_provider(
        tmp_path, "--inbound-url", f"{live_server.url}/api/inbound/", "--inbound-secret", SECRET
    ) as provider:
        # The person replies STOP; the provider reports it, signed, to the live server.
        answer = http_json("POST", provider.url + "_fake/reply", {"from": NUMBER, "text": "Stop please"}, timeout=15)
        assert answer["service_status"] == 200, (answer, logs_of(provider))
        assert Consent.objects.get(phone_number=NUMBER).status == Consent.Status.OPTED_OUT

        # The next create is refused, naming why.
        refused = create(NUMBER, "one more")
        assert refused.status_code == 422 and "opted out" in refused.json()["recipient_phone_number"][0]

        # A replay of a reply, and a forged one, change nothing.
        body = json.dumps({"from": NUMBER, "text": "START"})
        replay_id = f"msg_{uuid.uuid4().hex}"
        inbound = f"{live_server.url}/api/inbound/"
        assert requests.post(inbound, data=body, headers=signed(body, webhook_id=replay_id), timeout=10).ok
        assert (
            requests.post(inbound, data=body, headers=signed(body, webhook_id=replay_id), timeout=10).json()["outcome"]
            == "replayed"
        )
        http_json("POST", provider.url + "_fake/reply", {"from": NUMBER, "text": "STOP"}, timeout=15)
        forged_body = json.dumps({"from": NUMBER, "text": "START"})
        forged = requests.post(
            inbound,
            data=forged_body,
            headers=signed(
                forged_body, webhook_id="msg_forged", secret="whsec_" + base64.b64encode(b"x" * 24).decode()
            ),
            timeout=10,
        )
        assert forged.status_code == 401
        assert Consent.objects.get(phone_number=NUMBER).status == Consent.Status.OPTED_OUT
        assert not InboundMessage.objects.filter(inbound_id="msg_forged").exists()

        confirmations = list(
            InboundMessage.objects.filter(from_number=NUMBER)
            .exclude(reply_message=None)
            .values_list("reply_message_id", flat=True)
        )
        with qcluster_running(
            tmp_path,
            DISPATCH_PROVIDER_BACKEND="webhook",
            WEBHOOK_URL=provider.url,
            WEBHOOK_TIMEOUT_SECONDS="5",
            DISPATCH_WINDOW_SECONDS="20",
            QCLUSTER_WORKERS="2",
        ) as cluster:
            dispatcher_start()
            try:
                wait_for(
                    lambda: not Message.objects.filter(status__in=[Status.UNSENT, Status.PROCESSING]).exists(),
                    timeout=30,
                    interval=0.2,
                    what="every message to be sent or suppressed",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{logs_of(cluster, provider)}") from None
            received = http_json("GET", provider.url + "_fake/requests")

            # Queued before the STOP: suppressed, never at the provider.
            assert set(Message.objects.filter(pk__in=queued).values_list("status", flat=True)) == {Status.SUPPRESSED}
            to_them = [r["content"] for r in received if r["to"] == NUMBER]
            replies = list(
                Message.objects.filter(pk__in=confirmations).order_by("pk").values_list("content", flat=True)
            )
            # Each keyword reply's answer went out exactly once (STOP, START, STOP), and nothing else to them.
            assert sorted(to_them) == sorted(replies) and len(replies) == 3, logs_of(cluster, provider)
            assert not any(c.startswith("queued") for c in to_them)
            assert [r["content"] for r in received if r["to"] == OTHER] == ["to someone else"]

            # START lets messages through again.
            http_json("POST", provider.url + "_fake/reply", {"from": NUMBER, "text": "START"}, timeout=15)
            again = create(NUMBER, "welcome back")
            assert again.status_code == 201, again.content
            wait_for(
                lambda: Message.objects.get(pk=again.json()["id"]).status == Status.SENT,
                timeout=30,
                interval=0.2,
                what="the message after START to be sent",
            )
            dispatcher_stop()


class ThreadedWebhookProvider(WebhookProvider):
    """The webhook backend sending from threads (`send`), as the other backends do: the
    check just before each send is carried out by both of the chunk's drivers."""

    sends_async = False


@pytest.mark.parametrize("backend", ["webhook", f"{__name__}.ThreadedWebhookProvider"])
def test_a_stop_recorded_mid_chunk_lets_no_later_send_of_that_chunk_through(tmp_path, backend):
    # One chunk of 40 messages to one number, 2 at a time through a provider that takes
    # 0.3 s a request: about 6 s of sending, its opt-out check at the start long past
    # when the STOP is recorded, a second in.
    total, latency = 40, 0.3
    Message.objects.bulk_create(Message(recipient_phone_number=NUMBER, content=f"mid-chunk {i}") for i in range(total))
    dispatcher_start()  # `dispatcher drain` sends only while the dispatcher runs
    with fake_provider(tmp_path, "--latency-ms", str(int(latency * 1000))) as provider:
        env = {
            "PROVIDERS": "primary",
            "PROVIDER_PRIMARY_BACKEND": backend,
            "PROVIDER_PRIMARY_URL": provider.url,
            "WEBHOOK_TIMEOUT_SECONDS": "5",
            "DISPATCH_CONCURRENCY": "2",
            "DISPATCH_CHUNK_SIZE": str(total),
            "DISPATCH_WINDOW_SECONDS": "60",
        }
        with drain(tmp_path, "drain", "--batch-size", str(total), **env) as sender:
            wait_for(
                lambda: Message.objects.filter(status=Status.SENT).count() >= 2,
                timeout=30,
                what="the chunk's first sends",
            )
            consent_set(phone_number=NUMBER, status=Consent.Status.OPTED_OUT, method=Consent.Method.API, via=Via.API)
            committed_at = time.time()  # the service returns after its commit: on this host's clock
            wait_for(lambda: sender.popen.poll() is not None, timeout=60, what="the drain")
            assert sender.popen.returncode == 0, logs_of(sender)
        received = provider_requests(provider.url)

    # A request's start is its answer's time less the provider's latency; 50 ms of margin
    # for the check just before a send that the STOP's commit overtook.
    started_after = [r for r in received if r["received_at"] - latency > committed_at + 0.05]
    assert started_after == [], logs_of(sender)
    statuses = Counter(Message.objects.values_list("status", flat=True))
    assert statuses[Status.SENT] == len(received) and statuses[Status.SENT] < total / 2, statuses
    assert statuses[Status.SENT] + statuses[Status.SUPPRESSED] == total, statuses
