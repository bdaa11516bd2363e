"""End to end: one CSV of 10,000 recipients with personalisation, queued from a template
through the import and through the API's bulk, sent by a real `manage.py dispatcher drain`
through the fake provider, each message with its own text."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from collections import Counter, deque

import pytest
from django.core.management import call_command

from dispatcher.state import dispatcher_start
from message_templates import services
from messages_app.models import Message
from tests.processes import REPO_ROOT, child_env, fake_provider_in_thread

pytestmark = [pytest.mark.process, pytest.mark.django_db(transaction=True)]

RECIPIENTS = 10_000
BODY = "Hi ((name)), your table for ((guests)) is at ((time)).((vip?? Ask for the terrace.))"


def expected_text(name: str, guests: str, time: str, vip: str) -> str:
    return f"Hi {name}, your table for {guests} is at {time}." + (" Ask for the terrace." if vip == "yes" else "")


def test_ten_thousand_recipients_through_the_import_and_the_api_all_sent_with_their_text(tmp_path, editor_client):
    services.template_create(name="booking", bodies={"en": BODY}, default_language="en")
    rows = [
        {
            "recipient_phone_number": f"+9055{i:08d}",
            "name": f"Guest {i} {'Şule' if i % 7 == 0 else 'Ada'}",  # some texts UCS-2
            "guests": str(i % 6 + 1),
            "time": f"{18 + i % 4}:00",
            "vip": "yes" if i % 3 == 0 else "no",
        }
        for i in range(RECIPIENTS)
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    path = tmp_path / "recipients.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8")

    out = io.StringIO()
    call_command("import_messages", str(path), "--template", "booking", stdout=out, stderr=io.StringIO())
    assert out.getvalue() == f"Imported {RECIPIENTS} messages; 0 rows rejected.\n"

    for start in range(0, RECIPIENTS, 1000):
        items = [
            {
                "recipient_phone_number": row["recipient_phone_number"],
                "template": "booking",
                "personalisation": {k: v for k, v in row.items() if k != "recipient_phone_number"},
            }
            for row in rows[start : start + 1000]
        ]
        response = editor_client.post("/api/messages/bulk/", {"messages": items}, format="json")
        assert response.status_code == 201, response.content[:500]
    assert Message.objects.filter(status=Message.Status.UNSENT, template_version=1).count() == 2 * RECIPIENTS

    dispatcher_start()
    with fake_provider_in_thread() as fake:
        fake.state.requests = deque()  # keep every request, not the last 10,000
        drained = subprocess.run(
            [sys.executable, "manage.py", "dispatcher", "drain", "--batch-size", "1000"],
            cwd=REPO_ROOT,
            env=child_env(DISPATCH_PROVIDER_BACKEND="webhook", WEBHOOK_URL=fake.url, DISPATCH_CONCURRENCY="50"),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert drained.returncode == 0, drained.stderr[-2000:]
        received = Counter((request.to, request.content) for request in fake.requests())

    assert Message.objects.filter(status=Message.Status.SENT).count() == 2 * RECIPIENTS
    expected = Counter()
    for row in rows:
        text = expected_text(row["name"], row["guests"], row["time"], row["vip"])
        expected[(row["recipient_phone_number"], text)] += 2  # once from the import, once from the API
    assert received == expected
