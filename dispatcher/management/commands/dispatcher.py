from __future__ import annotations

import signal
import time
from collections import Counter

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from dispatcher.conf import BATCH_SIZE
from dispatcher.engine.pacing import qcluster_running_on_this_host
from dispatcher.engine.pipeline import drain, run_tick_here
from dispatcher.engine.recording import (
    DeliveryCacheUnavailable,
    DeliveryOutcome,
    delivery_cache_catch_up,
    delivery_cache_rebuild,
    messages_sent_in,
)
from dispatcher.errors import DispatcherConfigError, DispatcherStoppedError
from dispatcher.state import (
    dispatcher_configure,
    dispatcher_start,
    dispatcher_state_read,
    dispatcher_status,
    dispatcher_stop,
)
from messages_app.management.options import number, whole_number
from messages_app.management.progress import progress_bar
from messages_app.models import Message
from messages_app.validators import parse_aware_datetime

MAX_RECACHE_BATCH_SIZE = 100_000
MAX_DRAIN_SECONDS = 7 * 24 * 3600


class Command(BaseCommand):
    help = (
        "Operate the dispatcher cluster-wide: status, start, stop, configure; run one tick now; "
        "drain the queue at full speed; or write pending delivery cache records."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(
            dest="operation", required=True, metavar="{status,start,stop,configure,tick,drain,recache}"
        )
        sub.add_parser("status", help="Show whether it runs, its pace and the message counts.")
        sub.add_parser("start", help="Start sending (the first tick is due at once).")
        sub.add_parser("stop", help="Stop claiming messages.")
        configure = sub.add_parser("configure", help="Change batch size and/or interval.")
        configure.add_argument("--batch-size", type=int)
        configure.add_argument("--interval-seconds", type=int)
        tick = sub.add_parser("tick", help="Claim and send one batch now, and print what was sent.")
        tick.add_argument("--force", action="store_true", help="Send one batch even if the dispatcher is stopped.")
        drain = sub.add_parser(
            "drain",
            help="Claim and send batches back to back, ignoring the pace, until nothing is claimable "
            "(while the dispatcher runs). SIGTERM finishes the send in flight and releases the rest.",
        )
        drain.add_argument(
            "--batch-size",
            type=whole_number(minimum=int(BATCH_SIZE.minimum), maximum=int(BATCH_SIZE.maximum)),
            default=100,
        )
        drain.add_argument(
            "--max-seconds",
            type=number(minimum=0, maximum=MAX_DRAIN_SECONDS),
            default=None,
            help="Stop after this long (a week at most).",
        )
        recache = sub.add_parser(
            "recache",
            help="Write delivery cache records that could not be written (Redis was down); with --since and/or "
            "--until, rebuild every record of the messages sent in that time range from the database (Redis "
            "lost its data).",
        )
        recache.add_argument(
            "--since", help="Rebuild the records of messages sent at or after this time (ISO 8601 date or date-time)."
        )
        recache.add_argument("--until", help="Rebuild the records of messages sent before this time (ISO 8601).")
        recache.add_argument(
            "--batch-size",
            type=whole_number(minimum=1, maximum=MAX_RECACHE_BATCH_SIZE),
            default=1000,
            help="Records written per round trip.",
        )
        sub.add_parser(
            "cluster-check",
            help="Exit non-zero unless a qcluster on this host reports itself running (a container health check).",
        )

    def handle(self, *args, operation: str, **options) -> None:
        if operation == "start":
            dispatcher_start()
        elif operation == "stop":
            dispatcher_stop()
        elif operation == "configure":
            if options["batch_size"] is None and options["interval_seconds"] is None:
                raise CommandError("give --batch-size, --interval-seconds or both")
            try:
                dispatcher_configure(batch_size=options["batch_size"], interval_seconds=options["interval_seconds"])
            except DispatcherConfigError as exc:
                raise CommandError(exc.message) from None
        elif operation == "tick":
            self._tick(force=options["force"])
            return
        elif operation == "drain":
            self._drain(batch_size=options["batch_size"], max_seconds=options["max_seconds"])
            return
        elif operation == "recache":
            if options["since"] is None and options["until"] is None:
                self._recache()
            else:
                self._rebuild(since=options["since"], until=options["until"], batch_size=options["batch_size"])
            return
        elif operation == "cluster-check":
            if not qcluster_running_on_this_host():
                raise CommandError("no running qcluster on this host")
            self.stdout.write("qcluster running")
            return
        self._print_status()

    def _print_status(self) -> None:
        status = dispatcher_status()
        self.stdout.write(f"running:          {'yes' if status.running else 'no'}")
        self.stdout.write(f"batch size:       {status.batch_size}")
        self.stdout.write(f"interval:         {status.interval_seconds} s")
        self.stdout.write(f"last tick:        {status.last_tick_at.isoformat() if status.last_tick_at else '-'}")
        self.stdout.write(f"next tick:        {status.next_tick_at.isoformat() if status.next_tick_at else '-'}")
        pace = "held" if status.pace_held else f"behind by {status.behind_seconds:.0f} s"
        self.stdout.write(f"pace:             {pace}")
        counts = ", ".join(f"{name} {count}" for name, count in status.counts.items())
        self.stdout.write(f"messages:         {counts}")

    def _tick(self, *, force: bool) -> None:
        try:
            outcomes = run_tick_here(force=force)
        except DispatcherStoppedError as exc:
            raise CommandError(str(exc)) from None
        if not outcomes:
            self.stdout.write("No unsent messages.")
            return
        for outcome in outcomes:
            self.stdout.write(self._describe(outcome))
        self.stdout.write(f"{self._tally(Counter(o.outcome for o in outcomes))}.")

    @staticmethod
    def _describe(outcome: DeliveryOutcome) -> str:
        who = f"message {outcome.message_id} ({outcome.message_uuid})"
        if outcome.sent:
            cached = "" if outcome.cached else " (delivery cache write failed; will be written later)"
            return f"sent   {who} messageId={outcome.provider_message_id}{cached}"
        if outcome.outcome == "retry":
            return f"retry  {who}: {outcome.error}"
        return f"failed {who}: {outcome.error}"

    def _drain(self, *, batch_size: int, max_seconds: float | None) -> None:
        if not dispatcher_state_read().running:
            raise CommandError("The dispatcher is stopped; start it first.")
        stopping = False

        def on_sigterm(signum, frame) -> None:
            nonlocal stopping
            stopping = True

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        started = time.monotonic()

        def progress(totals: Counter[str]) -> None:
            elapsed = time.monotonic() - started
            rate = sum(totals.values()) / elapsed if elapsed else 0
            self.stdout.write(f"drain: {self._tally(totals)} ({rate:.0f}/s)")
            self.stdout.flush()

        try:
            totals = drain(
                batch_size=batch_size,
                should_stop=lambda: stopping,
                deadline=None if max_seconds is None else started + max_seconds,
                on_batch=progress,
            )
        finally:
            signal.signal(signal.SIGTERM, previous)
        reason = "stopped by SIGTERM" if stopping else "done"
        self.stdout.write(f"drain {reason}: {self._tally(totals)} in {time.monotonic() - started:.1f} s.")

    @staticmethod
    def _tally(totals: Counter[str]) -> str:
        return f"{totals['sent']} sent, {totals['retry']} to retry, {totals['failed']} failed"

    def _rebuild(self, *, since: str | None, until: str | None, batch_size: int) -> None:
        try:
            start, end = (None if text is None else parse_aware_datetime(text) for text in (since, until))
        except ValidationError as exc:
            raise CommandError(f"--since/--until: {exc.messages[0]}") from None
        if start is not None and end is not None and start >= end:
            raise CommandError("--since must be before --until")
        total = messages_sent_in(since=start, until=end).count()
        with progress_bar(self.stderr, desc="recache", unit="record", total=total) as bar:
            try:
                written = delivery_cache_rebuild(since=start, until=end, batch_size=batch_size, on_progress=bar.update)
            except DeliveryCacheUnavailable as exc:
                raise CommandError(f"{exc}; is Redis up? Run the same command again once it is.") from None
        span = " and ".join(
            [*([f"since {start.isoformat()}"] if start else []), *([f"before {end.isoformat()}"] if end else [])]
        )
        self.stdout.write(f"Rebuilt {written} delivery cache record(s) of messages sent {span}.")

    def _recache(self) -> None:
        total = 0
        while written := delivery_cache_catch_up():
            total += written
        self.stdout.write(f"Wrote {total} pending delivery cache record(s).")
        still_pending = Message.objects.filter(delivery_cache_pending=True).count()
        if still_pending:
            raise CommandError(f"{still_pending} record(s) still pending: the delivery cache is unreachable.")
