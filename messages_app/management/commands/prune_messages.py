from __future__ import annotations

from contextlib import ExitStack
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from messages_app.errors import MessageStateError
from messages_app.management.options import whole_number
from messages_app.management.progress import progress_bar
from messages_app.models import Message
from messages_app.services import messages_prune

# A hundred years: further back than any message, and within what a date can hold.
MAX_DAYS = 36_500
MAX_BATCH_SIZE = 100_000


class Command(BaseCommand):
    help = (
        "Delete messages created more than DAYS days ago that are in a final status (sent by default), with their "
        "delivery attempts and receipts, in batches of ids, and the delivery receipts received before then "
        "that never matched a message. Unsent and processing messages are never deleted: they are still "
        "being delivered."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=whole_number(minimum=1, maximum=MAX_DAYS),
            required=True,
            metavar="DAYS",
            help=f"Delete messages created more than this many days ago (1 to {MAX_DAYS:,}).",
        )
        parser.add_argument(
            "--status",
            action="append",
            dest="statuses",
            choices=Message.Status.values,  # a live one is refused with the reason, not by argparse
            metavar="STATUS",
            help="A final status: sent (the default), failed, cancelled, expired or suppressed; repeat it for more.",
        )
        parser.add_argument(
            "--batch-size",
            type=whole_number(minimum=1, maximum=MAX_BATCH_SIZE),
            default=5000,
            help=f"Messages deleted per transaction (default 5000, at most {MAX_BATCH_SIZE:,}).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")

    def handle(
        self, *args, older_than: int, statuses: list[str] | None, batch_size: int, dry_run: bool, **options
    ) -> None:
        created_before = timezone.now() - timedelta(days=older_than)
        with ExitStack() as stack:
            bars: list = []

            def start_bar(total: int) -> None:
                # Drawn once the count is known: a bar drawn before it and redrawn with it
                # showed twice (three times with the last), and an error came with a bar.
                bars.append(stack.enter_context(progress_bar(self.stderr, desc="prune", unit="message", total=total)))

            try:
                deleted = messages_prune(
                    created_before=created_before,
                    statuses=statuses or [Message.Status.SENT],
                    batch_size=batch_size,
                    dry_run=dry_run,
                    on_checked=None if dry_run else start_bar,  # a dry run only counts: no bar
                    on_progress=lambda count: bars[0].update(count),
                )
            except MessageStateError as exc:
                raise CommandError(str(exc)) from None
        if dry_run:
            self.stdout.write(f"Dry run: would delete {deleted} messages. Nothing was deleted.")
        else:
            self.stdout.write(f"Deleted {deleted} messages.")
