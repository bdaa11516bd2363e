"""The operator dashboard in the admin: counts, the per-minute chart, the
dispatcher's state and controls, recent failures and "requeue all failed"."""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from dispatcher.models import DispatcherState
from dispatcher.monitoring.dashboard import outcome_chart
from messages_app.models import DeliveryAttempt, Message
from messages_app.selectors import delivery_outcomes_per_minute
from retention.services import retention_apply
from tests.factories import make_message, make_user

pytestmark = pytest.mark.django_db

Status = Message.Status
Outcome = DeliveryAttempt.Outcome

DASHBOARD = "/admin/dispatcher/dispatcherstate/dashboard/"
REQUEUE_ALL = "/admin/dispatcher/dispatcherstate/dashboard/requeue-failed/"
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def admin_client_(client) -> Client:
    client.force_login(make_user(username="root", superuser=True))
    return client


def staff_client_with(client: Client, *codenames: str) -> Client:
    user = make_user(username="limited", staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return client


def set_state(**fields) -> DispatcherState:
    fields.setdefault("running", True)
    fields.setdefault("batch_size", 3)
    fields.setdefault("interval_seconds", 60)
    fields.setdefault("next_tick_at", timezone.now() if fields["running"] else None)
    state, _ = DispatcherState.objects.update_or_create(pk=DispatcherState.SINGLETON_PK, defaults=fields)
    return state


def text_of(html: str, element_id: str) -> str:
    """The text directly inside the element with that id (no nested tags)."""
    match = re.search(rf'id="{re.escape(element_id)}"[^>]*>([^<]*)<', html)
    assert match, f"no element with id={element_id!r}"
    return match.group(1).strip()


def flash_messages(response) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]


def chart_of(html: str) -> ET.Element:
    """The dashboard's SVG chart, parsed as XML (so it must be well-formed)."""
    match = re.search(r'<svg id="outcome-chart".*?</svg>', html, re.S)
    assert match, "no chart on the page"
    return ET.fromstring(match.group(0))  # noqa: S314 - our own markup, not untrusted input


def attempt(message: Message, *, at: dt.datetime, outcome: str, number: int = 1) -> DeliveryAttempt:
    return DeliveryAttempt.objects.create(message=message, number=number, started_at=at, outcome=outcome)


# --- access ----------------------------------------------------------------------------------


def test_dashboard_url_is_named():
    assert reverse("admin:dispatcher_dashboard") == DASHBOARD
    assert reverse("admin:dispatcher_dashboard_requeue_failed") == REQUEUE_ALL


def test_dashboard_loads_for_staff(admin_client_):
    set_state()

    response = admin_client_.get(DASHBOARD)

    assert response.status_code == 200
    html = response.content.decode()
    for element_id in ("count-unsent", "outcome-chart", "dashboard-running", "recent-failures", "requeue-all"):
        assert f'id="{element_id}"' in html
    assert "<script" not in html.split('id="content-main"')[1]  # server-rendered, no JS needed
    assert "//cdn" not in html and "https://" not in html.replace("http://www.w3.org/2000/svg", "")


@pytest.mark.parametrize("url", [DASHBOARD, REQUEUE_ALL])
def test_anonymous_users_are_sent_to_the_login_page(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=")


@pytest.mark.parametrize("url", [DASHBOARD, REQUEUE_ALL])
def test_non_staff_users_are_sent_to_the_login_page(client, url):
    make_message(status=Status.FAILED)
    client.force_login(make_user(username="plain"))

    assert client.get(url).status_code == 302
    assert client.post(url, {"batch_size": "5", "interval_seconds": "5"}).status_code == 302
    assert Message.objects.get().status == Status.FAILED


def test_staff_without_dispatcher_permissions_get_403(client):
    staff_client_with(client)  # staff, no permissions at all
    assert client.get(DASHBOARD).status_code == 403


def test_a_viewer_sees_the_dashboard_without_controls(client):
    set_state(running=True, batch_size=3, interval_seconds=60)
    staff_client_with(client, "view_dispatcherstate", "view_message")

    response = client.get(DASHBOARD)

    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="count-failed"' in html
    for control in ("dashboard-stop", "dashboard-start", "dashboard-pace-form", "requeue-all"):
        assert f'id="{control}"' not in html
    assert client.post(DASHBOARD, {"batch_size": "9", "interval_seconds": "9"}).status_code == 403
    assert DispatcherState.objects.get().batch_size == 3


def test_the_admin_index_and_the_dispatcher_page_link_to_the_dashboard(admin_client_):
    set_state()
    index = admin_client_.get("/admin/").content.decode()
    assert re.search(rf'href="{DASHBOARD}" id="dashboard-link"', index)
    assert 'id="app-list"' in index or "app-messages_app" in index  # the usual app list is still there

    change = admin_client_.get(reverse("admin:dispatcher_dispatcherstate_change", args=[1])).content.decode()
    assert re.search(rf'href="{DASHBOARD}" id="dispatcher-dashboard-link"', change)


# --- counts ----------------------------------------------------------------------------------


def test_counts_per_status(admin_client_):
    set_state()
    for status, n in {Status.UNSENT: 3, Status.PROCESSING: 1, Status.SENT: 4, Status.FAILED: 2}.items():
        for _ in range(n):
            make_message(status=status)

    html = admin_client_.get(DASHBOARD).content.decode()

    assert {s.value: text_of(html, f"count-{s.value}") for s in Status} == {
        "unsent": "3",
        "processing": "1",
        "sent": "4",
        "failed": "2",
        "cancelled": "0",
        "expired": "0",
        "suppressed": "0",
    }
    assert 'href="/admin/messages_app/message/?status__exact=failed"' in html


def test_counts_are_zero_on_an_empty_database(admin_client_):
    html = admin_client_.get(DASHBOARD).content.decode()
    assert [text_of(html, f"count-{s.value}") for s in Status] == ["0"] * len(Status)
    assert text_of(html, "no-failures") == "No failed messages."


# --- the chart ---------------------------------------------------------------------------------


def test_chart_shows_sent_and_failed_per_minute_of_the_last_hour(admin_client_):
    set_state()
    message = make_message()
    this_minute = timezone.now().replace(second=0, microsecond=0)
    five_ago = this_minute - dt.timedelta(minutes=5)
    thirty_ago = this_minute - dt.timedelta(minutes=30)
    for second in (1, 20, 40):
        attempt(message, at=five_ago + dt.timedelta(seconds=second), outcome=Outcome.SENT)
    attempt(message, at=five_ago + dt.timedelta(seconds=50), outcome=Outcome.FAILED)
    attempt(message, at=five_ago + dt.timedelta(seconds=55), outcome=Outcome.RETRY)  # not charted
    attempt(message, at=five_ago, outcome=Outcome.LEASE_EXPIRED)  # not charted
    for _ in range(2):
        attempt(message, at=thirty_ago + dt.timedelta(seconds=30), outcome=Outcome.FAILED)
    attempt(message, at=this_minute - dt.timedelta(minutes=90), outcome=Outcome.SENT)  # too old

    html = admin_client_.get(DASHBOARD).content.decode()
    svg = chart_of(html)

    minutes = svg.findall(f"{SVG}g[@data-minute]")
    assert len(minutes) == 60
    by_minute = {dt.datetime.fromisoformat(g.get("data-minute")): g for g in minutes}
    assert max(by_minute) == this_minute
    with_attempts = {m: (int(g.get("data-sent")), int(g.get("data-failed"))) for m, g in by_minute.items()}
    assert {m: c for m, c in with_attempts.items() if c != (0, 0)} == {five_ago: (3, 1), thirty_ago: (0, 2)}

    five = by_minute[five_ago]
    assert five.findtext(f"{SVG}title") == f"{five_ago:%Y-%m-%d %H:%M:%S} UTC: 3 sent, 1 failed"
    bars = {rect.get("class"): rect for rect in five.findall(f"{SVG}rect") if "bar" in rect.get("class").split()}
    assert set(bars) == {"bar bar-sent", "bar bar-failed"}
    assert bars["bar bar-sent"].get("data-count") == "3"
    # Bars are to scale: 3 sent stands three times as tall as 1 failed.
    assert float(bars["bar bar-sent"].get("height")) == pytest.approx(3 * float(bars["bar bar-failed"].get("height")))
    thirty_bars = [r for r in by_minute[thirty_ago].findall(f"{SVG}rect") if "bar" in r.get("class").split()]
    assert [r.get("class") for r in thirty_bars] == ["bar bar-failed"]
    quiet = by_minute[this_minute - dt.timedelta(minutes=1)]
    assert [r.get("class") for r in quiet.findall(f"{SVG}rect")] == ["minute-hit"]

    assert (text_of(html, "chart-total-sent"), text_of(html, "chart-total-failed")) == ("3", "3")


def test_chart_of_a_quiet_hour_has_empty_columns_and_an_axis(admin_client_):
    svg = chart_of(admin_client_.get(DASHBOARD).content.decode())
    assert len(svg.findall(f"{SVG}g[@data-minute]")) == 60
    assert not [r for r in svg.iter(f"{SVG}rect") if "bar" in (r.get("class") or "").split()]
    assert [t.text for t in svg.findall(f"{SVG}text[@class='value-label']")] == ["0", "1"]


def test_delivery_outcomes_per_minute_counts_only_sent_and_failed_since_the_given_time():
    message = make_message()
    minute = timezone.now().replace(second=0, microsecond=0) - dt.timedelta(minutes=10)
    attempt(message, at=minute + dt.timedelta(seconds=5), outcome=Outcome.SENT)
    attempt(message, at=minute + dt.timedelta(seconds=59), outcome=Outcome.SENT)
    attempt(message, at=minute + dt.timedelta(seconds=61), outcome=Outcome.FAILED)
    attempt(message, at=minute, outcome=Outcome.RETRY)
    attempt(message, at=minute - dt.timedelta(seconds=1), outcome=Outcome.SENT)  # before `since`

    assert delivery_outcomes_per_minute(since=minute) == {
        minute: {"sent": 2, "failed": 0},
        minute + dt.timedelta(minutes=1): {"sent": 0, "failed": 1},
    }


def test_outcome_chart_scales_to_a_round_top_and_labels_every_ten_minutes():
    last = timezone.now().replace(second=0, microsecond=0)
    chart = outcome_chart(
        per_minute={last: {"sent": 37, "failed": 0}, last - dt.timedelta(minutes=2): {"sent": 0, "failed": 5}},
        last_minute=last,
    )

    assert [t.value for t in chart.y_ticks] == [0, 10, 20, 30, 40]
    assert (chart.total_sent, chart.total_failed) == (37, 5)
    assert (chart.minutes[0].minute, chart.minutes[-1].minute) == (last - dt.timedelta(minutes=59), last)
    # Round minutes, but none crowding the newest one, which is always labelled.
    assert [m.minute for m in chart.minutes if m.labelled] == [
        *(m.minute for m in chart.minutes[:-5] if m.minute.minute % 10 == 0),
        last,
    ]
    assert 6 <= sum(m.labelled for m in chart.minutes) <= 7
    [bar] = chart.minutes[-1].bars
    assert bar.height == pytest.approx(chart.plot_height * 37 / 40, abs=0.1)
    assert bar.y + bar.height == pytest.approx(chart.plot_bottom)


# --- the dispatcher: state, start/stop, pace ---------------------------------------------------------


def test_dispatcher_state_is_shown(admin_client_):
    last = timezone.now() - dt.timedelta(seconds=30)
    set_state(
        running=True, batch_size=7, interval_seconds=45, last_tick_at=last, next_tick_at=last + dt.timedelta(seconds=45)
    )

    html = admin_client_.get(DASHBOARD).content.decode()

    assert text_of(html, "dashboard-running") == "Running"
    assert 'data-running="true"' in html
    assert (text_of(html, "dashboard-batch-size"), text_of(html, "dashboard-interval")) == ("7", "45")
    # One format for times, to the second with the time zone, and how long ago or how soon.
    assert re.fullmatch(
        rf"{timezone.localtime(last):%Y-%m-%d %H:%M:%S} UTC \(3[0-9] s ago\)", text_of(html, "dashboard-last-tick")
    ), text_of(html, "dashboard-last-tick")
    next_tick = last + dt.timedelta(seconds=45)
    assert re.fullmatch(
        rf"{timezone.localtime(next_tick):%Y-%m-%d %H:%M:%S} UTC \(in 1[0-5] s\)", text_of(html, "dashboard-next-tick")
    ), text_of(html, "dashboard-next-tick")
    assert 'id="dashboard-stop"' in html
    assert 'id="dashboard-start"' not in html


def test_a_due_next_tick_is_due_now_never_0_s_ago(admin_client_):
    set_state(running=True, next_tick_at=timezone.now())  # what Start leaves

    assert text_of(admin_client_.get(DASHBOARD).content.decode(), "dashboard-next-tick") == "due now"

    overdue = timezone.now().replace(microsecond=0) - dt.timedelta(seconds=12)
    set_state(running=True, next_tick_at=overdue)  # no dispatch window has taken it yet
    shown = text_of(admin_client_.get(DASHBOARD).content.decode(), "dashboard-next-tick")
    assert re.fullmatch(
        rf"due now, since {timezone.localtime(overdue):%Y-%m-%d %H:%M:%S} UTC \(1[23] s ago\)", shown
    ), shown


def test_the_dashboard_says_when_the_cluster_is_behind_the_pace(admin_client_):
    set_state(running=True, next_tick_at=timezone.now() + dt.timedelta(seconds=30))
    assert text_of(admin_client_.get(DASHBOARD).content.decode(), "dashboard-pace") == "held"

    DispatcherState.objects.update(behind_since=timezone.now() - dt.timedelta(seconds=90))
    pace = text_of(admin_client_.get(DASHBOARD).content.decode(), "dashboard-pace")
    assert pace.startswith("behind by 9"), pace
    assert "add qclusters or lower the pace" in pace


def test_the_dashboard_says_when_no_window_has_taken_a_due_tick(admin_client_):
    set_state(running=True, next_tick_at=timezone.now() - dt.timedelta(minutes=4))

    pace = text_of(admin_client_.get(DASHBOARD).content.decode(), "dashboard-pace")

    assert pace.startswith("behind by 24"), pace
    assert "no dispatch window has taken the due tick" in pace


def test_a_stopped_dispatcher_shows_start(admin_client_):
    set_state(running=False)

    html = admin_client_.get(DASHBOARD).content.decode()

    assert text_of(html, "dashboard-running") == "Stopped"
    assert text_of(html, "dashboard-next-tick") == "none while stopped"
    assert text_of(html, "dashboard-last-tick") == "never"
    assert 'id="dashboard-start"' in html
    assert 'id="dashboard-stop"' not in html


def test_stop_button_stops_and_comes_back_to_the_dashboard(admin_client_):
    set_state(running=True)
    html = admin_client_.get(DASHBOARD).content.decode()
    form = re.search(
        r'<form method="post" action="([^"]+)">.*?name="next" value="([^"]+)".*?id="dashboard-stop"', html, re.S
    )
    assert form, "no stop form"
    action, next_url = form.groups()

    response = admin_client_.post(action, {"next": next_url})

    assert response.status_code == 302
    assert response["Location"] == DASHBOARD
    assert DispatcherState.objects.get().running is False
    page = admin_client_.get(DASHBOARD)
    assert 'id="dashboard-start"' in page.content.decode()
    assert "Dispatcher stopped: no more messages will be claimed." in page.content.decode()


def test_start_button_starts_and_comes_back_to_the_dashboard(admin_client_, django_capture_on_commit_callbacks):
    set_state(running=False)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client_.post(reverse("admin:dispatcher_dispatcherstate_start"), {"next": DASHBOARD})

    assert response.status_code == 302
    assert response["Location"] == DASHBOARD
    assert DispatcherState.objects.get().running is True
    assert flash_messages(response) == [("success", "Dispatcher started: the first tick runs now.")]


@pytest.mark.parametrize(
    "next_url", ["https://evil.example/admin/", "//evil.example/", "javascript:alert(1)", "http://testserver:99/x"]
)
def test_start_and_stop_ignore_a_next_url_off_this_site(admin_client_, next_url):
    set_state(running=True)

    response = admin_client_.post(reverse("admin:dispatcher_dispatcherstate_stop"), {"next": next_url})

    assert response.status_code == 302
    assert response["Location"] == reverse("admin:dispatcher_dispatcherstate_change", args=[1])
    assert DispatcherState.objects.get().running is False


def test_pace_form_is_filled_with_the_current_pace(admin_client_):
    set_state(batch_size=12, interval_seconds=34)
    html = admin_client_.get(DASHBOARD).content.decode()
    assert re.search(r'name="batch_size" value="12"', html)
    assert re.search(r'name="interval_seconds" value="34"', html)
    assert 'id="dashboard-pace-save"' in html


def test_pace_form_saves_and_comes_back(admin_client_):
    set_state(running=True, batch_size=3, interval_seconds=60)

    response = admin_client_.post(DASHBOARD, {"batch_size": "25", "interval_seconds": "15"})

    assert response.status_code == 302
    assert response["Location"] == DASHBOARD
    state = DispatcherState.objects.get()
    assert (state.batch_size, state.interval_seconds, state.running) == (25, 15, True)
    assert flash_messages(response) == [("success", "Pace saved: 25 message(s) every 15 s.")]


@pytest.mark.parametrize(
    ("data", "field", "error"),
    [
        ({"batch_size": "0", "interval_seconds": "60"}, "batch_size", "Batch size must be between 1 and 10000."),
        ({"batch_size": "10001", "interval_seconds": "60"}, "batch_size", "Batch size must be between 1 and 10000."),
        ({"batch_size": "5", "interval_seconds": "0"}, "interval_seconds", "Interval must be between 1 and 86400"),
        ({"batch_size": "many", "interval_seconds": "60"}, "batch_size", "Enter a whole number."),
        ({"batch_size": "", "interval_seconds": "60"}, "batch_size", "This field is required."),
    ],
)
def test_pace_form_rejects_bad_values_and_shows_why(admin_client_, data, field, error):
    set_state(running=True, batch_size=3, interval_seconds=60)
    before = DispatcherState.objects.values().get()

    response = admin_client_.post(DASHBOARD, data)

    assert response.status_code == 200
    html = response.content.decode()
    errors = re.search(rf'<ul class="errorlist" id="id_{field}_error">(.*?)</ul>', html, re.S)
    assert errors, html
    assert error in errors.group(1)
    assert DispatcherState.objects.values().get() == before
    # The rest of the page is still there, with the value as typed.
    assert 'id="count-unsent"' in html
    assert f'name="{field}" value="{data[field]}"' in html or not data[field]


# --- recent failures ----------------------------------------------------------------------


def test_recent_failures_lists_the_last_ten_with_their_reasons_escaped(admin_client_):
    now = timezone.now()
    failed = [
        make_message(
            status=Status.FAILED,
            last_error=f"HTTP 400 <b>bad</b> #{i}",
            claimed_at=now - dt.timedelta(minutes=i),
            attempts=1,
        )
        for i in range(12)
    ]
    # Failed a while ago even though it was created last.
    old_failure = make_message(
        status=Status.FAILED, last_error="old", claimed_at=now - dt.timedelta(days=1), attempts=5
    )
    make_message(status=Status.SENT)

    html = admin_client_.get(DASHBOARD).content.decode()

    listed = [int(i) for i in re.findall(r'<tr class="failure" data-message-id="(\d+)">', html)]
    assert listed == [m.pk for m in failed[:10]]
    assert old_failure.pk not in listed
    assert "HTTP 400 &lt;b&gt;bad&lt;/b&gt; #0" in html
    assert "<b>bad</b>" not in html
    assert f'href="/admin/messages_app/message/{failed[0].pk}/change/"' in html
    assert 'id="all-failures-link"' in html
    # When each failed: the one time format, and how long ago.
    # (Seconds may have passed since the test began on a busy machine: "3 min 2 s ago".)
    shown = f"{timezone.localtime(failed[3].claimed_at):%Y-%m-%d %H:%M:%S} UTC"
    assert re.search(rf"<td>{shown} \(3 min( [0-9]+ s)? ago\)</td>", html), html


def test_recent_failures_escape_a_script_in_the_reason(admin_client_):
    make_message(status=Status.FAILED, last_error='<script>alert("x")</script>')
    html = admin_client_.get(DASHBOARD).content.decode()
    assert '<script>alert("x")</script>' not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html


# --- requeue all failed ---------------------------------------------------------------------------


def test_requeue_all_link_shows_how_many_are_failed(admin_client_):
    for _ in range(3):
        make_message(status=Status.FAILED)
    html = admin_client_.get(DASHBOARD).content.decode()
    assert re.search(rf'href="{REQUEUE_ALL}" class="button" id="requeue-all">Requeue all failed \(3\)<', html)


def test_requeue_all_confirmation_changes_nothing(admin_client_):
    failed = [make_message(status=Status.FAILED) for _ in range(3)]
    make_message(status=Status.SENT)

    response = admin_client_.get(REQUEUE_ALL)

    assert response.status_code == 200
    html = response.content.decode()
    assert text_of(html, "requeue-all-count") == "3"
    assert 'id="requeue-all-confirm"' in html
    assert re.search(rf'href="{DASHBOARD}" class="button cancel-link" id="requeue-all-cancel"', html)
    assert set(Message.objects.filter(pk__in=[m.pk for m in failed]).values_list("status", flat=True)) == {
        Status.FAILED
    }


def test_requeue_all_post_requeues_every_failed_message_and_reports_the_count(admin_client_):
    failed = [make_message(status=Status.FAILED, attempts=5, last_error="HTTP 500") for _ in range(3)]
    sent = make_message(status=Status.SENT)
    unsent = make_message(status=Status.UNSENT)

    response = admin_client_.post(REQUEUE_ALL)

    assert response.status_code == 302
    assert response["Location"] == DASHBOARD
    assert {m.pk: (m.status, m.attempts) for m in Message.objects.filter(pk__in=[f.pk for f in failed])} == {
        m.pk: (Status.UNSENT, 0) for m in failed
    }
    assert Message.objects.get(pk=sent.pk).status == Status.SENT
    assert Message.objects.get(pk=unsent.pk).status == Status.UNSENT
    assert flash_messages(response) == [("success", "Requeued 3 failed message(s).")]


def test_requeue_all_with_nothing_failed(admin_client_):
    html = admin_client_.get(REQUEUE_ALL).content.decode()
    assert text_of(html, "requeue-all-count") == "0"
    response = admin_client_.post(REQUEUE_ALL)
    assert flash_messages(response) == [("success", "Requeued 0 failed message(s).")]


def test_requeue_all_needs_the_requeue_permission(client):
    failed = make_message(status=Status.FAILED)
    # Every model permission on both, but not requeue_message: not enough.
    staff_client_with(
        client, "view_dispatcherstate", "change_dispatcherstate", "control_dispatcher", "view_message", "change_message"
    )

    assert client.get(REQUEUE_ALL).status_code == 403
    assert client.post(REQUEUE_ALL).status_code == 403
    assert Message.objects.get(pk=failed.pk).status == Status.FAILED
    assert 'id="requeue-all"' not in client.get(DASHBOARD).content.decode()


def test_the_short_dashboard_address_redirects_to_it(client):
    response = client.get("/admin/dashboard/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/dispatcher/dispatcherstate/dashboard/"


def test_the_dashboard_refreshes_itself(admin_client_):
    html = admin_client_.get(DASHBOARD).content.decode()
    assert '<meta http-equiv="refresh" content="15">' in html


def test_no_failures_is_not_shown_in_red_and_requeue_all_is_disabled(admin_client_):
    html = admin_client_.get(DASHBOARD).content.decode()
    assert 'class="count-failed"' in html and 'class="count-failed nonzero"' not in html
    assert '<span class="button disabled" id="requeue-all" aria-disabled="true"' in html
    assert "dashboard/requeue-failed/" not in html

    make_message(status=Status.FAILED)
    html = admin_client_.get(DASHBOARD).content.decode()
    assert 'class="count-failed nonzero"' in html
    assert 'id="requeue-all">Requeue all failed (1)</a>' in html


def test_history_and_retention_show_the_oldest_message_and_the_last_run(admin_client_, settings):
    set_state()
    oldest = make_message(status=Message.Status.SENT)
    Message.objects.filter(pk=oldest.pk).update(created_at=timezone.now() - dt.timedelta(days=40))
    make_message(status=Message.Status.SENT)
    settings.MESSAGE_RETENTION = {
        "DAYS_BY_STATUS": {"sent": 30, "failed": 90},
        "INBOUND_DAYS": 30,
        "BATCH_SIZE": 1000,
        "RUN_SECONDS": 30,
    }

    before = admin_client_.get(DASHBOARD).content.decode()
    retention_apply()
    after = admin_client_.get(DASHBOARD).content.decode()

    assert "No run yet (every 10 minutes)." in text_of(before, "retention-last-run")
    assert text_of(before, "retention-oldest") != "-"
    settings_text = " ".join(text_of(after, "retention-settings").split())
    assert "sent 30 days, failed 90 days, cancelled for good" in settings_text
    assert "inbound replies 30 days" in settings_text
    last_run = text_of(after, "retention-last-run")
    assert last_run.startswith("Last run ") and "deleted 1 messages (1 sent)" in last_run
    assert int(text_of(after, "retention-rows")) >= 0


def test_retention_off_says_how_to_turn_it_on(admin_client_):
    set_state()

    html = admin_client_.get(DASHBOARD).content.decode()

    assert "Retention is off: set MESSAGE_RETENTION_DAYS" in text_of(html, "retention-last-run")
    assert text_of(html, "retention-oldest") == "-"
