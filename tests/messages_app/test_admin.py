"""The Django admin: messages (list, add, requeue action) and the dispatcher page."""

import datetime as dt
import re
from html import unescape

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_q.models import OrmQ

from audit.models import ControlAction
from dispatcher.models import DispatcherState
from messages_app.admin import BEING_SENT
from messages_app.models import Message
from tests.factories import make_message, make_user

pytestmark = pytest.mark.django_db

Status = Message.Status

CHANGELIST = "/admin/messages_app/message/"
ADD = "/admin/messages_app/message/add/"


@pytest.fixture
def admin_client_(client) -> Client:
    client.force_login(make_user(username="root", superuser=True))
    return client


def listed_ids(response) -> list[int]:
    return [m.pk for m in response.context["cl"].result_list]


def flash_messages(response) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]


def set_state(**fields) -> DispatcherState:
    fields.setdefault("running", True)
    fields.setdefault("batch_size", 3)
    fields.setdefault("interval_seconds", 60)
    fields.setdefault("next_tick_at", timezone.now() if fields["running"] else None)
    state, _ = DispatcherState.objects.update_or_create(pk=DispatcherState.SINGLETON_PK, defaults=fields)
    return state


# --- message changelist -----------------------------------------------------------------------


def test_changelist_lists_messages_newest_first(admin_client_):
    ids = [make_message(status=s).pk for s in Status]

    response = admin_client_.get(CHANGELIST)

    assert response.status_code == 200
    assert listed_ids(response) == sorted(ids, reverse=True)


@pytest.mark.parametrize("status", list(Status))
def test_changelist_filters_by_status(admin_client_, status):
    by_status = {s: make_message(status=s).pk for s in Status}

    response = admin_client_.get(CHANGELIST, {"status__exact": status.value})

    assert response.status_code == 200
    assert listed_ids(response) == [by_status[status]]


def test_changelist_searches_by_phone_number(admin_client_):
    hit = make_message(recipient_phone_number="+905551112233")
    make_message(recipient_phone_number="+442079460000")

    response = admin_client_.get(CHANGELIST, {"q": "+905551112233"})

    assert response.status_code == 200
    assert listed_ids(response) == [hit.pk]


def test_changelist_searches_content_uuid_and_provider_id(admin_client_):
    by_content = make_message(content="your code is 4711")
    by_uuid = make_message()
    by_provider = make_message(status=Status.SENT, provider_message_id="prov-abc-123")
    make_message(content="unrelated")

    assert listed_ids(admin_client_.get(CHANGELIST, {"q": "4711"})) == [by_content.pk]
    assert listed_ids(admin_client_.get(CHANGELIST, {"q": str(by_uuid.uuid)})) == [by_uuid.pk]
    assert listed_ids(admin_client_.get(CHANGELIST, {"q": "prov-abc-123"})) == [by_provider.pk]


def test_changelist_search_with_a_non_uuid_does_not_error(admin_client_):
    make_message(content="hello")
    response = admin_client_.get(CHANGELIST, {"q": "not-a-uuid"})
    assert response.status_code == 200
    assert listed_ids(response) == []


def test_changelist_date_hierarchy(admin_client_):
    this_year = make_message()
    last_year = make_message()
    a_year_ago = timezone.now() - dt.timedelta(days=400)
    Message.objects.filter(pk=last_year.pk).update(created_at=a_year_ago)

    everything = admin_client_.get(CHANGELIST)
    assert everything.status_code == 200
    assert b"created_at__year" in everything.content  # the hierarchy links

    now = timezone.now()
    month = admin_client_.get(CHANGELIST, {"created_at__year": now.year, "created_at__month": now.month})
    assert month.status_code == 200
    assert listed_ids(month) == [this_year.pk]

    old = admin_client_.get(
        CHANGELIST,
        {"created_at__year": a_year_ago.year, "created_at__month": a_year_ago.month, "created_at__day": a_year_ago.day},
    )
    assert old.status_code == 200
    assert listed_ids(old) == [last_year.pk]


def test_changelist_needs_a_staff_login(client):
    client.force_login(make_user(username="plain"))
    response = client.get(CHANGELIST)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


# --- add ---------------------------------------------------------------------------------------


def test_add_page_loads(admin_client_):
    response = admin_client_.get(ADD)
    assert response.status_code == 200
    assert set(response.context["adminform"].form.fields) == {
        "recipient_phone_number",
        "content",
        "template",
        "personalisation",
        "send_after",
        "expires_at",
        "priority",
        "category",
    }


def test_add_creates_a_normalised_unsent_message(admin_client_):
    response = admin_client_.post(ADD, {"recipient_phone_number": "+90 555 111 22 33", "content": "from the admin"})

    assert response.status_code == 302, response.content
    message = Message.objects.get()
    assert message.recipient_phone_number == "+905551112233"
    assert message.content == "from the admin"
    assert message.status == Status.UNSENT
    assert response["Location"] == CHANGELIST


def test_add_and_continue_goes_to_the_new_message(admin_client_):
    response = admin_client_.post(ADD, {"recipient_phone_number": "+905551112233", "content": "hi", "_continue": "1"})
    assert response.status_code == 302
    message = Message.objects.get()
    assert response["Location"] == f"/admin/messages_app/message/{message.pk}/change/"
    assert admin_client_.get(response["Location"]).status_code == 200


def test_add_keeps_content_as_given_like_the_api(admin_client_):
    admin_client_.post(ADD, {"recipient_phone_number": "+905551112233", "content": "  indented\n"})
    assert Message.objects.get().content == "  indented\n"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"recipient_phone_number": "+90 555 ABC", "content": "hi"}, "recipient_phone_number"),
        ({"recipient_phone_number": "5551112233", "content": "hi"}, "recipient_phone_number"),
        ({"recipient_phone_number": "+90 123 456 78 90", "content": "hi"}, "recipient_phone_number"),
        ({"recipient_phone_number": "", "content": "hi"}, "recipient_phone_number"),
        ({"recipient_phone_number": "+905551112233", "content": ""}, "content"),
        ({"recipient_phone_number": "+905551112233", "content": "   "}, "content"),
        ({"recipient_phone_number": "+905551112233", "content": "a\x00b"}, "content"),
        ({"recipient_phone_number": "+905551112233", "content": "\u200b\ufeff"}, "content"),
        ({"recipient_phone_number": "+905551112233", "content": "\x1b[2Jcleared"}, "content"),
        ({"recipient_phone_number": "+905551112233", "content": "a\rb"}, "content"),
        # times outside the years the service takes (restapi/storable.py)
        (
            {
                "recipient_phone_number": "+905551112233",
                "content": "hi",
                "send_after_0": "2200-01-01",
                "send_after_1": "00:00",
            },
            "send_after",
        ),
        (
            {
                "recipient_phone_number": "+905551112233",
                "content": "hi",
                "expires_at_0": "9999-12-31",
                "expires_at_1": "23:59",
            },
            "expires_at",
        ),
        (
            {
                "recipient_phone_number": "+905551112233",
                "content": "hi",
                "send_after_0": "1970-01-01",
                "send_after_1": "00:00",
            },
            "send_after",
        ),
    ],
)
def test_add_with_invalid_input_shows_a_form_error_and_writes_nothing(admin_client_, data, field):
    response = admin_client_.post(ADD, data)

    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert not Message.objects.exists()


def test_the_browsers_crlf_line_breaks_are_stored_as_newlines(admin_client_):
    admin_client_.post(ADD, {"recipient_phone_number": "+905551112233", "content": "line one\r\nline two"})
    assert Message.objects.get().content == "line one\nline two"


def test_add_with_over_long_content_shows_a_form_error(admin_client_, settings):
    settings.MESSAGE_MAX_LENGTH = 5
    response = admin_client_.post(ADD, {"recipient_phone_number": "+905551112233", "content": "123456"})
    assert response.status_code == 200
    assert "limit is 5" in str(response.context["adminform"].form.errors["content"])
    assert not Message.objects.exists()


def test_an_existing_message_is_read_only(admin_client_):
    message = make_message(content="original")
    url = f"/admin/messages_app/message/{message.pk}/change/"

    page = admin_client_.get(url)
    assert page.status_code == 200
    assert b"original" in page.content
    assert b'name="content"' not in page.content

    response = admin_client_.post(url, {"recipient_phone_number": "+442079460000", "content": "edited"})
    assert response.status_code == 403
    stored = Message.objects.get(pk=message.pk)
    assert (stored.content, stored.recipient_phone_number) == ("original", message.recipient_phone_number)


# --- times -------------------------------------------------------------------------------------


def shown(when: dt.datetime) -> str:
    """The admin's one format for a time: to the second, with the time zone."""
    return f"{timezone.localtime(when):%Y-%m-%d %H:%M:%S} UTC"


def test_the_changelist_and_a_message_page_write_times_to_the_second_with_the_time_zone(admin_client_):
    created = timezone.now().replace(microsecond=0) - dt.timedelta(hours=2, seconds=7)
    sent = created + dt.timedelta(seconds=13)
    message = make_message(status=Status.SENT, sent_at=sent)
    Message.objects.filter(pk=message.pk).update(created_at=created)

    listing = admin_client_.get(CHANGELIST).content.decode()
    page = admin_client_.get(f"/admin/messages_app/message/{message.pk}/change/").content.decode()

    for html in (listing, page):
        assert shown(created) in html
        assert shown(sent) in html
    assert "a.m." not in listing + page and "p.m." not in listing + page  # Django's English default


def test_the_changelist_says_how_long_ago_with_the_full_time_on_hover(admin_client_):
    created = timezone.now() - dt.timedelta(hours=2, minutes=1)
    sent = timezone.now() - dt.timedelta(minutes=5)
    message = make_message(status=Status.SENT, sent_at=sent)
    Message.objects.filter(pk=message.pk).update(created_at=created)

    listing = admin_client_.get(CHANGELIST).content.decode()

    row = re.search(rf'<tr>(?:(?!</tr>).)*value="{message.pk}"(?:(?!</tr>).)*</tr>', listing, re.S).group(0)
    assert re.search(rf'<span title="{shown(created)} \(2 h 1 min ago\)">2 h ago</span>', row), row
    assert re.search(rf'<span title="{shown(sent)} \(5 min ago\)">5 min ago</span>', row), row


def test_a_message_page_writes_each_time_with_how_long_ago_or_how_soon(admin_client_):
    now = timezone.now()
    created, claimed, sent = (
        now - dt.timedelta(hours=2, minutes=1),
        now - dt.timedelta(minutes=3),
        now - dt.timedelta(seconds=90),
    )
    expires = now + dt.timedelta(days=2)
    message = make_message(status=Status.SENT, claimed_at=claimed, sent_at=sent, expires_at=expires)
    Message.objects.filter(pk=message.pk).update(created_at=created)

    page = admin_client_.get(f"/admin/messages_app/message/{message.pk}/change/").content.decode()

    def readonly(field: str) -> str:
        match = re.search(rf'field-{field}\b.*?<div class="readonly">(.*?)</div>', page, re.S)
        assert match, field
        return match.group(1).strip()

    assert readonly("created_at") == f"{shown(created)} (2 h 1 min ago)"
    assert readonly("claimed_at") == f"{shown(claimed)} (3 min ago)"
    assert readonly("sent_at") == f"{shown(sent)} (1 min 30 s ago)"
    assert re.fullmatch(rf"{shown(expires)} \(in (2 d|1 d 23 h)\)", readonly("expires_at")), readonly("expires_at")
    assert readonly("send_after") == "-"


@pytest.mark.parametrize(
    ("status", "delivery", "shown_as"),
    [
        (Status.FAILED, "", "— (not sent)"),
        (Status.UNSENT, "", "— (not sent)"),
        (Status.CANCELLED, "", "— (not sent)"),
        (Status.SENT, "", "No receipt yet"),
        (Status.SENT, Message.Delivery.DELIVERED, "Delivered"),
        (Status.SENT, Message.Delivery.UNDELIVERED, "Undelivered"),
    ],
)
def test_a_message_page_says_no_receipt_only_for_a_sent_message(admin_client_, status, delivery, shown_as):
    message = make_message(status=status, delivery_status=delivery)

    page = admin_client_.get(f"/admin/messages_app/message/{message.pk}/change/").content.decode()

    match = re.search(r'field-delivery\b.*?<div class="readonly">(.*?)</div>', page, re.S)
    assert match and match.group(1).strip() == shown_as


# --- requeue_failed action ----------------------------------------------------------------------


def test_requeue_action_requeues_only_failed_messages_and_reports_counts(admin_client_):
    failed = [make_message(status=Status.FAILED) for _ in range(2)]
    sent = make_message(status=Status.SENT)
    unsent = make_message(status=Status.UNSENT)
    untouched_failed = make_message(status=Status.FAILED)
    selected = [*failed, sent, unsent]

    response = admin_client_.post(
        CHANGELIST, {"action": "requeue_failed", "_selected_action": [m.pk for m in selected], "index": "0"}
    )

    assert response.status_code == 302
    assert {m.pk: Message.objects.get(pk=m.pk).status for m in selected} == {
        failed[0].pk: Status.UNSENT,
        failed[1].pk: Status.UNSENT,
        sent.pk: Status.SENT,
        unsent.pk: Status.UNSENT,
    }
    assert Message.objects.get(pk=untouched_failed.pk).status == Status.FAILED
    assert flash_messages(response) == [
        ("success", "Requeued 2 failed message(s)."),
        ("warning", "Skipped 2 message(s) that were not failed."),
    ]


def test_requeue_action_with_only_failed_selected_reports_no_skips(admin_client_):
    failed = make_message(status=Status.FAILED)

    response = admin_client_.post(
        CHANGELIST, {"action": "requeue_failed", "_selected_action": [failed.pk], "index": "0"}
    )

    assert Message.objects.get(pk=failed.pk).status == Status.UNSENT
    assert flash_messages(response) == [("success", "Requeued 1 failed message(s).")]


def test_requeue_action_across_all_rows(admin_client_):
    failed = [make_message(status=Status.FAILED) for _ in range(3)]
    sent = make_message(status=Status.SENT)

    response = admin_client_.post(
        CHANGELIST,
        {"action": "requeue_failed", "_selected_action": [failed[0].pk], "select_across": "1", "index": "0"},
    )

    assert response.status_code == 302
    assert set(Message.objects.filter(pk__in=[m.pk for m in failed]).values_list("status", flat=True)) == {
        Status.UNSENT
    }
    assert Message.objects.get(pk=sent.pk).status == Status.SENT
    assert ("success", "Requeued 3 failed message(s).") in flash_messages(response)


def test_requeue_action_is_not_available_without_the_requeue_permission(client):
    viewer = make_user(username="viewer", staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_message", "change_message"]))
    client.force_login(viewer)
    failed = make_message(status=Status.FAILED)

    page = client.get(CHANGELIST)
    assert page.status_code == 200
    assert b"requeue_failed" not in page.content

    client.post(CHANGELIST, {"action": "requeue_failed", "_selected_action": [failed.pk], "index": "0"})
    assert Message.objects.get(pk=failed.pk).status == Status.FAILED


# --- a failed message's page: Requeue, and no next attempt ----------------------------------------


def change_url(message: Message) -> str:
    return f"/admin/messages_app/message/{message.pk}/change/"


def requeue_url(message: Message) -> str:
    return reverse("admin:messages_app_message_requeue", args=[message.pk])


def field_text(html: str, field: str) -> str:
    match = re.search(rf'<div class="[^"]*field-{field}[^"]*">.*?<div class="readonly">(.*?)</div>', html, re.S)
    assert match, f"no field {field}"
    return match.group(1).strip()


def test_a_failed_message_shows_no_next_attempt_even_if_its_row_still_has_one(admin_client_):
    # Rows failed before message_fail cleared next_attempt_at still hold one.
    failed = make_message(status=Status.FAILED, attempts=5, next_attempt_at=timezone.now() + dt.timedelta(minutes=3))
    sent = make_message(status=Status.SENT, next_attempt_at=timezone.now())

    for message in (failed, sent):
        html = admin_client_.get(change_url(message)).content.decode()
        assert field_text(html, "next_attempt") == "-"


def test_a_message_waiting_for_its_retry_shows_when_in_the_one_format(admin_client_):
    due = timezone.now().replace(microsecond=0) + dt.timedelta(seconds=95)
    waiting = make_message(status=Status.UNSENT, attempts=1, next_attempt_at=due)

    html = admin_client_.get(change_url(waiting)).content.decode()

    assert re.fullmatch(rf"{shown(due)} \(in 1 min 3[0-5] s\)", field_text(html, "next_attempt"))


def test_a_failed_message_s_page_has_a_requeue_button_that_requeues_it(admin_client_):
    failed = make_message(status=Status.FAILED, attempts=5, last_error="HTTP 400")
    page = admin_client_.get(change_url(failed)).content.decode()
    assert 'id="message-requeue"' in page
    assert f'action="{requeue_url(failed)}"' in page

    response = admin_client_.post(requeue_url(failed))

    assert response.status_code == 302
    assert response["Location"] == change_url(failed)
    failed.refresh_from_db()
    assert (failed.status, failed.attempts) == (Status.UNSENT, 0)
    assert flash_messages(response) == [
        ("success", f"Requeued message #{failed.pk}: back in the queue with a fresh budget of attempts.")
    ]
    record = ControlAction.objects.get()
    assert (record.action, record.via, record.detail["message_ids"]) == ("requeue", "admin", [failed.pk])


@pytest.mark.parametrize("status", [Status.UNSENT, Status.PROCESSING, Status.SENT])
def test_only_a_failed_message_s_page_offers_requeue(admin_client_, status):
    message = make_message(status=status)

    assert b'id="message-requeue"' not in admin_client_.get(change_url(message)).content
    response = admin_client_.post(requeue_url(message))  # posted anyway: refused, nothing changes
    assert response.status_code == 302
    assert Message.objects.get(pk=message.pk).status == status
    [(level, text)] = flash_messages(response)
    assert level == "error" and "Only failed messages can be requeued" in text


def test_the_requeue_button_needs_the_requeue_permission_and_a_post(admin_client_):
    failed = make_message(status=Status.FAILED)
    viewer = make_user(username="viewer", staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename="view_message"))
    client = Client()
    client.force_login(viewer)

    assert b'id="message-requeue"' not in client.get(change_url(failed)).content
    assert client.post(requeue_url(failed)).status_code == 403
    assert admin_client_.get(requeue_url(failed)).status_code == 403
    assert admin_client_.post(reverse("admin:messages_app_message_requeue", args=[10**9])).status_code == 404
    assert Message.objects.get(pk=failed.pk).status == Status.FAILED


# --- the dispatcher page ----------------------------------------------------------------------------

DISPATCHER_CHANGELIST = "/admin/dispatcher/dispatcherstate/"


def dispatcher_change_url() -> str:
    return reverse("admin:dispatcher_dispatcherstate_change", args=[DispatcherState.SINGLETON_PK])


def test_dispatcher_changelist_redirects_to_the_one_change_page(admin_client_):
    DispatcherState.objects.all().delete()

    response = admin_client_.get(DISPATCHER_CHANGELIST)

    assert response.status_code == 302
    assert response["Location"] == dispatcher_change_url()
    assert DispatcherState.objects.count() == 1  # created on the way


def test_dispatcher_page_shows_the_state_counts_and_the_stop_button(admin_client_):
    set_state(running=True, batch_size=4, interval_seconds=90)
    for status, n in {Status.UNSENT: 2, Status.SENT: 3, Status.FAILED: 1}.items():
        for _ in range(n):
            make_message(status=status)

    response = admin_client_.get(dispatcher_change_url())

    assert response.status_code == 200
    html = response.content.decode()
    assert "unsent: 2, processing: 0, sent: 3, failed: 1" in html
    assert 'id="dispatcher-stop"' in html
    assert 'id="dispatcher-start"' not in html
    assert reverse("admin:dispatcher_dispatcherstate_stop") in html
    form = response.context["adminform"].form
    assert set(form.fields) == {"batch_size", "interval_seconds"}
    assert (form.initial["batch_size"], form.initial["interval_seconds"]) == (4, 90)


def test_dispatcher_page_writes_its_ticks_in_the_one_format_with_how_long_ago(admin_client_):
    last = timezone.now().replace(microsecond=0) - dt.timedelta(seconds=20)
    set_state(running=True, interval_seconds=60, last_tick_at=last, next_tick_at=last + dt.timedelta(seconds=60))

    html = admin_client_.get(dispatcher_change_url()).content.decode()

    assert re.search(rf"{shown(last)} \(2[0-9] s ago\)", html), html
    assert re.search(rf"{shown(last + dt.timedelta(seconds=60))} \(in (3[0-9]|40) s\)", html), html


def test_dispatcher_page_says_a_due_tick_is_due_now_not_how_long_ago(admin_client_):
    set_state(running=True, next_tick_at=timezone.now())  # as starting it leaves it
    html = admin_client_.get(dispatcher_change_url()).content.decode()
    assert re.search(r'field-next_tick\b.*?<div class="readonly">due now</div>', html, re.S), html

    overdue = timezone.now().replace(microsecond=0) - dt.timedelta(seconds=40)
    set_state(running=True, next_tick_at=overdue)  # no window has taken it yet
    html = admin_client_.get(dispatcher_change_url()).content.decode()
    assert f"due now, since {shown(overdue)} (4" in html


def test_dispatcher_page_s_breadcrumb_names_it_once(admin_client_):
    set_state(running=True)

    html = admin_client_.get(dispatcher_change_url()).content.decode()

    crumbs = re.search(r'<div class="breadcrumbs">(.*?)</div>', html, re.S).group(1)
    assert unescape(re.sub(r"<[^>]+>", " ", crumbs)).split() == ["Home", "\u203a", "Dispatcher"]


def test_dispatcher_page_of_a_stopped_dispatcher_shows_the_start_button(admin_client_):
    set_state(running=False)

    html = admin_client_.get(dispatcher_change_url()).content.decode()

    assert 'id="dispatcher-start"' in html
    assert 'id="dispatcher-stop"' not in html
    assert reverse("admin:dispatcher_dispatcherstate_start") in html


def test_dispatcher_cannot_be_added_or_deleted(admin_client_):
    set_state()
    assert admin_client_.get("/admin/dispatcher/dispatcherstate/add/").status_code == 403
    delete_url = reverse("admin:dispatcher_dispatcherstate_delete", args=[DispatcherState.SINGLETON_PK])
    assert admin_client_.post(delete_url, {"post": "yes"}).status_code == 403
    assert DispatcherState.objects.count() == 1


def test_start_button_starts_the_dispatcher(admin_client_, django_capture_on_commit_callbacks):
    set_state(running=False)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client_.post(reverse("admin:dispatcher_dispatcherstate_start"))

    assert response.status_code == 302
    assert response["Location"] == dispatcher_change_url()
    state = DispatcherState.objects.get()
    assert state.running is True
    assert abs((state.next_tick_at - timezone.now()).total_seconds()) < 5
    assert OrmQ.objects.count() == 1
    assert flash_messages(response) == [("success", "Dispatcher started: the first tick runs now.")]


def test_stop_button_stops_the_dispatcher(admin_client_):
    set_state(running=True)

    response = admin_client_.post(reverse("admin:dispatcher_dispatcherstate_stop"))

    assert response.status_code == 302
    assert response["Location"] == dispatcher_change_url()
    state = DispatcherState.objects.get()
    assert state.running is False
    assert state.next_tick_at is None
    assert flash_messages(response) == [("success", "Dispatcher stopped: no more messages will be claimed.")]


@pytest.mark.parametrize(("name", "running"), [("start", False), ("stop", True)])
def test_start_and_stop_refuse_get(admin_client_, name, running):
    set_state(running=running)

    response = admin_client_.get(reverse(f"admin:dispatcher_dispatcherstate_{name}"))

    assert response.status_code == 403
    assert DispatcherState.objects.get().running is running


@pytest.mark.parametrize(("name", "running"), [("start", False), ("stop", True)])
def test_start_and_stop_need_a_staff_login(client, name, running):
    set_state(running=running)
    client.force_login(make_user(username="plain"))

    response = client.post(reverse(f"admin:dispatcher_dispatcherstate_{name}"))

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert DispatcherState.objects.get().running is running


@pytest.mark.parametrize(("name", "running"), [("start", False), ("stop", True)])
def test_start_and_stop_need_the_control_permission(client, name, running):
    set_state(running=running)
    viewer = make_user(username="viewer", staff=True)
    # The model's change permission is not the control permission.
    viewer.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_dispatcherstate", "change_dispatcherstate"])
    )
    client.force_login(viewer)

    response = client.post(reverse(f"admin:dispatcher_dispatcherstate_{name}"))

    assert response.status_code == 403
    assert DispatcherState.objects.get().running is running


def test_saving_the_form_changes_the_pace(admin_client_):
    set_state(running=False, batch_size=3, interval_seconds=60)

    response = admin_client_.post(dispatcher_change_url(), {"batch_size": "25", "interval_seconds": "15"})

    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    state = DispatcherState.objects.get()
    assert (state.batch_size, state.interval_seconds) == (25, 15)
    assert state.running is False  # saving the pace does not start or stop it


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"batch_size": "0", "interval_seconds": "60"}, "batch_size"),
        ({"batch_size": "-3", "interval_seconds": "60"}, "batch_size"),
        ({"batch_size": "10001", "interval_seconds": "60"}, "batch_size"),
        ({"batch_size": "many", "interval_seconds": "60"}, "batch_size"),
        ({"batch_size": "", "interval_seconds": "60"}, "batch_size"),
        ({"batch_size": "5", "interval_seconds": "0"}, "interval_seconds"),
        ({"batch_size": "5", "interval_seconds": "86401"}, "interval_seconds"),
    ],
)
def test_saving_an_invalid_pace_shows_a_form_error_and_changes_nothing(admin_client_, data, field):
    set_state(running=True, batch_size=3, interval_seconds=60)
    before = DispatcherState.objects.values().get()

    response = admin_client_.post(dispatcher_change_url(), data)

    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert DispatcherState.objects.values().get() == before


# --- deleting -----------------------------------------------------------------------


def test_a_message_being_sent_cannot_be_deleted_and_the_page_says_why(admin_client_):
    message = make_message(status=Status.PROCESSING)
    change_url = reverse("admin:messages_app_message_change", args=[message.pk])

    assert admin_client_.get(reverse("admin:messages_app_message_delete", args=[message.pk])).status_code == 302
    response = admin_client_.post(reverse("admin:messages_app_message_delete", args=[message.pk]), {"post": "yes"})

    assert response.status_code == 302 and response["Location"] == change_url
    assert flash_messages(response)[-1] == ("error", BEING_SENT)
    assert Message.objects.filter(pk=message.pk).exists()


def test_delete_selected_keeps_the_messages_being_sent_and_says_so(admin_client_):
    sent = make_message(status=Status.SENT)
    processing = make_message(status=Status.PROCESSING)

    response = admin_client_.post(
        reverse("admin:messages_app_message_changelist"),
        {"action": "delete_selected", "_selected_action": [sent.pk, processing.pk], "post": "yes"},
    )

    assert response.status_code == 302
    assert set(Message.objects.values_list("pk", flat=True)) == {processing.pk}
    assert any("Kept 1 message(s) a worker is sending" in text for _, text in flash_messages(response))


def test_a_sent_message_can_be_deleted(admin_client_):
    message = make_message(status=Status.SENT)
    response = admin_client_.post(reverse("admin:messages_app_message_delete", args=[message.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Message.objects.filter(pk=message.pk).exists()


def test_deleting_a_queued_message_is_recorded_in_the_audit_log_like_a_cancel(admin_client_):
    queued = make_message()

    response = admin_client_.post(reverse("admin:messages_app_message_delete", args=[queued.pk]), {"post": "yes"})

    assert response.status_code == 302
    assert not Message.objects.filter(pk=queued.pk).exists()
    entry = ControlAction.objects.get()
    assert (entry.action, entry.via, entry.actor_label) == (
        ControlAction.Action.DELETE,
        ControlAction.Via.ADMIN,
        "root",
    )
    assert entry.detail == {"message_ids": [queued.pk], "selected": 1, "count": 1, "statuses": {"unsent": 1}}


def test_delete_selected_records_what_went_and_what_was_kept(admin_client_):
    unsent, sent, failed = make_message(), make_message(status=Status.SENT), make_message(status=Status.FAILED)
    processing = make_message(status=Status.PROCESSING)

    admin_client_.post(
        reverse("admin:messages_app_message_changelist"),
        {
            "action": "delete_selected",
            "_selected_action": [unsent.pk, sent.pk, failed.pk, processing.pk],
            "post": "yes",
        },
    )

    assert set(Message.objects.values_list("pk", flat=True)) == {processing.pk}
    entry = ControlAction.objects.get()
    assert (entry.action, entry.via) == (ControlAction.Action.DELETE, ControlAction.Via.ADMIN)
    assert sorted(entry.detail.pop("message_ids")) == sorted([unsent.pk, sent.pk, failed.pk])
    assert entry.detail == {"selected": 4, "count": 3, "statuses": {"unsent": 1, "sent": 1, "failed": 1}}
    audit_page = admin_client_.get("/admin/audit/controlaction/").content.decode()
    assert "Delete messages" in audit_page


def test_the_list_shows_status_in_colour_the_provider_id_and_the_last_error(admin_client_):
    make_message(status=Status.FAILED, last_error="provider answered HTTP 400: bad number", attempts=1)
    sent = make_message(status=Status.SENT)

    html = admin_client_.get(CHANGELIST).content.decode()

    assert '<span class="message-status status-failed">Failed</span>' in html
    assert '<span class="message-status status-sent">Sent</span>' in html
    assert "provider answered HTTP 400: bad number" in html
    assert sent.provider_message_id in html
    assert "/static/messages_app/message_list.css" in html  # one line a row (tests/browser checks the look)
