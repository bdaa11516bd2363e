"""The template page's live preview in a real browser, under the Content-Security-Policy:
typing a body and sample values shows the message, its encoding, segments and the
characters that make it UCS-2, with no inline script and no violation."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from message_templates import services
from tests.browser.conftest import staff_login
from tests.browser.test_csp import Violations, policy_of

pytestmark = pytest.mark.browser


def test_the_template_page_previews_live_under_the_policy(page: Page, live_server):
    violations = Violations(page)
    template = services.template_create(name="welcome", bodies={"en": "Hi ((name))"}, default_language="en")
    staff_login(page, live_server)

    response = page.goto(f"{live_server.url}/admin/message_templates/template/{template.pk}/change/")
    policy_of(response)
    # The saved body previews at once: its placeholder has no sample value yet.
    expect(page.locator("#template-preview-errors")).to_contain_text("Missing personalisation: name.")
    page.fill("#id_sample", '{"name": "Ada"}')
    expect(page.locator("#template-preview-text")).to_have_text("Hi Ada")
    expect(page.locator("#template-preview-cost")).to_contain_text("GSM-7, 1 segment")
    page.fill("#id_body", "Merhaba ((name)), hoş geldin")
    expect(page.locator("#template-preview-text")).to_have_text("Merhaba Ada, hoş geldin")
    expect(page.locator("#template-preview-cost")).to_contain_text("UCS-2, 1 segment")
    expect(page.locator("#template-preview-ucs2")).to_contain_text("at position 16 makes it UCS-2")

    for path in (
        "/admin/message_templates/template/",
        "/admin/message_templates/template/add/",
        f"/admin/message_templates/template/{template.pk}/send/",
    ):
        response = page.goto(f"{live_server.url}{path}")
        assert response.status == 200, path
        expect(page.locator("#content")).to_be_visible()
        page.wait_for_load_state("load")
    assert violations.all() == []
