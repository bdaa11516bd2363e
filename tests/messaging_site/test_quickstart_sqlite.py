"""The quick start's path, end to end, on what `make run` uses: SQLite and the file
cache (no PostgreSQL, no Redis), the production settings module with DEBUG on.

migrate, create a message through the API with a token, and a real qcluster sends
it through the real fake provider; the sent list shows it, and the provider's signed
delivery receipt, taken in by the web process, marks it delivered.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import urllib.request

import pytest

from tests.processes import fake_provider, free_port, manage, running, wait_for, wait_for_log

pytestmark = pytest.mark.process


def quickstart_env(tmp_path, **overrides: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        # What `make run`'s .env does not set must come from the defaults, not the test run.
        if not name.startswith(("DATABASE_", "REDIS_", "DISPATCH_", "WEBHOOK_", "THROTTLE_"))
        and name not in ("DJANGO_SETTINGS_MODULE", "SECRET_KEY")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="messaging_site.settings",
        LOCAL_STATE_DIR=str(tmp_path / "state"),
        DEBUG="true",
        SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_SUPERUSER_PASSWORD=secrets.token_urlsafe(12),
        DISPATCH_BATCH_SIZE="2",
        DISPATCH_INTERVAL_SECONDS="1",
        PYTHONUNBUFFERED="1",
        ENV_FILE="",  # not a developer's local .env
        **overrides,
    )
    return env


def api(method: str, url: str, token: str, body: object | None = None) -> dict:
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_quick_start_on_sqlite_sends_a_message_created_through_the_api(tmp_path):
    port = free_port()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    receipts = ("--receipts-url", f"http://127.0.0.1:{port}/api/receipts/", "--receipt-secret", secret)
    with fake_provider(tmp_path, *receipts, "--receipt-delay-ms", "100") as provider:
        env = quickstart_env(tmp_path, WEBHOOK_URL=provider.url, RECEIPT_WEBHOOK_SECRET=secret)
        for args in (["migrate", "--no-input"], ["ensure_superuser", "--username", "admin"]):
            done = manage(args, env=env, timeout=120)
            assert done.returncode == 0, done.stdout
        assert (tmp_path / "state" / "db.sqlite3").exists()
        token = manage(["drf_create_token", "admin"], env=env).stdout.split()[2]

        web_args = ["runserver", f"127.0.0.1:{port}", "--noreload"]
        with (
            running(web_args, env=env, log_path=tmp_path / "web.log") as web,
            running(["qcluster"], env=env, log_path=tmp_path / "qcluster.log") as worker,
        ):
            wait_for_log(worker, "running.", timeout=30)
            wait_for_log(web, "Quit the server", timeout=30)
            base = f"http://127.0.0.1:{port}/api/"
            # A fresh schedule first fires when django-q2's scheduler wakes (up to 30 s);
            # start opens a window at once.
            api("POST", base + "dispatcher/stop/", token)
            api("POST", base + "dispatcher/start/", token)

            created = api(
                "POST", base + "messages/", token, {"recipient_phone_number": "+905551112233", "content": "hi"}
            )
            assert created["status"] == "unsent"

            def sent() -> bool:
                return [m["id"] for m in api("GET", base + "messages/sent/", token)["results"]] == [created["id"]]

            wait_for(sent, timeout=60, interval=0.5, what=f"message {created['id']} in the sent list")
            message = api("GET", base + f"messages/{created['id']}/", token)
            assert message["status"] == "sent" and message["provider_message_id"]
            received = json.loads(urllib.request.urlopen(provider.url + "_fake/requests", timeout=5).read())
            assert [r["message_id"] for r in received] == [message["provider_message_id"]]
            assert f"sent message id={created['id']}" in worker.log()

            def delivered() -> bool:
                return api("GET", base + f"messages/{created['id']}/", token)["delivery_status"] == "delivered"

            wait_for(delivered, timeout=30, interval=0.5, what=f"the delivery receipt of message {created['id']}")
            assert f"message id={created['id']} messageId={message['provider_message_id']} delivered" in web.log()
