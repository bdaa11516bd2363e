"""The Content-Security-Policy on the admin, the dashboard and the API docs, in a
real browser: every page sends it, and renders under it with no violation (no
inline script, everything loaded from this site); Swagger UI and Redoc, served
locally, still draw the API."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from dispatcher.models import DispatcherState
from messages_app.models import Message
from tests.browser.conftest import staff_login
from tests.factories import make_message

pytestmark = pytest.mark.browser

ADMIN_PAGES = [
    "/admin/",
    "/admin/dispatcher/dispatcherstate/dashboard/",
    "/admin/dispatcher/dispatcherstate/dashboard/requeue-failed/",
    "/admin/messages_app/message/",
    "/admin/messages_app/message/add/",
    "/admin/dispatcher/dispatcherstate/1/change/",
    "/admin/audit/controlaction/",
]


class Violations:
    """CSP violations a page reports: securitypolicyviolation events and the console's "Refused to ..." lines."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[str] = []
        page.on(
            "console",
            lambda message: self.console.append(message.text) if "Content Security Policy" in message.text else None,
        )
        # Injected by the browser itself, so the policy does not apply to this script.
        page.add_init_script(
            "window.__cspViolations = [];"
            "document.addEventListener('securitypolicyviolation', e =>"
            " window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));"
        )

    def all(self) -> list[str]:
        return [*self.console, *self.page.evaluate("window.__cspViolations")]


def policy_of(response) -> str:
    policy = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in policy, policy
    assert "unsafe-inline" not in policy.split("script-src", 1)[1].split(";", 1)[0]
    assert "frame-ancestors 'none'" in policy
    return policy


@pytest.fixture
def violations(page: Page) -> Violations:
    return Violations(page)


def test_the_login_page_renders_under_the_policy(page: Page, live_server, violations):
    response = page.goto(f"{live_server.url}/admin/login/")
    policy_of(response)
    expect(page.locator("#login-form")).to_be_visible()
    assert violations.all() == []


def test_every_admin_page_and_the_dashboard_render_under_the_policy(page: Page, live_server, violations):
    DispatcherState.objects.update_or_create(pk=DispatcherState.SINGLETON_PK, defaults={"running": True})
    make_message(status=Message.Status.FAILED, attempts=5, last_error="HTTP 400")
    make_message(status=Message.Status.SENT)
    staff_login(page, live_server)

    for path in ADMIN_PAGES:
        response = page.goto(f"{live_server.url}{path}")
        assert response.status == 200, path
        policy_of(response)
        expect(page.locator("#content")).to_be_visible()
        page.wait_for_load_state("networkidle")
        assert violations.all() == [], path

    # The dashboard's chart and the changelist's scripts (actions, filters) work under it.
    page.goto(f"{live_server.url}/admin/dispatcher/dispatcherstate/dashboard/")
    expect(page.locator("#outcome-chart")).to_be_visible()
    page.goto(f"{live_server.url}/admin/messages_app/message/")
    page.check("#action-toggle")
    expect(page.locator(".action-counter")).to_contain_text("2 of 2 selected")
    assert violations.all() == []


def test_swagger_ui_renders_under_the_policy(page: Page, live_server, violations):
    response = page.goto(f"{live_server.url}/api/docs/")
    policy_of(response)
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Message sending service API")
    expect(page.locator(".opblock").first).to_be_visible()
    page.locator(".opblock-summary").first.click()  # opening an operation runs more of its code
    page.wait_for_load_state("networkidle")
    assert violations.all() == []


def test_redoc_renders_under_the_policy(page: Page, live_server, violations):
    response = page.goto(f"{live_server.url}/api/redoc/")
    policy_of(response)
    expect(page.locator("h1").first).to_contain_text("Message sending service API")
    expect(page.locator("h2", has_text="Put a failed message back in the queue")).to_be_visible()
    page.wait_for_load_state("networkidle")
    assert violations.all() == []
