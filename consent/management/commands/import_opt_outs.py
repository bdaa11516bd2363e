from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.models import ControlAction
from consent.csv_lists import opt_outs_import_csv
from consent.errors import ConsentImportError


class Command(BaseCommand):
    help = (
        "Opt out the numbers of a CSV file whose header names a phone_number column (others are ignored), "
        "recorded as a CSV import with its history and one audit entry per batch. Invalid numbers are listed "
        "with their line and skipped; a file that is not UTF-8 CSV with that column stores nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", metavar="FILE.csv")
        parser.add_argument("--batch-size", type=int, default=1000, help="Numbers per transaction (default 1000).")

    def handle(self, *args, file: str, batch_size: int, **options) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        rejected: list[str] = []
        try:
            with open(file, "rb") as stream:
                result = opt_outs_import_csv(
                    stream=stream,
                    actor=None,
                    via=ControlAction.Via.COMMAND,
                    batch_size=batch_size,
                    on_rejected=lambda line, reason: rejected.append(f"line {line}: {reason}"),
                )
        except ConsentImportError as exc:
            raise CommandError(f"{file}: {exc}") from None
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc.strerror or exc}") from None
        for line in rejected:
            self.stderr.write(line)
        self.stdout.write(
            f"Opted out {result.opted_out} number(s); {result.unchanged} already opted out; "
            f"{result.rejected} row(s) rejected."
        )
        if result.rejected:
            raise CommandError(f"{result.rejected} row(s) rejected (listed above); the others are opted out.")
