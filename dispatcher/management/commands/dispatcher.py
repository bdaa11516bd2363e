from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from dispatcher.errors import DispatcherConfigError, DispatcherStoppedError
from dispatcher.selectors import dispatcher_status
from dispatcher.services import dispatch_tick, dispatcher_configure, dispatcher_start, dispatcher_stop


class Command(BaseCommand):
    help = "Operate the dispatcher cluster-wide: status, start, stop, configure, or run one tick now."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="operation", required=True, metavar="{status,start,stop,configure,tick}")
        sub.add_parser("status", help="Show whether it runs, its pace and the message counts.")
        sub.add_parser("start", help="Start sending (the first tick is due at once).")
        sub.add_parser("stop", help="Stop claiming messages.")
        configure = sub.add_parser("configure", help="Change batch size and/or interval.")
        configure.add_argument("--batch-size", type=int)
        configure.add_argument("--interval-seconds", type=int)
        tick = sub.add_parser("tick", help="Claim and send one batch now, and print what was sent.")
        tick.add_argument("--force", action="store_true", help="Send one batch even if the dispatcher is stopped.")

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
        self._print_status()

    def _print_status(self) -> None:
        status = dispatcher_status()
        self.stdout.write(f"running:          {'yes' if status.running else 'no'}")
        self.stdout.write(f"batch size:       {status.batch_size}")
        self.stdout.write(f"interval:         {status.interval_seconds} s")
        self.stdout.write(f"last tick:        {status.last_tick_at.isoformat() if status.last_tick_at else '-'}")
        self.stdout.write(f"next tick:        {status.next_tick_at.isoformat() if status.next_tick_at else '-'}")
        counts = ", ".join(f"{name} {count}" for name, count in status.counts.items())
        self.stdout.write(f"messages:         {counts}")

    def _tick(self, *, force: bool) -> None:
        try:
            result = dispatch_tick(due_only=False, force=force)
        except DispatcherStoppedError as exc:
            raise CommandError(str(exc)) from None
        if not result.outcomes:
            self.stdout.write("No unsent messages.")
            return
        for outcome in result.outcomes:
            if outcome.sent:
                self.stdout.write(
                    f"sent   message {outcome.message_id} ({outcome.message_uuid}) "
                    f"messageId={outcome.provider_message_id}"
                    + ("" if outcome.cached else " (delivery cache write failed)")
                )
            else:
                self.stdout.write(f"failed message {outcome.message_id} ({outcome.message_uuid}): {outcome.error}")
        self.stdout.write(f"{len(result.sent)} sent, {len(result.failed)} failed.")
