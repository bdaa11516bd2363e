from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from messages_app.selectors import message_ids_failed
from messages_app.services import messages_requeue_failed
from messages_app.validators import parse_aware_datetime

# A dry run names at most this many ids (and says how many more there are).
LISTED_IDS = 1000


class Command(BaseCommand):
    help = (
        "Put failed messages back in the queue, due now with a fresh budget of attempts: all of them, "
        "or only those created since a given time."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--since",
            metavar="ISO-DATETIME-or-DATE",
            help="Only messages created at or after this time, e.g. 2025-01-31 or 2025-01-31T09:00:00+03:00 "
            "(without an offset: in TIME_ZONE).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Count what would be requeued; change nothing.")

    def handle(self, *args, since: str | None, dry_run: bool, **options) -> None:
        # Parsed here rather than by argparse's type=, which call_command(since=...) skips.
        created_since = None
        if since is not None:
            try:
                created_since = parse_aware_datetime(since)
            except ValidationError as exc:
                raise CommandError(f"--since: {exc.messages[0]}") from None
        count = messages_requeue_failed(created_since=created_since, dry_run=dry_run)
        if dry_run:
            ids = message_ids_failed(created_since=created_since, limit=LISTED_IDS)
            listed = ", ".join(str(pk) for pk in ids)
            more = f" and {count - len(ids)} more" if count > len(ids) else ""
            self.stdout.write(
                f"Dry run: would requeue {count} failed message{'' if count == 1 else 's'}"
                f"{': ' + listed + more if ids else ''}. Nothing was changed."
            )
        else:
            self.stdout.write(f"Requeued {count} failed messages.")
