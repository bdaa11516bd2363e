"""LOG_FORMAT: plain by default, json for one object per line with each message's id and uuid."""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from django.conf import settings
from django.utils.log import configure_logging

from dispatcher.engine.pipeline import run_tick_here
from dispatcher.engine.providers import ProviderError, locmem
from dispatcher.state import dispatcher_state_ensure
from messaging_site.logging_config import build_logging
from tests.factories import make_message
from tests.processes import free_port, newcomer_env, production_gunicorn, running, wait_for, wait_for_log


@pytest.fixture
def json_log_lines():
    """Configure logging as LOG_FORMAT=json does; return a callable giving the lines written so far, parsed."""
    stream = io.StringIO()
    configure_logging(settings.LOGGING_CONFIG, build_logging(log_format="json", level="INFO"))
    [console] = [h for h in logging.getLogger().handlers if h.name == "console"]
    console.setStream(stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)


def _settings_in_subprocess(code: str, **env) -> subprocess.CompletedProcess:
    # The rest (a strong SECRET_KEY, http allowed) is what tests.settings put in os.environ.
    environment = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=settings.BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.django_db
def test_json_dispatch_lines_carry_the_message_id_and_uuid(json_log_lines):
    dispatcher_state_ensure()
    messages = {m.pk: m for m in (make_message(), make_message())}
    locmem.failures.append(ProviderError("HTTP 503", http_status=503))  # one of the two is retried

    run_tick_here()

    lines = json_log_lines()
    per_message = [line for line in lines if "message_id" in line]
    assert sorted(line["message"].split(" id=")[0] for line in per_message) == ["retrying message", "sent message"]
    for line in per_message:
        message = messages[line["message_id"]]
        assert line["message_uuid"] == str(message.uuid)
        # The text is the same as in plain format.
        assert f" id={message.pk} uuid={message.uuid} attempt=1 " in line["message"]
        assert line["logger"] == "dispatcher.engine.recording"
        assert line["level"] in {"INFO", "WARNING"}
        assert line["process"] == os.getpid()
        assert line["timestamp"].endswith("+00:00")
    # A batch line names the count and the first and last ids, however big the batch.
    [claimed] = [line for line in lines if line["message"].startswith("manual tick claimed 2 messages")]
    assert f"(ids {min(messages)}..{max(messages)})" in claimed["message"]


def test_every_json_line_is_one_object(json_log_lines):
    logging.getLogger("dispatcher.test").warning("two\nlines", extra={"message_id": 7})

    [line] = json_log_lines()
    assert line["message"] == "two\nlines"
    assert line["message_id"] == 7


def test_plain_format_is_unchanged_by_default():
    config = build_logging(log_format="plain", level="INFO")

    assert config["handlers"]["console"]["formatter"] == "plain"
    assert config["formatters"]["plain"]["format"] == "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"


def test_log_format_json_is_read_from_the_environment():
    result = _settings_in_subprocess(
        "import messaging_site.settings as s; print(s.LOG_FORMAT, s.LOGGING['handlers']['console']['formatter'])",
        LOG_FORMAT="JSON",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["json", "json"]


def test_a_malformed_log_format_stops_start_up_naming_the_variable():
    result = _settings_in_subprocess("import messaging_site.settings", LOG_FORMAT="xml")

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "LOG_FORMAT must be one of plain, json, got 'xml'" in result.stderr


# --- runserver, as `make run` starts it -------------------------------------------------------


def get_status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.process
@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_runserver_logs_each_request_once_and_starts_watching_files_once(tmp_path, log_format):
    env = newcomer_env(tmp_path)
    env.update(DEBUG="true", SECRET_KEY=secrets.token_urlsafe(50), LOG_FORMAT=log_format, ENV_FILE="")
    port = free_port()
    # With the autoreloader, as `make run` (Procfile.dev) runs it.
    with running(["runserver", f"127.0.0.1:{port}"], env=env, log_path=tmp_path / "web.log") as web:
        wait_for_log(web, "Quit the server with CONTROL-C.", timeout=60)
        assert get_status(f"http://127.0.0.1:{port}/no-such-page") == 404
        assert get_status(f"http://127.0.0.1:{port}/api/messages/") == 401
        assert get_status(f"http://127.0.0.1:{port}/healthz") == 200
        wait_for_log(web, "GET /healthz HTTP/1.1", timeout=10)
    lines = web.log().splitlines()

    assert len([line for line in lines if "Watching for file changes" in line]) == 1, web.log()
    for path in ("/no-such-page", "/api/messages/", "/healthz"):
        assert len([line for line in lines if path in line]) == 1, web.log()
    if log_format == "json":
        records = [json.loads(line) for line in lines if line.startswith("{")]
        [not_found] = [r for r in records if "/no-such-page" in r["message"]]
        assert not_found["logger"] == "django.server"
        assert not_found["status_code"] == 404
        assert "request" not in not_found  # runserver's socket, as text


# --- access logs keep no personal data ------------------------------------------------------------

# A search by number, and the admin page it came from (its own search), as a browser sends them.
SEARCH = "/api/messages/?recipient_phone_number=%2B905551112233&status=failed&page_size=5"
REFERER = "/admin/messages_app/message/?q=%2B905551112299&status__exact=sent"


def assert_the_search_is_logged_without_the_numbers(log: str) -> None:
    [line] = [line for line in log.splitlines() if "/api/messages/?" in line]
    assert "/api/messages/?recipient_phone_number=REDACTED&status=failed&page_size=5 " in line, line
    assert "905551112233" not in log and "905551112299" not in log, log


@pytest.mark.process
@pytest.mark.django_db(transaction=True)
def test_gunicorns_access_log_redacts_personal_data_in_queries(tmp_path):
    # Issue 20: the production access log wrote every ?recipient_phone_number= it was asked.
    with production_gunicorn(tmp_path) as server:
        assert get_status(server.base + SEARCH, headers={"Referer": server.base + REFERER}) == 401
        wait_for(lambda: "/api/messages/?" in (tmp_path / "gunicorn.log").read_text(), timeout=10, what="the line")

    log = (tmp_path / "gunicorn.log").read_text()
    assert_the_search_is_logged_without_the_numbers(log)
    assert "/admin/messages_app/message/?q=REDACTED&status__exact=sent" in log  # the Referer


@pytest.mark.process
def test_runservers_access_log_redacts_personal_data_in_queries(tmp_path):
    env = newcomer_env(tmp_path)
    env.update(DEBUG="true", SECRET_KEY=secrets.token_urlsafe(50), ENV_FILE="")
    port = free_port()
    with running(["runserver", "--noreload", f"127.0.0.1:{port}"], env=env, log_path=tmp_path / "web.log") as web:
        wait_for_log(web, "Quit the server with CONTROL-C.", timeout=60)
        assert get_status(f"http://127.0.0.1:{port}{SEARCH}") == 401
        wait_for_log(web, "/api/messages/?", timeout=10)

    assert_the_search_is_logged_without_the_numbers(web.log())
