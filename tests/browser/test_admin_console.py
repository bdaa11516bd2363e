"""The operator's console in a real browser: the admin login, the dashboard's numbers
and controls, requeueing a failed message, stopping and starting the dispatcher,
and Swagger UI rendering the API."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from dispatcher.models import DispatcherState
from messages_app.models import DeliveryAttempt, Message
from tests.browser.conftest import staff_login
from tests.factories import make_message

pytestmark = pytest.mark.browser

Status = Message.Status

DASHBOARD = "/admin/dispatcher/dispatcherstate/dashboard/"
REQUEUE_ALL = "/admin/dispatcher/dispatcherstate/dashboard/requeue-failed/"
MESSAGES = "/admin/messages_app/message/"
DISPATCHER = "/admin/dispatcher/dispatcherstate/"
DISPATCHER_CHANGE = "/admin/dispatcher/dispatcherstate/1/change/"


def set_state(*, running: bool) -> DispatcherState:
    state, _ = DispatcherState.objects.update_or_create(
        pk=DispatcherState.SINGLETON_PK,
        defaults={
            "running": running,
            "batch_size": 3,
            "interval_seconds": 60,
            "next_tick_at": timezone.now() if running else None,
        },
    )
    return state


def is_running() -> bool:
    return DispatcherState.objects.get(pk=DispatcherState.SINGLETON_PK).running


def make_failed(**fields) -> Message:
    fields.setdefault("attempts", 5)
    fields.setdefault("last_error", "HTTP 400: invalid recipient")
    fields.setdefault("claimed_at", timezone.now())
    return make_message(status=Status.FAILED, **fields)


def attempted(message: Message, *, outcome: str, minutes_ago: int) -> Message:
    started = timezone.now() - dt.timedelta(minutes=minutes_ago)
    DeliveryAttempt.objects.create(message=message, number=1, started_at=started, outcome=outcome)
    return message


def expect_success(page: Page, text: str) -> None:
    expect(page.locator("ul.messagelist li.success")).to_contain_text(text)


# --- logging in -------------------------------------------------------------------------------


def test_staff_logs_in_through_the_admin_login_form(page: Page, live_server):
    page.goto(f"{live_server.url}/admin/")
    # Anonymous: the admin sends the browser to its login form.
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=/admin/$"))
    expect(page.locator("#login-form")).to_be_visible()

    staff_login(page, live_server)

    expect(page).to_have_url(f"{live_server.url}/admin/")
    expect(page.locator("#content h1")).to_have_text("Operator console")
    expect(page.locator("#dashboard-link")).to_be_visible()
    expect(page.locator("#content-main")).to_contain_text("Messages")
    expect(page.locator("#content-main")).to_contain_text("Dispatcher")


def test_wrong_password_stays_on_the_login_form(page: Page, live_server):
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "nobody")
    page.fill("#id_password", "wrong")
    page.click("input[type=submit]")
    expect(page.locator(".errornote")).to_contain_text("correct username and password")
    expect(page).to_have_url(re.compile(r"/admin/login/"))


# --- the dashboard ----------------------------------------------------------------------------


def test_dashboard_shows_the_message_counts(page: Page, live_server, tmp_path):
    set_state(running=True)
    for _ in range(3):
        make_message(status=Status.UNSENT)
    make_message(status=Status.PROCESSING)
    attempted(make_message(status=Status.SENT), outcome=DeliveryAttempt.Outcome.SENT, minutes_ago=30)
    attempted(make_message(status=Status.SENT), outcome=DeliveryAttempt.Outcome.SENT, minutes_ago=2)
    failed = attempted(make_failed(), outcome=DeliveryAttempt.Outcome.FAILED, minutes_ago=2)

    staff_login(page, live_server)
    page.click("#dashboard-link")
    expect(page).to_have_url(f"{live_server.url}{DASHBOARD}")

    expect(page.locator("#count-unsent")).to_have_text("3")
    expect(page.locator("#count-processing")).to_have_text("1")
    expect(page.locator("#count-sent")).to_have_text("2")
    expect(page.locator("#count-failed")).to_have_text("1")
    expect(page.locator("#dashboard-running")).to_have_text("Running")
    expect(page.locator("#dashboard-batch-size")).to_have_text("3")
    expect(page.locator("#dashboard-interval")).to_have_text("60")
    # The last hour's chart: one bar per outcome and minute, drawn from the attempts.
    expect(page.locator("#outcome-chart")).to_be_visible()
    expect(page.locator("#chart-total-sent")).to_have_text("2")
    expect(page.locator("#chart-total-failed")).to_have_text("1")
    expect(page.locator("#outcome-chart rect.bar-sent")).to_have_count(2)
    expect(page.locator("#outcome-chart rect.bar-failed")).to_have_count(1)
    bar = page.locator("#outcome-chart rect.bar-failed").bounding_box()
    assert bar is not None
    assert bar["height"] > 10  # drawn, not a sliver: it is the tallest value on the chart
    failure = page.locator(f"#recent-failures tr.failure[data-message-id='{failed.pk}']")
    expect(failure).to_contain_text("HTTP 400: invalid recipient")
    expect(page.locator("#requeue-all")).to_have_text("Requeue all failed (1)")

    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000

    # Each count links to the changelist filtered by that status.
    page.click("#count-failed")
    expect(page).to_have_url(f"{live_server.url}{MESSAGES}?status__exact=failed")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)


def test_dashboard_stops_and_starts_the_dispatcher(page: Page, live_server):
    set_state(running=True)
    staff_login(page, live_server)
    page.goto(f"{live_server.url}{DASHBOARD}")

    page.click("#dashboard-stop")
    expect_success(page, "Dispatcher stopped")
    expect(page).to_have_url(f"{live_server.url}{DASHBOARD}")  # the button's `next`
    expect(page.locator("#dashboard-running")).to_have_text("Stopped")
    expect(page.locator("#dashboard-next-tick")).to_have_text("none while stopped")
    expect(page.locator("#dashboard-stop")).to_have_count(0)
    assert is_running() is False

    page.click("#dashboard-start")
    expect_success(page, "Dispatcher started")
    expect(page).to_have_url(f"{live_server.url}{DASHBOARD}")
    expect(page.locator("#dashboard-running")).to_have_text("Running")
    # The first tick is due at once (no qcluster runs here to take it): due, not "0 s ago".
    expect(page.locator("#dashboard-next-tick")).to_contain_text("due now")
    expect(page.locator("#dashboard-start")).to_have_count(0)
    expect(page.locator("#dashboard-stop")).to_be_visible()
    assert is_running() is True


def test_dashboard_requeues_all_failed_after_confirmation(page: Page, live_server):
    set_state(running=True)
    failed = [make_failed(), make_failed()]
    sent = make_message(status=Status.SENT)
    staff_login(page, live_server)
    page.goto(f"{live_server.url}{DASHBOARD}")
    expect(page.locator("#count-failed")).to_have_text("2")

    page.click("#requeue-all")
    expect(page).to_have_url(f"{live_server.url}{REQUEUE_ALL}")
    expect(page.locator("#requeue-all-count")).to_have_text("2")
    # Nothing happens before the confirmation.
    assert Message.objects.filter(status=Status.FAILED).count() == 2

    page.click("#requeue-all-confirm")
    expect(page).to_have_url(f"{live_server.url}{DASHBOARD}")
    expect_success(page, "Requeued 2 failed message(s).")
    expect(page.locator("#count-failed")).to_have_text("0")
    expect(page.locator("#count-unsent")).to_have_text("2")
    expect(page.locator("#no-failures")).to_be_visible()
    for message in failed:
        message.refresh_from_db()
        assert message.status == Status.UNSENT
        assert message.attempts == 0
    sent.refresh_from_db()
    assert sent.status == Status.SENT


def test_dashboard_requeue_all_can_be_cancelled(page: Page, live_server):
    failed = make_failed()
    staff_login(page, live_server)
    page.goto(f"{live_server.url}{REQUEUE_ALL}")
    expect(page.locator("#requeue-all-count")).to_have_text("1")

    page.click("#requeue-all-cancel")
    expect(page).to_have_url(f"{live_server.url}{DASHBOARD}")
    expect(page.locator("#count-failed")).to_have_text("1")
    failed.refresh_from_db()
    assert failed.status == Status.FAILED


# --- the message changelist -------------------------------------------------------------------


def test_requeue_a_failed_message_from_the_changelist(page: Page, live_server):
    failed = make_failed()
    other_failed = make_failed()
    staff_login(page, live_server)
    page.goto(f"{live_server.url}{MESSAGES}")
    expect(page.locator("#result_list tbody tr")).to_have_count(2)

    page.check(f"#result_list input.action-select[value='{failed.pk}']")
    page.select_option("select[name=action]", label="Requeue selected failed messages")
    page.click("button[name=index]")  # "Go"

    expect_success(page, "Requeued 1 failed message(s).")
    expect(page).to_have_url(re.compile(re.escape(MESSAGES)))
    failed.refresh_from_db()
    assert failed.status == Status.UNSENT
    assert failed.attempts == 0
    other_failed.refresh_from_db()
    assert other_failed.status == Status.FAILED  # not selected, not touched
    row = page.locator("#result_list tbody tr", has=page.locator(f"input.action-select[value='{failed.pk}']"))
    expect(row.locator("td.field-status_badge")).to_have_text("Unsent")


LONG_CONTENT = "Your verification code is 482193. It expires in ten minutes; do not share it with anyone. " * 3
LONG_ERROR = "HTTP 400 from the provider: invalid recipient, the number is not a mobile number in any network we reach"
LONG_PROVIDER_ID = "SM3f2a9c4e1b7d4e8a9c2f6d5e4b3a2c1f0e9d8c7b"


def fill_the_message_list() -> dict[str, Message]:
    now = timezone.now()
    shown = {
        "sent": make_message(
            status=Status.SENT, content=LONG_CONTENT, provider_message_id=LONG_PROVIDER_ID, sent_at=now
        ),
        "failed": make_failed(content=LONG_CONTENT, last_error=LONG_ERROR),
        "scheduled": make_message(content="later", send_after=now + dt.timedelta(days=3)),
        "multiline": make_message(content="line one\nline two\nline three", priority=Message.Priority.HIGH),
    }
    for status in (Status.PROCESSING, Status.CANCELLED, Status.EXPIRED):
        make_message(status=status, content="short")
    Message.objects.filter(pk=shown["sent"].pk).update(created_at=now - dt.timedelta(days=12, hours=23))
    # The widest a row gets: an eight-digit id, both times in minutes, every text cut.
    almost_an_hour = now - dt.timedelta(minutes=59, seconds=30)
    shown["widest"] = make_message(
        pk=12_345_678,
        status=Status.PROCESSING,
        content=LONG_CONTENT,
        provider_message_id=LONG_PROVIDER_ID,
        sent_at=almost_an_hour,
        last_error=LONG_ERROR,
        attempts=10,
    )
    Message.objects.filter(pk=shown["widest"].pk).update(created_at=almost_an_hour)
    return shown


@pytest.mark.parametrize(
    ("width", "height", "sidebar"),
    [(1366, 768, "open"), (1280, 800, "closed")],
    ids=["1366-with-the-sidebar", "1280-sidebar-closed"],
)
def test_the_message_list_fits_a_laptop_screen_one_line_a_row(
    page: Page, live_server, tmp_path, width, height, sidebar
):
    shown = fill_the_message_list()
    staff_login(page, live_server)
    page.set_viewport_size({"width": width, "height": height})
    page.goto(f"{live_server.url}{MESSAGES}")
    if sidebar == "closed":
        page.click("#toggle-nav-sidebar")  # the admin remembers it closed
    expect(page.locator("#nav-sidebar")).to_be_visible(visible=sidebar == "open")
    expect(page.locator("#result_list tbody tr")).to_have_count(8)
    page.screenshot(path=str(tmp_path / f"messages-{width}x{height}.png"))

    # Every column within the window: nothing to scroll sideways.
    results = page.locator("#changelist .results")
    assert results.evaluate("el => el.scrollWidth <= el.clientWidth"), "the list scrolls sideways"
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    headers = page.locator("#result_list thead th")
    for i in range(headers.count()):
        box = headers.nth(i).bounding_box()
        assert box is not None and box["x"] + box["width"] <= width, headers.nth(i).inner_text()
    for column in ("sent", "provider id", "last error"):
        expect(page.locator("#result_list thead th", has_text=column)).to_be_in_viewport()

    # One line a row, however long the content, the error or the provider's id.
    heights = page.locator("#result_list tbody tr").evaluate_all("rows => rows.map(r => r.offsetHeight)")
    assert max(heights) <= 40 and max(heights) == min(heights), heights

    # What is cut short is whole on hover, and on the message's own page.
    row = page.locator("#result_list tbody tr", has=page.locator(f"input.action-select[value='{shown['failed'].pk}']"))
    expect(row.locator("td.field-content_preview span")).to_have_attribute("title", LONG_CONTENT)
    expect(row.locator("td.field-error_preview span")).to_have_attribute("title", LONG_ERROR)
    sent_row = page.locator(
        "#result_list tbody tr", has=page.locator(f"input.action-select[value='{shown['sent'].pk}']")
    )
    expect(sent_row.locator("td.field-provider_id_preview span")).to_have_attribute("title", LONG_PROVIDER_ID)
    expect(sent_row.locator("td.field-created_at span")).to_have_text("12 d ago")
    expect(sent_row.locator("td.field-created_at span")).to_have_attribute(
        "title", re.compile(r" UTC \(12 d 23 h ago\)$")
    )


def button_look(page: Page, selector: str) -> dict:
    return page.locator(selector).evaluate(
        """el => { const s = getComputedStyle(el);
        return {radius: s.borderTopLeftRadius, transform: s.textTransform, size: s.fontSize, weight: s.fontWeight,
                padding: s.padding, height: Math.round(el.getBoundingClientRect().height)}; }"""
    )


def test_the_page_buttons_look_like_the_admin_s_own_links_beside_them(page: Page, live_server):
    set_state(running=True)
    failed = make_failed()
    unsent = make_message()
    staff_login(page, live_server)

    page.goto(f"{live_server.url}{MESSAGES}{failed.pk}/change/")
    history = button_look(page, ".object-tools a.historylink")
    assert button_look(page, "#message-requeue") == history
    page.goto(f"{live_server.url}{MESSAGES}{unsent.pk}/change/")
    assert button_look(page, "#message-cancel") == history
    page.goto(f"{live_server.url}{DISPATCHER_CHANGE}")
    assert button_look(page, "#dispatcher-stop") == button_look(page, "#dispatcher-dashboard-link") == history
    # Styled from the site's stylesheets: no style attribute on these pages.
    assert page.locator("#content [style]").count() == 0

    # The dashboard's buttons are the admin's own buttons, as big as "Save pace" below them.
    page.goto(f"{live_server.url}{DASHBOARD}")
    save = button_look(page, "#dashboard-pace-save")
    assert button_look(page, "#dashboard-stop") == save
    assert button_look(page, "#requeue-all") == save
    assert page.locator("#content [style], style").count() == 0


def test_cancel_an_unsent_message_from_its_own_page(page: Page, live_server):
    unsent = make_message(send_after=timezone.now() + dt.timedelta(hours=1))
    staff_login(page, live_server)
    page.goto(f"{live_server.url}{MESSAGES}{unsent.pk}/change/")
    expect(page.locator(".field-status .readonly")).to_have_text("Unsent")

    page.click("#message-cancel")

    expect_success(page, f"Cancelled message #{unsent.pk}: it will not be sent.")
    expect(page).to_have_url(f"{live_server.url}{MESSAGES}{unsent.pk}/change/")
    expect(page.locator(".field-status .readonly")).to_have_text("Cancelled")
    expect(page.locator("#message-cancel")).to_have_count(0)
    unsent.refresh_from_db()
    assert unsent.status == Status.CANCELLED


# --- the dispatcher page ----------------------------------------------------------------------


def test_stop_and_start_the_dispatcher_from_its_admin_page(page: Page, live_server):
    set_state(running=True)
    staff_login(page, live_server)
    page.click(f"#content-main a[href='{DISPATCHER}']")  # "Dispatcher" in the app list
    expect(page).to_have_url(f"{live_server.url}{DISPATCHER_CHANGE}")  # the one row's page
    running = page.locator(".field-running .readonly img")  # the admin's boolean icon
    expect(running).to_have_attribute("alt", "True")

    page.click("#dispatcher-stop")
    expect_success(page, "Dispatcher stopped: no more messages will be claimed.")
    expect(page).to_have_url(f"{live_server.url}{DISPATCHER_CHANGE}")
    expect(page.locator("#dispatcher-stop")).to_have_count(0)
    expect(running).to_have_attribute("alt", "False")
    assert is_running() is False

    page.click("#dispatcher-start")
    expect_success(page, "Dispatcher started: the first tick runs now.")
    expect(page.locator("#dispatcher-start")).to_have_count(0)
    expect(page.locator("#dispatcher-stop")).to_be_visible()
    expect(running).to_have_attribute("alt", "True")
    assert is_running() is True


# --- Swagger UI -------------------------------------------------------------------------------


def test_swagger_ui_renders_the_endpoints(page: Page, live_server):
    local_failures: list[str] = []
    page.on(
        "requestfailed",
        lambda request: (
            local_failures.append(f"{request.url} ({request.failure})")
            if request.url.startswith(live_server.url)
            else None
        ),
    )
    page.on(
        "response",
        lambda response: (
            local_failures.append(f"{response.url} -> {response.status}")
            if response.url.startswith(live_server.url) and response.status >= 400
            else None
        ),
    )

    page.goto(f"{live_server.url}/api/docs/")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Message sending service API")
    expect(page.locator(".opblock").first).to_be_visible()

    paths = set(page.locator(".opblock-summary-path").evaluate_all("nodes => nodes.map(n => n.dataset.path)"))
    assert {
        "/api/messages/",
        "/api/messages/{id}/",
        "/api/messages/{id}/requeue/",
        "/api/messages/bulk/",
        "/api/dispatcher/",
        "/api/dispatcher/start/",
        "/api/dispatcher/stop/",
    } <= paths
    assert page.locator(".opblock").count() >= 10
    text = page.locator(".swagger-ui").inner_text().replace("\u200b", "")
    assert "/api/messages/" in text
    assert "/api/dispatcher/" in text
    # Swagger UI's code, styles and the schema all came from this server.
    assert local_failures == []


# --- a failed message's page -------------------------------------------------------------------


def test_requeue_a_failed_message_from_its_own_page(page: Page, live_server):
    failed = make_failed()
    staff_login(page, live_server)
    page.goto(f"{live_server.url}{MESSAGES}{failed.pk}/change/")
    expect(page.locator(".field-status .readonly")).to_have_text("Failed")
    expect(page.locator(".field-next_attempt .readonly")).to_have_text("-")

    page.click("#message-requeue")

    expect_success(page, f"Requeued message #{failed.pk}: back in the queue with a fresh budget of attempts.")
    expect(page).to_have_url(f"{live_server.url}{MESSAGES}{failed.pk}/change/")
    expect(page.locator(".field-status .readonly")).to_have_text("Unsent")
    expect(page.locator("#message-requeue")).to_have_count(0)  # only a failed message has it
    failed.refresh_from_db()
    assert (failed.status, failed.attempts) == (Status.UNSENT, 0)


# --- the branded admin -------------------------------------------------------------------------


def test_the_admin_is_the_message_sending_service_s_with_messages_first(page: Page, live_server):
    page.goto(f"{live_server.url}/admin/login/")
    expect(page.locator("#site-name")).to_have_text("Message sending service")
    expect(page).to_have_title(re.compile(r"\| Message sending service$"))

    staff_login(page, live_server)

    expect(page).to_have_title("Operator console | Message sending service")
    expect(page.locator("#site-name")).to_have_text("Message sending service")
    expect(page.locator("#content h1")).to_have_text("Operator console")
    apps = [
        text.strip() for text in page.locator("#content-main div.module[class*='app-'] caption").all_text_contents()
    ]
    assert apps[:4] == ["Messages", "Dispatcher", "Consent", "Audit log"], apps
    icon = page.request.get(f"{live_server.url}/favicon.ico")
    assert icon.ok and icon.headers["content-type"] in ("image/x-icon", "image/vnd.microsoft.icon")
