"""A message's lifecycle beyond sending: cancel (API, admin action, audit), expiry (create
validation, the claim, the upkeep, retries, lease recovery, the chunk), priority (the claim's
order and the share it keeps for lower levels) and the CSV import of both."""

from __future__ import annotations

import datetime as dt
import io
import itertools
import re
import time
from collections import Counter

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.test import Client
from django.utils import timezone

from audit.models import ControlAction
from dispatcher.conf import dispatcher_settings
from dispatcher.engine.claiming import claim_batch, expire_overdue, recover_expired_leases
from dispatcher.engine.pipeline import send_chunk
from dispatcher.engine.providers import BaseProvider, ProviderError, ProviderResult, locmem
from messages_app.models import DeliveryAttempt, Message
from messages_app.permissions import CANCEL_MESSAGE
from messages_app.transitions import database_now
from tests.factories import claimed_message, deliver, grant, make_message, make_user, phone_number

Status = Message.Status
Priority = Message.Priority
Outcome = DeliveryAttempt.Outcome

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/messages_app/message/"
ADD = "/admin/messages_app/message/add/"


def cancel_url(pk) -> str:
    return f"/api/messages/{pk}/cancel/"


def claim(batch_size: int) -> list[int]:
    with transaction.atomic():
        return claim_batch(batch_size=batch_size).message_ids


def status_of(message: Message) -> str:
    return Message.objects.values_list("status", flat=True).get(pk=message.pk)


@pytest.fixture
def canceller(user):
    """An API client's user who may also cancel (not staff)."""
    return grant(user, CANCEL_MESSAGE)


@pytest.fixture
def admin_client_(client):
    client.force_login(make_user(username="root", superuser=True))
    return client


def flash_messages(response) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]


# --- cancel: the API ------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduled", [False, True], ids=["unsent", "scheduled"])
def test_cancel_moves_an_unsent_or_scheduled_message_to_cancelled(client_for, canceller, scheduled):
    later = timezone.now() + dt.timedelta(hours=1)
    message = make_message(send_after=later if scheduled else None, next_attempt_at=later if scheduled else None)

    response = client_for(canceller).post(cancel_url(message.pk))

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled"
    stored = Message.objects.get(pk=message.pk)
    assert (stored.status, stored.next_attempt_at) == (Status.CANCELLED, None)
    assert claim(10) == []  # never sent


@pytest.mark.parametrize(
    "status", [Status.PROCESSING, Status.SENT, Status.FAILED, Status.EXPIRED, Status.CANCELLED], ids=str
)
def test_cancel_of_a_message_being_sent_or_done_is_409_and_changes_nothing(client_for, canceller, status):
    message = claimed_message() if status == Status.PROCESSING else make_message(status=status)

    response = client_for(canceller).post(cancel_url(message.pk))

    assert response.status_code == 409, response.content
    assert status in response.json()["detail"]
    assert status_of(message) == status
    assert not ControlAction.objects.exists()  # a refused call records nothing


def test_cancel_is_recorded_in_the_audit_log(client_for, canceller):
    message = make_message()

    client_for(canceller).post(cancel_url(message.pk))

    entry = ControlAction.objects.get()
    assert (entry.action, entry.via, entry.actor_id, entry.actor_label) == (
        ControlAction.Action.CANCEL,
        ControlAction.Via.API,
        canceller.pk,
        canceller.username,
    )
    assert entry.detail == {"message_ids": [message.pk], "count": 1}


def test_cancel_needs_the_cancel_permission_or_staff(api_client, staff_client):
    message = make_message()

    refused = api_client.post(cancel_url(message.pk))  # may read and queue, not cancel

    assert refused.status_code == 403
    assert status_of(message) == Status.UNSENT
    assert staff_client.post(cancel_url(message.pk)).status_code == 200
    assert status_of(message) == Status.CANCELLED


def test_cancel_of_an_unknown_message_is_404(client_for, canceller):
    assert client_for(canceller).post(cancel_url(999_999)).status_code == 404


# --- cancel: the admin action -----------------------------------------------------------------------


def test_the_admin_action_cancels_only_the_unsent_and_reports_counts(admin_client_):
    unsent = [make_message(), make_message(send_after=timezone.now() + dt.timedelta(days=1))]
    processing = claimed_message()
    sent = make_message(status=Status.SENT)
    untouched = make_message()
    selected = [*unsent, processing, sent]

    response = admin_client_.post(
        CHANGELIST, {"action": "cancel_queued", "_selected_action": [m.pk for m in selected], "index": "0"}
    )

    assert response.status_code == 302
    assert [status_of(m) for m in selected] == [Status.CANCELLED, Status.CANCELLED, Status.PROCESSING, Status.SENT]
    assert status_of(untouched) == Status.UNSENT
    assert flash_messages(response) == [
        ("success", "Cancelled 2 unsent message(s)."),
        ("warning", "Skipped 2 message(s) that were not unsent (being sent, or done)."),
    ]
    entry = ControlAction.objects.get()
    assert (entry.action, entry.via, entry.actor_label) == (
        ControlAction.Action.CANCEL,
        ControlAction.Via.ADMIN,
        "root",
    )
    assert sorted(entry.detail.pop("message_ids")) == sorted(m.pk for m in selected)
    assert entry.detail == {"selected": 4, "count": 2}


def test_the_admin_action_is_not_offered_without_the_cancel_permission(client):
    viewer = make_user(username="viewer", staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_message", "change_message"]))
    client.force_login(viewer)
    message = make_message()

    page = client.get(CHANGELIST)
    client.post(CHANGELIST, {"action": "cancel_queued", "_selected_action": [message.pk], "index": "0"})

    assert b"cancel_queued" not in page.content
    assert status_of(message) == Status.UNSENT
    assert not ControlAction.objects.exists()


# --- cancel: a message's own page ----------------------------------------------------------------


def change_url(pk) -> str:
    return f"/admin/messages_app/message/{pk}/change/"


def admin_cancel_url(pk) -> str:
    return f"/admin/messages_app/message/{pk}/cancel/"


@pytest.mark.parametrize("scheduled", [False, True], ids=["unsent", "scheduled"])
def test_an_unsent_or_scheduled_message_s_page_has_a_cancel_button_that_cancels_it(admin_client_, scheduled):
    message = make_message(send_after=timezone.now() + dt.timedelta(days=1) if scheduled else None)

    page = admin_client_.get(change_url(message.pk)).content.decode()
    assert f'action="{admin_cancel_url(message.pk)}"' in page
    assert 'id="message-cancel"' in page

    response = admin_client_.post(admin_cancel_url(message.pk))

    assert response.status_code == 302 and response["Location"] == change_url(message.pk)
    assert flash_messages(response) == [("success", f"Cancelled message #{message.pk}: it will not be sent.")]
    assert status_of(message) == Status.CANCELLED
    entry = ControlAction.objects.get()
    assert (entry.action, entry.via, entry.actor_label, entry.detail) == (
        ControlAction.Action.CANCEL,
        ControlAction.Via.ADMIN,
        "root",
        {"message_ids": [message.pk], "count": 1},
    )
    assert 'id="message-cancel"' not in admin_client_.get(change_url(message.pk)).content.decode()


@pytest.mark.parametrize("status", [Status.SENT, Status.FAILED, Status.CANCELLED, Status.EXPIRED])
def test_only_an_unsent_message_s_page_offers_cancel(admin_client_, status):
    message = make_message(status=status)
    assert 'id="message-cancel"' not in admin_client_.get(change_url(message.pk)).content.decode()


def test_cancelling_a_message_a_worker_took_meanwhile_says_why_and_changes_nothing(admin_client_):
    message = claimed_message()

    response = admin_client_.post(admin_cancel_url(message.pk))

    assert response.status_code == 302
    assert flash_messages(response) == [
        ("error", "Only unsent or scheduled messages can be cancelled; this one is processing.")
    ]
    assert status_of(message) == Status.PROCESSING
    assert not ControlAction.objects.exists()


def test_the_cancel_button_needs_the_cancel_permission_and_a_post(admin_client_):
    message = make_message()
    viewer = make_user(username="viewer", staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_message", "delete_message"]))
    client = Client()
    client.force_login(viewer)

    assert 'id="message-cancel"' not in client.get(change_url(message.pk)).content.decode()
    assert client.post(admin_cancel_url(message.pk)).status_code == 403
    assert admin_client_.get(admin_cancel_url(message.pk)).status_code == 403
    assert admin_client_.post(admin_cancel_url(999_999)).status_code == 404
    assert status_of(message) == Status.UNSENT
    assert not ControlAction.objects.exists()


def test_the_admin_filters_by_delivery_outcome_and_priority(admin_client_):
    delivered = make_message(status=Status.SENT, delivery_status=Message.Delivery.DELIVERED)
    undelivered = make_message(status=Status.SENT, delivery_status=Message.Delivery.UNDELIVERED)
    high = make_message(priority=Priority.HIGH)

    def listed(**params) -> list[int]:
        response = admin_client_.get(CHANGELIST, params)
        assert response.status_code == 200
        return [m.pk for m in response.context["cl"].result_list]

    assert listed(delivery_status__exact="delivered") == [delivered.pk]
    assert listed(delivery_status__exact="undelivered") == [undelivered.pk]
    assert listed(priority__exact="high") == [high.pk]


# --- expiry: on create ------------------------------------------------------------------------------


def test_create_takes_an_expiry_and_a_priority(api_client):
    expires = timezone.now() + dt.timedelta(hours=1)

    response = api_client.post(
        "/api/messages/",
        {"recipient_phone_number": "+905551112233", "content": "hi", "expires_at": expires, "priority": "high"},
        format="json",
    )

    assert response.status_code == 201, response.content
    stored = Message.objects.get()
    assert (stored.expires_at, stored.priority) == (expires, Priority.HIGH)
    assert response.json()["priority"] == "high"


def test_create_without_them_has_no_expiry_and_normal_priority(api_client):
    response = api_client.post("/api/messages/", {"recipient_phone_number": "+905551112233", "content": "hi"})

    assert (response.json()["expires_at"], response.json()["priority"]) == (None, "normal")


@pytest.mark.parametrize(
    ("expires_in", "send_after_in", "error"),
    [
        (dt.timedelta(minutes=-1), None, "expires_at must be in the future."),
        (dt.timedelta(seconds=0), None, "expires_at must be in the future."),
        (dt.timedelta(hours=1), dt.timedelta(hours=2), "expires_at must be after send_after."),
        (dt.timedelta(hours=1), dt.timedelta(hours=1), "expires_at must be after send_after."),
    ],
    ids=["past", "now", "before-send-after", "at-send-after"],
)
def test_create_refuses_an_expiry_that_could_never_be_met(api_client, expires_in, send_after_in, error):
    now = timezone.now()
    body = {"recipient_phone_number": "+905551112233", "content": "hi", "expires_at": now + expires_in}
    if send_after_in is not None:
        body["send_after"] = now + send_after_in

    single = api_client.post("/api/messages/", body, format="json")
    bulk = api_client.post("/api/messages/bulk/", {"messages": [body]}, format="json")

    assert single.status_code == 400
    assert single.json() == {"expires_at": [error]}
    assert bulk.status_code == 400
    assert not Message.objects.exists()


def test_create_refuses_an_unknown_priority(api_client):
    response = api_client.post(
        "/api/messages/", {"recipient_phone_number": "+905551112233", "content": "hi", "priority": "urgent"}
    )

    assert response.status_code == 400
    assert "priority" in response.json()


def test_the_seed_route_keeps_the_go_services_fields(api_client):
    response = api_client.post(
        "/messages",
        {"recipient_phone_number": "+905551112233", "content": "hi", "expires_at": "2099-01-01T00:00:00Z"},
        format="json",
    )

    assert response.status_code == 400
    assert "expires_at: Unknown field." in response.json()["fail"]["reason"]


def test_the_admin_add_form_takes_an_expiry_and_a_priority(admin_client_):
    expires = timezone.localtime() + dt.timedelta(days=1)

    response = admin_client_.post(
        ADD,
        {
            "recipient_phone_number": "+905551112233",
            "content": "from the admin",
            "expires_at_0": expires.strftime("%Y-%m-%d"),
            "expires_at_1": expires.strftime("%H:%M:%S"),
            "priority": "low",
        },
    )

    assert response.status_code == 302, response.context["adminform"].form.errors
    stored = Message.objects.get()
    assert (stored.expires_at, stored.priority, stored.segments) == (expires.replace(microsecond=0), Priority.LOW, 1)


def test_the_admin_add_form_refuses_a_past_expiry(admin_client_):
    past = timezone.localtime() - dt.timedelta(hours=1)

    response = admin_client_.post(
        ADD,
        {
            "recipient_phone_number": "+905551112233",
            "content": "hi",
            "expires_at_0": past.strftime("%Y-%m-%d"),
            "expires_at_1": past.strftime("%H:%M:%S"),
        },
    )

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["expires_at"] == ["expires_at must be in the future."]
    assert not Message.objects.exists()


# --- expiry: never sent after it ----------------------------------------------------------------------


def past_expiry(**fields) -> Message:
    """An unsent message whose expiry has just passed (creation refuses a past expiry: time went by)."""
    return make_message(expires_at=database_now() - dt.timedelta(seconds=1), **fields)


def test_the_claim_skips_a_message_past_its_expiry():
    expired = past_expiry()
    live = make_message(expires_at=database_now() + dt.timedelta(minutes=5))
    forever = make_message()

    assert sorted(claim(10)) == sorted([live.pk, forever.pk])
    assert status_of(expired) == Status.UNSENT  # left for the upkeep to mark


def test_the_upkeep_expires_unsent_messages_past_their_expiry_only():
    expired = [past_expiry(), past_expiry(send_after=database_now() - dt.timedelta(minutes=1))]
    live = make_message(expires_at=database_now() + dt.timedelta(minutes=5))
    processing = claimed_message(expires_at=database_now() - dt.timedelta(seconds=1))  # the chunk decides
    sent = make_message(status=Status.SENT, expires_at=database_now() - dt.timedelta(seconds=1))

    assert expire_overdue() == 2

    assert [status_of(m) for m in expired] == [Status.EXPIRED, Status.EXPIRED]
    assert Message.objects.get(pk=expired[0].pk).next_attempt_at is None
    assert (status_of(live), status_of(processing), status_of(sent)) == (Status.UNSENT, Status.PROCESSING, Status.SENT)
    assert expire_overdue() == 0


@pytest.fixture
def slow_retries(settings):
    """The first retry comes 5 to 10 s after a transient failure."""
    settings.DISPATCHER = {**settings.DISPATCHER, "MAX_ATTEMPTS": 5, "RETRY_BASE_SECONDS": 10, "RETRY_MAX_SECONDS": 10}


def test_a_retry_that_would_come_after_the_expiry_expires_the_message_instead(slow_retries):
    message = claimed_message(expires_at=database_now() + dt.timedelta(seconds=3))
    locmem.failures.append(ProviderError("provider answered HTTP 503: busy", http_status=503))

    outcome = deliver(message, locmem.LocmemProvider())

    assert outcome.outcome == Outcome.EXPIRED
    stored = Message.objects.get(pk=message.pk)
    assert (stored.status, stored.attempts, stored.next_attempt_at, stored.claim_token) == (
        Status.EXPIRED,
        1,
        None,
        None,
    )
    assert "503" in stored.last_error
    assert claim(10) == []


def test_a_retry_that_comes_before_the_expiry_is_scheduled_as_usual(slow_retries):
    message = claimed_message(expires_at=database_now() + dt.timedelta(minutes=5))
    locmem.failures.append(ProviderError("provider answered HTTP 503: busy", http_status=503))

    assert deliver(message, locmem.LocmemProvider()).outcome == Outcome.RETRY
    assert status_of(message) == Status.UNSENT


@pytest.mark.parametrize("started", [True, False], ids=["tried", "never-started"])
def test_lease_recovery_expires_a_message_past_its_expiry_instead_of_requeueing_it(started):
    message = claimed_message(expires_at=database_now() + dt.timedelta(minutes=5))
    keeps_going = claimed_message(expires_at=database_now() + dt.timedelta(minutes=5))
    past = database_now() - dt.timedelta(seconds=1)
    # Its worker died; meanwhile the lease and the expiry ran out.
    Message.objects.filter(pk__in=[message.pk, keeps_going.pk]).update(
        lease_expires_at=past, sending_started_at=past - dt.timedelta(seconds=5) if started else None
    )
    Message.objects.filter(pk=message.pk).update(expires_at=past)

    assert recover_expired_leases() == 2

    stored = Message.objects.get(pk=message.pk)
    assert (stored.status, stored.next_attempt_at, stored.claim_token, stored.lease_expires_at) == (
        Status.EXPIRED,
        None,
        None,
        None,
    )
    assert status_of(keeps_going) == Status.UNSENT
    assert claim(10) == [keeps_going.pk]


def test_a_chunk_that_starts_after_the_expiry_sends_nothing():
    message = claimed_message(expires_at=database_now() + dt.timedelta(minutes=5))
    # The chunk task waited in the queue past the expiry.
    Message.objects.filter(pk=message.pk).update(expires_at=database_now() - dt.timedelta(seconds=1))

    report = send_chunk(message_ids=[message.pk], claim_token=message.claim_token, provider=locmem.LocmemProvider())

    assert locmem.outbox == []
    assert (report.expired, report.outcomes) == (1, [])
    assert status_of(message) == Status.EXPIRED
    attempt = DeliveryAttempt.objects.get(message=message)
    assert (attempt.outcome, attempt.number, attempt.http_status) == (Outcome.EXPIRED, 1, None)


def test_a_chunk_sends_the_live_messages_and_expires_the_rest(settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "CONCURRENCY": 4}
    future = database_now() + dt.timedelta(minutes=5)
    messages = [make_message(expires_at=future) for _ in range(5)]
    with transaction.atomic():
        held = claim_batch(batch_size=10)
    expired = messages[1::2]
    Message.objects.filter(pk__in=[m.pk for m in expired]).update(expires_at=database_now() - dt.timedelta(seconds=1))

    report = send_chunk(message_ids=held.message_ids, claim_token=held.claim_token, provider=locmem.LocmemProvider())

    assert sorted(e.message_pk for e in locmem.outbox) == sorted(m.pk for m in messages[0::2])
    assert report.expired == 2
    assert [status_of(m) for m in messages] == [Status.SENT, Status.EXPIRED, Status.SENT, Status.EXPIRED, Status.SENT]


class SlowProvider(BaseProvider):
    """Takes `seconds` per send; records when each send began."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started: dict[int, dt.datetime] = {}

    def send(self, message: Message) -> ProviderResult:
        self.started[message.pk] = timezone.now()
        time.sleep(self.seconds)
        return ProviderResult(message_id=f"slow-{message.uuid}", http_status=202)


def test_a_message_that_expires_while_the_chunk_sends_others_is_not_sent(settings):
    settings.DISPATCHER = {**settings.DISPATCHER, "CONCURRENCY": 1}
    first = make_message()
    second = make_message(expires_at=database_now() + dt.timedelta(seconds=1))
    with transaction.atomic():
        held = claim_batch(batch_size=10)
    assert held.message_ids == [first.pk, second.pk]
    provider = SlowProvider(1.5)  # the first send outlasts the second's expiry

    send_chunk(message_ids=held.message_ids, claim_token=held.claim_token, provider=provider)

    assert list(provider.started) == [first.pk]
    assert (status_of(first), status_of(second)) == (Status.SENT, Status.EXPIRED)


# --- priority -------------------------------------------------------------------------------------


def queue(count: int, priority: str, *, due_offset: dt.timedelta = dt.timedelta(0)) -> list[int]:
    due = database_now() - dt.timedelta(seconds=1) + due_offset
    created = Message.objects.bulk_create(
        Message(
            recipient_phone_number=phone_number(), content=f"{priority} {i}", priority=priority, next_attempt_at=due
        )
        for i in range(count)
    )
    return [m.pk for m in created]


def priorities_of(ids: list[int]) -> Counter[str]:
    return Counter(Message.objects.filter(pk__in=ids).values_list("priority", flat=True))


def test_the_claim_takes_higher_priority_first_then_earliest_due():
    low = queue(1, Priority.LOW, due_offset=-dt.timedelta(minutes=5))  # waiting longest
    normal_late = queue(1, Priority.NORMAL)
    normal_early = queue(1, Priority.NORMAL, due_offset=-dt.timedelta(minutes=1))
    high = queue(1, Priority.HIGH)

    assert claim(4) == high + normal_early + normal_late + low


def test_high_takes_the_whole_batch_when_nothing_lower_waits():
    queue(50, Priority.HIGH)

    assert priorities_of(claim(10)) == {Priority.HIGH: 10}


def test_a_lower_level_takes_what_the_higher_ones_leave():
    queue(3, Priority.HIGH)
    queue(50, Priority.LOW)

    assert priorities_of(claim(10)) == {Priority.HIGH: 3, Priority.LOW: 7}


def test_a_flood_of_high_priority_leaves_low_its_share_of_every_tick():
    """1000 high and 200 low queued, batch 10, share 0.2: every tick while both wait
    gives low at least 20%; once low is done, high takes the whole tick."""
    assert dispatcher_settings().lower_priority_share == 0.2  # the default
    queue(1000, Priority.HIGH)
    queue(200, Priority.LOW)
    ticks: list[Counter[str]] = []

    while Message.objects.filter(status=Status.UNSENT, priority=Priority.LOW).exists():
        ticks.append(priorities_of(claim(10)))
        assert len(ticks) <= 200, "low priority is not progressing"

    low_shares = [tick[Priority.LOW] / sum(tick.values()) for tick in ticks]
    assert min(low_shares) >= 0.2, low_shares
    assert all(tick[Priority.HIGH] > 0 for tick in ticks)  # high keeps the rest: it goes first, not last
    # Measured: low's 200 took 100 ticks of 10 at exactly 2 per tick, while high got 8.
    assert len(ticks) == 100
    assert Counter(tick[Priority.LOW] for tick in ticks) == {2: 100}
    remaining_high = Message.objects.filter(status=Status.UNSENT, priority=Priority.HIGH).count()
    assert remaining_high == 1000 - 8 * 100
    # Low is empty: high first, and alone.
    assert priorities_of(claim(10)) == {Priority.HIGH: 10}


@pytest.mark.parametrize(("share", "low_per_tick"), [(0.0, 0), (0.5, 5), (0.9, 9)])
def test_the_share_is_configurable(settings, share, low_per_tick):
    settings.DISPATCHER = {**settings.DISPATCHER, "LOWER_PRIORITY_SHARE": share}
    queue(100, Priority.HIGH)
    queue(100, Priority.LOW)

    for _ in range(3):
        assert priorities_of(claim(10))[Priority.LOW] == low_per_tick


@pytest.mark.parametrize("batch_size", [10, 50])
def test_a_lower_level_never_gets_more_of_a_tick_than_a_higher_one_still_waiting(batch_size):
    for priority in Priority:
        queue(200, priority)
    order = [Priority.HIGH, Priority.NORMAL, Priority.LOW]

    for _ in range(5):
        taken = priorities_of(claim(batch_size))
        assert sum(taken.values()) == batch_size
        for higher, lower in itertools.pairwise(order):
            # Every level still has messages waiting, so a lower one must never come out ahead.
            assert taken[higher] >= taken[lower], (batch_size, dict(taken))


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_a_batch_too_small_to_split_gives_the_lower_levels_their_share_on_average(batch_size):
    """At batch 1 a 20% share cannot be split: one tick in five goes below, at random;
    over many ticks high still gets most, and every level progresses."""
    for priority in Priority:
        queue(400, priority)
    totals: Counter[str] = Counter()
    ticks = 200 // batch_size

    for _ in range(ticks):
        taken = priorities_of(claim(batch_size))
        assert sum(taken.values()) == batch_size
        totals.update(taken)

    claimed = ticks * batch_size
    assert totals[Priority.HIGH] >= 0.7 * claimed, dict(totals)  # 80% expected
    assert totals[Priority.NORMAL] + totals[Priority.LOW] >= 0.1 * claimed, dict(totals)  # 20% expected
    assert totals[Priority.HIGH] > totals[Priority.NORMAL], dict(totals)
    assert totals[Priority.LOW] > 0, dict(totals)  # never starved


# --- the CSV import -------------------------------------------------------------------------------


def import_csv(tmp_path, text: str) -> tuple[str, str]:
    path = tmp_path / "messages.csv"
    path.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("import_messages", str(path), stdout=out, stderr=err)
    except CommandError as exc:  # rows were rejected: the others are stored, the exit status says so
        assert "rejected (listed above)" in str(exc)
    return out.getvalue(), err.getvalue()


def test_the_import_takes_expires_at_and_priority(tmp_path):
    out, err = import_csv(
        tmp_path,
        "recipient_phone_number,content,send_after,expires_at,priority\n"
        "+905551112233,one,,2099-01-31T09:00:00+03:00,high\n"  # 2
        "+905551112234,two,2099-01-01T00:00:00Z,2099-01-02T00:00:00Z,low\n"  # 3
        "+905551112235,three,,,\n"  # 4: neither
        "+905551112236,four,,2099-02-01 12:00,normal\n"  # 5: no offset, TIME_ZONE
        "+905551112237,past,,2000-01-01T00:00:00Z,high\n"  # 6
        "+905551112238,before,2099-01-02T00:00:00Z,2099-01-01T00:00:00Z,\n"  # 7
        "+905551112239,urgent,,,urgent\n"  # 8
        "+905551112230,bad date,,soon,\n",  # 9
    )

    assert out == "Imported 4 messages; 4 rows rejected.\n"
    rejections = [line for line in err.splitlines() if line.startswith("line ")]
    assert rejections == [
        "line 6: expires_at: expires_at must be in the future.",
        "line 7: expires_at: expires_at must be after send_after.",
        "line 8: priority: must be one of high, normal, low.",
        rejections[3],
    ]
    assert rejections[3].startswith("line 9: expires_at: 'soon' is not an ISO 8601 date")
    stored = {m.content: m for m in Message.objects.all()}
    assert (stored["one"].expires_at, stored["one"].priority) == (dt.datetime(2099, 1, 31, 6, 0, tzinfo=dt.UTC), "high")
    assert (stored["two"].expires_at, stored["two"].priority) == (dt.datetime(2099, 1, 2, tzinfo=dt.UTC), "low")
    assert stored["two"].next_attempt_at == dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
    assert (stored["three"].expires_at, stored["three"].priority) == (None, "normal")
    assert stored["four"].expires_at == dt.datetime(2099, 2, 1, 12, 0, tzinfo=dt.UTC)  # TIME_ZONE is UTC here
    assert all(m.segments == 1 for m in stored.values())


# --- seeing it: the dashboard's funnel ---------------------------------------------------------------


def text_of(html: str, element_id: str) -> str:
    match = re.search(rf'id="{re.escape(element_id)}"[^>]*>([^<]*)<', html)
    assert match, f"no element with id={element_id!r}"
    return " ".join(match.group(1).split())


def test_the_dashboard_shows_the_funnel_and_the_delivery_latency(admin_client_):
    now = timezone.now()
    for _ in range(2):
        make_message()
    claimed_message()
    for latency, outcome in ((4, "delivered"), (10, "delivered"), (30, "undelivered"), (None, "")):
        make_message(
            status=Status.SENT,
            sent_at=now - dt.timedelta(minutes=5),
            delivery_status=outcome,
            delivery_status_at=now - dt.timedelta(minutes=5) + dt.timedelta(seconds=latency) if latency else None,
        )
    make_message(status=Status.FAILED)
    make_message(status=Status.EXPIRED)
    for _ in range(2):
        make_message(status=Status.CANCELLED)

    html = admin_client_.get("/admin/dispatcher/dispatcherstate/dashboard/").content.decode()

    funnel = ("queued", "sent", "delivered", "undelivered", "failed", "expired", "cancelled")
    assert {step: text_of(html, f"funnel-{step}") for step in funnel} == {
        "queued": "3",  # unsent and being sent
        "sent": "4",  # accepted by the provider, whatever the receipt said
        "delivered": "2",
        "undelivered": "1",
        "failed": "1",
        "expired": "1",
        "cancelled": "2",
    }
    assert text_of(html, "funnel-latency").startswith(
        "Sent to delivery receipt, last 24 h: median 10.0 s, 95th percentile 30.0 s."
    )
