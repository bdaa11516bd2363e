"""Browser tests: real headless Chromium (Debian's `chromium`) driven by Playwright's
sync API against pytest-django's `live_server`.

Chromium comes from the system, never from `playwright install`: /usr/bin/chromium
(`make browser-deps` installs it), or the path in CHROMIUM_PATH.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from tests.factories import make_user

DEFAULT_CHROMIUM = "/usr/bin/chromium"
# Waits end as soon as their condition holds: this bound only matters on a loaded machine, where
# Redoc took over 10 s to render the schema (a CI run alongside a benchmark).
TIMEOUT_MS = 30_000

# Headless, and quiet on a closed network: no background fetches, updates or sync.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

STAFF_USERNAME = "browser-admin"
STAFF_PASSWORD = "pw-for-tests-only"  # what tests.factories.make_user sets


def chromium_path() -> str:
    """The Chromium to drive; fails the test (not skips it) with how to install it."""
    path = os.environ.get("CHROMIUM_PATH") or DEFAULT_CHROMIUM
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"Chromium not found at {path!r}; the browser tests need it. Install Debian's chromium with "
            "`make browser-deps` (sudo apt-get install -y --no-install-recommends chromium), "
            "or point CHROMIUM_PATH at a Chromium binary.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="package")
def chromium_executable() -> str:
    return chromium_path()


@pytest.fixture(scope="package")
def playwright(chromium_executable: str) -> Iterator[Playwright]:
    """Playwright for the browser tests only (this package), stopped when they end.

    Between its sync calls Playwright marks its event loop as running in this
    thread, so Django's async-safety guard would refuse the tests' (and
    live_server's database teardown's) ORM calls: it is switched off exactly as
    long as Playwright runs, and the tests that come after are unaffected.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as pw:
            yield pw


@pytest.fixture(scope="package")
def browser(playwright: Playwright, chromium_executable: str) -> Iterator[Browser]:
    """One headless Chromium for all the browser tests."""
    expect.set_options(timeout=TIMEOUT_MS)
    browser = playwright.chromium.launch(executable_path=chromium_executable, args=CHROMIUM_ARGS, timeout=30_000)
    yield browser
    browser.close()


@pytest.fixture
def page(browser: Browser, live_server) -> Iterator[Page]:
    """A fresh browser context (no cookies) and page per test, with 30 s timeouts."""
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


def staff_login(page: Page, live_server, *, username: str = STAFF_USERNAME):
    """Create a superuser in the test database and log in through the real /admin/login/ form.

    Returns the user; the page is left on the admin index.
    """
    user = make_user(username=username, superuser=True)
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", STAFF_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
    expect(page.locator("#user-tools")).to_contain_text(username)
    return user
