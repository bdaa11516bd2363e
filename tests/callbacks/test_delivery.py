"""Delivery in this process against the tests' own HTTP endpoint: signed (checked by the
`standardwebhooks` package on the receiving side), retried on 5xx, timeouts, dropped
connections and 429 (after its Retry-After), not retried on another 4xx or a redirect,
endpoints disabled after failing too long; and SSRF refusals (callbacks.delivery,
callbacks.addresses, callbacks.transport)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from audit.models import ControlAction
from callbacks.addresses import UnsafeCallbackURL, target_resolved
from callbacks.delivery import claim_deliver, claims_take
from callbacks.models import CallbackAttempt, CallbackEndpoint, CallbackEvent
from callbacks.services import endpoint_create, endpoint_replay, endpoint_rotate_secret, event_resend
from messages_app.transitions import message_cancel
from tests.factories import make_message

pytestmark = pytest.mark.django_db

State = CallbackEvent.State


def _register(receiver, **kwargs):
    registered = endpoint_create(name="app", url=receiver.url, **kwargs)
    receiver.state.secrets = [registered.secret]
    return registered.endpoint


def _events(n: int) -> list[int]:
    ids = []
    for _ in range(n):
        message = make_message()
        message_cancel(message_id=message.pk)
        ids.append(message.pk)
    return ids


def _deliver_round() -> dict:
    totals: dict[str, int] = {}
    for claim in claims_take():
        for outcome, count in claim_deliver(endpoint_id=claim.endpoint_id, claim_token=claim.claim_token).items():
            totals[outcome] = totals.get(outcome, 0) + count
    return totals


def _mode(receiver, **mode):
    receiver.state.mode = mode


def test_events_are_delivered_signed_once_each(receiver):
    endpoint = _register(receiver)
    message_ids = _events(3)
    assert _deliver_round() == {"delivered": 3}
    got = receiver.state.events
    assert sorted(e["data"]["message_id"] for e in got) == sorted(message_ids)
    assert len({e["webhook_id"] for e in got}) == 3 and receiver.state.refused == 0
    assert all(e["type"] == "message.cancelled" and e["data"]["sequence"] == 1 for e in got)
    assert set(CallbackEvent.objects.values_list("state", flat=True)) == {State.DELIVERED}
    endpoint.refresh_from_db()
    assert endpoint.last_success_at and endpoint.failures_in_row == 0 and endpoint.last_latency_ms is not None
    assert _deliver_round() == {}


def test_a_wrong_secret_is_refused_by_the_receiver(receiver):
    _register(receiver)
    receiver.state.secrets = ["whsec_" + "A" * 32]
    _events(1)
    assert _deliver_round() == {"failed": 1}  # 401: a 4xx, not retried
    assert receiver.state.refused == 1


def test_5xx_is_retried_on_the_schedule_then_delivered(receiver, settings):
    settings.CALLBACKS = {**settings.CALLBACKS, "retry_schedule": (0, 0.2, 0.2, 0.2)}
    endpoint = _register(receiver)
    _events(2)
    _mode(receiver, mode="error")
    assert _deliver_round().get("retry")
    endpoint.refresh_from_db()
    assert endpoint.failures_in_row == 1 and endpoint.retry_at is not None
    assert _deliver_round() == {}  # waiting for its retry
    _mode(receiver, mode="ok")
    import time

    time.sleep(0.3)
    rounds = [_deliver_round() for _ in range(3)]
    assert CallbackEvent.objects.filter(state=State.DELIVERED).count() == 2, rounds
    attempts = list(CallbackAttempt.objects.order_by("id").values_list("http_status", "outcome"))
    assert (503, "retry") in attempts and (204, "delivered") in attempts


def test_the_last_retry_gives_the_event_up(receiver, settings):
    settings.CALLBACKS = {**settings.CALLBACKS, "retry_schedule": (0, 0)}
    _register(receiver)
    _events(1)
    _mode(receiver, mode="drop")
    _deliver_round()
    _deliver_round()
    [event] = CallbackEvent.objects.all()
    assert event.state == State.FAILED and event.attempts == 2


def test_429_waits_for_its_retry_after(receiver):
    endpoint = _register(receiver)
    _events(1)
    _mode(receiver, mode="throttle", retry_after=120)
    assert _deliver_round() == {"retry": 1}
    endpoint.refresh_from_db()
    [event] = CallbackEvent.objects.all()
    assert 115 <= (event.next_attempt_at - timezone.now()).total_seconds() <= 121
    assert 115 <= (endpoint.retry_at - timezone.now()).total_seconds() <= 121


@pytest.mark.parametrize(("mode", "status"), [("reject", 400), ("redirect", 302)])
def test_a_4xx_or_a_redirect_is_not_retried(receiver, mode, status):
    _register(receiver)
    _events(1)
    _mode(receiver, mode=mode)
    assert _deliver_round() == {"failed": 1}
    [event] = CallbackEvent.objects.all()
    assert event.state == State.FAILED and event.last_http_status == status
    assert receiver.state.requests == 1  # the redirect was not followed (its target is 169.254.169.254)


def test_a_timeout_is_retried_and_stops_the_rest_of_the_batch(receiver, settings):
    settings.CALLBACKS = {**settings.CALLBACKS, "timeout_seconds": 0.3, "concurrency": 1}
    _register(receiver)
    _events(5)
    _mode(receiver, mode="hang", delay=1)
    assert _deliver_round() == {"retry": 1}
    assert CallbackEvent.objects.filter(attempts=0, state=State.PENDING).count() == 4


def test_an_endpoint_failing_longer_than_the_limit_is_disabled_and_audited(receiver, settings):
    settings.CALLBACKS = {**settings.CALLBACKS, "retry_schedule": (0, 0, 0, 0, 0)}
    endpoint = _register(receiver)
    _events(1)
    _mode(receiver, mode="error")
    _deliver_round()
    CallbackEndpoint.objects.filter(pk=endpoint.pk).update(failing_since=timezone.now() - timedelta(days=5, seconds=1))
    _deliver_round()
    endpoint.refresh_from_db()
    assert not endpoint.enabled and "disabled automatically" in endpoint.disabled_reason
    audit = ControlAction.objects.filter(action="callback", via="worker").get()
    assert audit.detail["disabled"] is True
    _events(1)  # a disabled endpoint gets no new events
    assert CallbackEvent.objects.count() == 1


def test_rotation_signs_with_both_secrets_during_the_overlap(receiver):
    endpoint = _register(receiver)
    old_secret = receiver.state.secrets[0]
    new_secret = endpoint_rotate_secret(endpoint_id=endpoint.pk, overlap_seconds=3600).secret
    assert new_secret != old_secret
    for only in (old_secret, new_secret):
        receiver.state.secrets = [only]
        CallbackEvent.objects.all().delete()
        _events(1)
        assert _deliver_round() == {"delivered": 1}, only


def test_resend_and_replay_deliver_again(receiver):
    endpoint = _register(receiver)
    _events(2)
    _deliver_round()
    event = CallbackEvent.objects.order_by("id").first()
    event_resend(event_id=event.pk)
    assert _deliver_round() == {"delivered": 1}
    assert endpoint_replay(endpoint_id=endpoint.pk, since=timezone.now() - timedelta(hours=1)) == 2
    assert _deliver_round() == {"delivered": 2}
    assert len(receiver.state.events) == 5


# --- server-side request forgery ------------------------------------------------------------


@pytest.fixture
def no_private_networks(settings):
    settings.CALLBACKS = {**settings.CALLBACKS, "allowed_networks": ()}


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hooks",
        "http://10.1.2.3/hooks",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost/hooks",  # a name that resolves to loopback
        "http://[::1]/hooks",
        "http://192.168.0.10/",
        "http://0.0.0.0/",
    ],
)
def test_private_loopback_link_local_and_metadata_addresses_are_refused(no_private_networks, url):
    with pytest.raises(UnsafeCallbackURL):
        target_resolved(url)
    with pytest.raises(ValidationError):
        endpoint_create(name="x", url=url)


def test_https_only_unless_allowed(settings):
    settings.CALLBACKS = {**settings.CALLBACKS, "allow_http": False}
    with pytest.raises(UnsafeCallbackURL, match="https"):
        target_resolved("http://127.0.0.1/")
    with pytest.raises(UnsafeCallbackURL, match="user name"):
        target_resolved("https://user:pw@127.0.0.1/")


def test_the_address_is_checked_again_at_send_time(receiver, settings):
    """Registered while allowed; at send time the same address is no longer: nothing is sent."""
    _register(receiver)
    _events(1)
    settings.CALLBACKS = {**settings.CALLBACKS, "allowed_networks": ()}
    assert _deliver_round() == {"failed": 1}
    [event] = CallbackEvent.objects.all()
    assert event.last_error.startswith("refused:") and receiver.state.requests == 0
