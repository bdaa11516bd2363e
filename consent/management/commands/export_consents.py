from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError, CommandParser

from consent.csv_lists import consents_csv_lines
from consent.models import Consent


class Command(BaseCommand):
    help = (
        "Write the opted-out numbers (or, with --all, every consent record) as CSV: phone_number, status, "
        "changed_at, method, changed_by, note; the file import_opt_outs reads."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--output", "-o", default="-", help="The file to write (default: standard output).")
        parser.add_argument("--all", dest="every", action="store_true", help="Every record, opted in too.")

    def handle(self, *args, output: str, every: bool, **options) -> None:
        status = None if every else Consent.Status.OPTED_OUT
        try:
            target = sys.stdout if output == "-" else open(output, "w", encoding="utf-8", newline="")  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f"cannot write {output}: {exc.strerror or exc}") from None
        try:
            for line in consents_csv_lines(status=status):
                target.write(line)
        finally:
            if target is not sys.stdout:
                target.close()
