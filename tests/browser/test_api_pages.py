"""The API's pages in a real browser: the dispatcher's state sent back through the
browsable API, Swagger UI's "Try it out" with the documented example, the API's
root, Redoc asking nothing of another site, and logging out from the browsable API's menu."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import Page, expect

from dispatcher.models import DispatcherState
from messages_app.models import Message
from tests.browser.conftest import staff_login
from tests.browser.test_csp import Violations as CspViolations

pytestmark = pytest.mark.browser

DISPATCHER_API = "/api/dispatcher/"


def make_state(**fields) -> DispatcherState:
    fields = {"running": True, "batch_size": 3, "interval_seconds": 60, **fields}
    state, _ = DispatcherState.objects.update_or_create(pk=DispatcherState.SINGLETON_PK, defaults=fields)
    return state


def shown_json(page: Page) -> dict:
    """The body of the answer the browsable API shows (its first JSON object)."""
    text = page.locator(".response-info pre").inner_text()
    return json.loads(text[text.index("{") :])


def patch_through_the_form(page: Page, body: dict) -> None:
    page.fill("#put-generic-content-form textarea[name=_content]", json.dumps(body, indent=4))
    page.click("#put-generic-content-form button[data-method=PATCH]")


def test_the_browsable_api_offers_the_writable_fields_and_takes_back_what_it_showed(page: Page, live_server):
    make_state(batch_size=3, interval_seconds=60)
    staff_login(page, live_server)
    page.goto(f"{live_server.url}{DISPATCHER_API}")
    expect(page.locator(".response-info")).to_contain_text("HTTP 200 OK")

    # The form holds just what PATCH sets.
    offered = json.loads(page.locator("#put-generic-content-form textarea[name=_content]").input_value())
    assert offered == {"batch_size": 3, "interval_seconds": 60}
    patch_through_the_form(page, {**offered, "batch_size": 7})
    expect(page.locator(".response-info")).to_contain_text('"batch_size": 7')
    expect(page.locator(".response-info")).to_contain_text("HTTP 200 OK")

    # A round trip: the whole state as shown, with the interval changed.
    page.goto(f"{live_server.url}{DISPATCHER_API}")
    everything = shown_json(page)
    assert {"running", "counts", "next_tick_at"} <= set(everything)
    patch_through_the_form(page, {**everything, "interval_seconds": 45})
    expect(page.locator(".response-info")).to_contain_text('"interval_seconds": 45')
    expect(page.locator(".response-info")).to_contain_text("HTTP 200 OK")
    state = DispatcherState.objects.get()
    assert (state.running, state.batch_size, state.interval_seconds) == (True, 7, 45)

    # What cannot be set this way is refused, saying where it is set.
    patch_through_the_form(page, {**everything, "running": False})
    expect(page.locator(".response-info")).to_contain_text("HTTP 400 Bad Request")
    expect(page.locator(".response-info")).to_contain_text("POST /api/dispatcher/stop/")
    assert DispatcherState.objects.get().running is True


def test_swagger_try_it_out_queues_the_example_message(page: Page, live_server):
    make_state()
    staff_login(page, live_server)  # Swagger UI sends the admin's session and its CSRF token
    page.goto(f"{live_server.url}/api/docs/")
    operation = page.locator("#operations-api-api_messages_create")
    operation.locator(".opblock-summary").click()

    operation.get_by_role("button", name="Try it out").click()
    body = json.loads(operation.locator("textarea.body-param__text").input_value())
    assert body == {"recipient_phone_number": "+905551112233", "content": "Your code is 4821."}
    operation.get_by_role("button", name="Execute").click()

    expect(operation.locator(".live-responses-table tbody .response-col_status").first).to_have_text("201")
    message = Message.objects.get()
    assert (message.recipient_phone_number, message.content, message.status) == (
        "+905551112233",
        "Your code is 4821.",
        Message.Status.UNSENT,
    )


def test_the_api_root_is_a_page_about_the_service_with_its_links(page: Page, live_server):
    staff_login(page, live_server)
    page.goto(f"{live_server.url}/api/")

    expect(page.locator("h1")).to_have_text("Message sending service API")
    expect(page.locator(".content-main")).to_contain_text("at a controlled rate")
    page.get_by_role("link", name=f"{live_server.url}/api/dispatcher/", exact=True).click()
    expect(page).to_have_url(f"{live_server.url}/api/dispatcher/")


def test_redoc_asks_no_other_site_and_shows_the_service_s_logo(page: Page, live_server):
    def elsewhere(url: str) -> bool:
        return url.startswith(("http:", "https:")) and not url.startswith(live_server.url)

    answered: list[str] = []
    blocked: dict[str, str | None] = {}
    page.on("response", lambda response: answered.append(response.url) if elsewhere(response.url) else None)
    page.on(
        "requestfailed",
        lambda request: blocked.update({request.url: request.failure}) if elsewhere(request.url) else None,
    )

    violations = CspViolations(page)
    page.goto(f"{live_server.url}/api/redoc/")
    expect(page.locator(".menu-content")).to_be_visible()
    logo = page.locator(".menu-content img").first
    expect(logo).to_have_attribute("src", "/favicon.svg")
    # Waited for, not asserted at once: on a loaded machine the image may still be loading.
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=logo.element_handle())
    expect(page.get_by_text("API docs by Redocly")).to_be_visible()  # the credit stays, as text
    page.wait_for_load_state("networkidle")

    # Redocly's logo on cdn.redoc.ly is not even asked for: no request the policy
    # has to stop, no violation in the console, only the service's own logo.
    assert answered == []
    assert blocked == {}
    assert violations.all() == []
    assert page.locator("img[src*='redoc.ly']").count() == 0
    assert page.locator(".menu-content img").count() == 1


# --- logging out of the browsable API -----------------------------------------------------------


def test_log_out_in_the_browsable_api_s_menu_logs_out(page: Page, live_server):
    violations = CspViolations(page)
    make_state()
    staff_login(page, live_server)
    page.goto(f"{live_server.url}{DISPATCHER_API}")
    expect(page.locator(".response-info")).to_contain_text("HTTP 200 OK")

    page.locator(".navbar .dropdown-toggle").click()  # the user's name opens the menu
    page.locator(".navbar .dropdown-menu").get_by_text("Log out").click()

    # Back on the same address, now anonymous: the API asks for credentials.
    expect(page.locator(".navbar").get_by_role("link", name="Log in")).to_be_visible()
    expect(page).to_have_url(f"{live_server.url}{DISPATCHER_API}")
    expect(page.locator(".response-info")).to_contain_text("HTTP 401 Unauthorized")
    assert page.request.get(f"{live_server.url}{DISPATCHER_API}").status == 401
    assert page.context.request.get(f"{live_server.url}/admin/").url.endswith("/admin/login/?next=/admin/")
    assert violations.all() == []
