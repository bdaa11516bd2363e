"""`python -m bench pacing`: run qcluster + the fake provider for some minutes and
compare the number of messages sent with batch_size x ticks."""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from bench.common import connect, free_port, manage, prepare_database, process, refuse_if_in_use, service_env


def pacing(options: argparse.Namespace) -> dict:
    port = free_port()
    env = service_env(WEBHOOK_URL=f"http://127.0.0.1:{port}/", DISPATCH_PROVIDER_BACKEND="webhook")
    prepare_database(env)
    with connect() as conn:
        refuse_if_in_use(conn)  # it empties the tables: not under another run's feet
    total = options.batch_size * (int(options.minutes * 60 / options.interval) + 5) + 50
    script = (
        "from django_q.models import OrmQ, Task;"
        "from messages_app.models import Message;"
        "from dispatcher.state import dispatcher_stop, dispatcher_configure;"
        "OrmQ.objects.all().delete(); Task.objects.all().delete(); Message.objects.all().delete();"
        "dispatcher_stop();"
        f"dispatcher_configure(batch_size={options.batch_size}, interval_seconds={options.interval});"
        "Message.objects.bulk_create([Message(recipient_phone_number='+905551112233', content='pacing %d' % i)"
        f" for i in range({total})])"
    )
    manage(env, "shell", "-c", script)
    logs = Path(options.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        stack.enter_context(process(["fakeprovider", "--port", str(port)], env, logs / "pacing-fakeprovider.log"))
        stack.enter_context(process(["qcluster"], env, logs / "pacing-qcluster.log"))
        time.sleep(3)
        manage(env, "dispatcher", "start")
        # Count from the first send, so the cluster's start-up is not measured.
        count_sql = (
            "from messages_app.models import Message as M;"
            "import json; from django.db.models import Min;"
            "print(json.dumps({'sent': M.objects.filter(status='sent').count(),"
            " 'first': M.objects.filter(status='sent').aggregate(t=Min('sent_at'))['t'].timestamp()"
            " if M.objects.filter(status='sent').exists() else None}))"
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            first = json.loads(manage(env, "shell", "-c", count_sql).strip().splitlines()[-1])["first"]
            if first:
                break
            time.sleep(1)
        else:
            raise SystemExit("no message was sent within 120 s; see " + str(logs))
        end_at = first + options.minutes * 60
        while time.time() < end_at:
            remaining = end_at - time.time()
            print(f"\r  measuring: {remaining:5.0f} s left", end="", file=sys.stderr, flush=True)
            time.sleep(min(5, max(remaining, 0)))
        print(file=sys.stderr)
        window_script = (
            "from messages_app.models import Message as M; from datetime import datetime, UTC;"
            f"a = datetime.fromtimestamp({first}, UTC); b = datetime.fromtimestamp({end_at}, UTC);"
            "print(M.objects.filter(status='sent', sent_at__gte=a, sent_at__lt=b).count())"
        )
        sent = int(manage(env, "shell", "-c", window_script).strip().splitlines()[-1])
        manage(env, "dispatcher", "stop")
    ticks = options.minutes * 60 / options.interval
    expected = options.batch_size * ticks
    return {
        "batch_size": options.batch_size,
        "interval_seconds": options.interval,
        "minutes": options.minutes,
        "expected": expected,
        "sent": sent,
        "difference": sent - expected,
        "within_one_batch": abs(sent - expected) <= options.batch_size,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--batch-size", type=int, default=3)
    parser.add_argument("--interval", type=int, default=7)
