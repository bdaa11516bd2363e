"""`python -m bench templates`: bulk enqueue from a template against the same bulk with the
finished content, in the same run (issue 23's target: at least 0.8 x).

In-process, as `bench bulk`: the Django test client posts `POST /api/messages/bulk/` to
the benchmark database, so what is timed is the endpoint (validation, rendering, the
INSERT, the answer) and not a web server. Both kinds of request carry the same
recipients and produce the same texts: the content one has each text written out, the
template one names the template and gives each recipient's personalisation. The two
alternate request by request (content, template, content, ...), so a slower moment of
the shared machine falls on both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import BenchError, connect, empty_tables, timing_summary
from bench.inprocess import _api_client, setup_django

TEMPLATE_NAME = "bench-appointment"
BODY = "Hi ((name)), your appointment is on ((day)) at ((time)).((vip?? Ask for the lounge.))"
TARGET_RATIO = 0.8


def _personalisation(i: int) -> dict[str, str]:
    return {
        "name": f"Guest {i}",
        "day": f"{i % 28 + 1} March",
        "time": f"{9 + i % 8}:00",
        "vip": "yes" if i % 3 else "no",
    }


def _text(values: dict[str, str]) -> str:
    return f"Hi {values['name']}, your appointment is on {values['day']} at {values['time']}." + (
        " Ask for the lounge." if values["vip"] == "yes" else ""
    )


def templates(options: argparse.Namespace) -> dict:
    if options.messages < 1 or options.per_request < 1:
        raise BenchError("--messages and --per-request must be at least 1")
    setup_django()
    from django.conf import settings

    if options.per_request > settings.MESSAGE_BULK_MAX_ITEMS:
        raise BenchError(f"--per-request is above MESSAGE_BULK_MAX_ITEMS ({settings.MESSAGE_BULK_MAX_ITEMS})")
    from django.db import connection

    from message_templates.models import Template
    from message_templates.services import template_create
    from messages_app.models import Message

    connection.close()  # ours must not count as "someone else is using the database"
    with connect() as conn:
        empty_tables(conn)
    Template.objects.filter(name=TEMPLATE_NAME).delete()
    template_create(name=TEMPLATE_NAME, bodies={"en": BODY}, default_language="en")
    client = _api_client()

    def payload(start: int, count: int, *, from_template: bool) -> dict:
        items = []
        for i in range(start, start + count):
            number, values = f"+90 555 00{i % 100_000:05d}", _personalisation(i)
            if from_template:
                items.append({"recipient_phone_number": number, "template": TEMPLATE_NAME, "personalisation": values})
            else:
                items.append({"recipient_phone_number": number, "content": _text(values)})
        return {"messages": items}

    cpu: dict[str, float] = {"content": 0.0, "template": 0.0}

    def post(body: dict, kind: str = "") -> float:
        started, started_cpu = time.perf_counter(), time.process_time()
        response = client.post("/api/messages/bulk/", body, format="json")
        elapsed = time.perf_counter() - started
        if kind:
            cpu[kind] += time.process_time() - started_cpu
        if response.status_code != 201:
            raise BenchError(f"POST /api/messages/bulk/ answered {response.status_code}: {response.content[:300]!r}")
        return elapsed

    # Warm-up of each kind, not timed.
    post(payload(0, options.per_request, from_template=False))
    post(payload(0, options.per_request, from_template=True))
    warm = 2 * options.per_request
    times: dict[str, list[float]] = {"content": [], "template": []}
    sent = 0
    while sent < options.messages:
        count = min(options.per_request, options.messages - sent)
        # The same recipients and texts both ways; the order alternates per round.
        kinds = ("content", "template") if len(times["content"]) % 2 == 0 else ("template", "content")
        for kind in kinds:
            times[kind].append(post(payload(sent, count, from_template=kind == "template"), kind))
        sent += count
    stored = Message.objects.count() - warm
    if stored != 2 * options.messages:
        raise BenchError(f"{stored} messages stored, expected {2 * options.messages}")
    # Every message from the template has the text written out in the content ones.
    mismatched = (
        Message.objects.filter(template_id__isnull=False)
        .exclude(content__in=Message.objects.filter(template_id__isnull=True).values("content"))
        .count()
    )
    if mismatched:
        raise BenchError(f"{mismatched} messages from the template differ from the content ones")
    rate = {kind: options.messages / sum(seconds) for kind, seconds in times.items()}
    # Judged on the median of each round's pair (the same messages both ways, one request
    # right after the other): a burst of the shared machine's other work lands on single
    # requests, and would tilt a ratio of totals towards whichever kind it hit.
    paired = [content / template for content, template in zip(times["content"], times["template"], strict=True)]
    ratio = statistics.median(paired)
    passed = ratio >= TARGET_RATIO
    return {
        "summary": (
            f"bulk from a template {round(rate['template'])} messages/s vs finished content "
            f"{round(rate['content'])} messages/s ({options.per_request} per request, {options.messages} each): "
            f"ratio {ratio:.2f}, the median of {len(paired)} paired requests (target >= {TARGET_RATIO})"
        ),
        "ok": passed,
        "ratio": round(ratio, 3),
        "ratio_of_totals": round(rate["template"] / rate["content"], 3),
        "paired_ratios": [round(r, 3) for r in paired],
        "target_ratio": TARGET_RATIO,
        "messages_each": options.messages,
        "per_request": options.per_request,
        "template_messages_per_s": round(rate["template"], 1),
        "content_messages_per_s": round(rate["content"], 1),
        # This process's CPU (Django, DRF, rendering, the driver), without PostgreSQL's.
        "template_process_cpu_s": round(cpu["template"], 3),
        "content_process_cpu_s": round(cpu["content"], 3),
        "template_per_request": timing_summary(times["template"]),
        "content_per_request": timing_summary(times["content"]),
        "note": "in-process test-client requests, content and template alternating; one untimed warm-up of each",
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=20_000, help="messages of each kind")
    parser.add_argument("--per-request", type=int, default=1000, help="messages per request")
