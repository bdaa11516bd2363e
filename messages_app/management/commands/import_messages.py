from __future__ import annotations

import shutil
import sys
import tempfile
from contextlib import ExitStack
from typing import BinaryIO

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from messages_app.csv_import import MessageImportRejection, MessageImportTemplate, messages_import_csv
from messages_app.errors import MessageImportError
from messages_app.management.options import whole_number
from messages_app.management.progress import progress_bar

MAX_BATCH_SIZE = 100_000
# The exit status, for scripts: every row imported (or would be, with --dry-run), 0;
# some rows rejected and the others imported, PARTIAL; nothing imported because every
# row was rejected, or the file could not be used at all, 1 (CommandError's); a wrong
# option, 2 (as for every command).
PARTIAL_IMPORT_EXIT_STATUS = 3


class Command(BaseCommand):
    help = (
        "Queue messages from a CSV file whose header names the columns recipient_phone_number and content "
        "(and optionally send_after and expires_at, ISO 8601, and priority; other columns are ignored). Each "
        "row is checked as the API checks a message: invalid rows are reported with their line number and "
        "skipped, valid ones stored together, in one transaction. The file is read to its end first: if it is "
        "unreadable, not UTF-8, not CSV or lacks a required column, nothing is stored and the command fails; "
        "if the database stops the import, nothing is stored either, so it can be run again. Exit status: 0 "
        f"when every row was imported, {PARTIAL_IMPORT_EXIT_STATUS} when some were rejected and the others "
        "imported, 1 when none was imported (every row rejected, the file unusable, a database error). With "
        "--template, each row's content is the template filled from the row: no content column, a column per "
        "placeholder (its header the placeholder's name; an empty cell is a missing value, so write no for a "
        "((name??text)) to leave out) and optionally a language column."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", metavar="FILE.csv", help="The CSV file (UTF-8), or - to read standard input.")
        parser.add_argument(
            "--batch-size",
            type=whole_number(minimum=1, maximum=MAX_BATCH_SIZE),
            default=1000,
            help=f"Rows inserted per statement (default 1000, at most {MAX_BATCH_SIZE:,}).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Check and report every row, and the SMS segments they would take, but store nothing.",
        )
        parser.add_argument("--template", help="Make every message from this template (its name or id).")
        parser.add_argument(
            "--template-version",
            type=whole_number(minimum=1, maximum=2**31 - 1),
            help="With --template: this version (default: its current one).",
        )
        parser.add_argument(
            "--language", help="With --template: for rows without a language column (default: its default language)."
        )

    def handle(
        self,
        *args,
        file: str,
        batch_size: int,
        dry_run: bool,
        template: str | None = None,
        template_version: int | None = None,
        language: str | None = None,
        **options,
    ) -> None:
        name = "standard input" if file == "-" else file
        if template is None and (template_version is not None or language is not None):
            raise CommandError("--template-version and --language go with --template.")
        from_template = (
            MessageImportTemplate(template=template, version=template_version, language=language)
            if template is not None
            else None
        )
        rejections: list[MessageImportRejection] = []
        with ExitStack() as stack:
            stream = stack.enter_context(self._open(file, name))
            bars: list = []

            def start_bar(total: int) -> None:
                # Drawn only once the whole file has been read and found to be CSV with
                # the right header: an error about the file comes without a bar.
                bars.append(stack.enter_context(progress_bar(self.stderr, desc="import", unit="row", total=total)))

            try:
                result = messages_import_csv(
                    stream=stream,
                    batch_size=batch_size,
                    dry_run=dry_run,
                    on_checked=start_bar,
                    # Listed after the bar is done, so the two never interleave.
                    on_rejected=rejections.append,
                    on_progress=lambda rows: bars[0].update(rows),
                    template=from_template,
                )
            except MessageImportError as exc:
                raise CommandError(f"{name}: {exc}") from None
            except OSError as exc:
                raise CommandError(f"cannot read {name}: {exc.strerror or exc}") from None
            except DatabaseError as exc:
                # The import's one transaction was rolled back: a re-run stores no row twice.
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CommandError(
                    f"{name}: stopped by a database error; nothing was stored, so it can be run again: {reason}"
                ) from None
        for rejection in rejections:
            self.stderr.write(f"line {rejection.line}: {rejection.reason}")
        imported = f"{result.imported} message{'' if result.imported == 1 else 's'}"
        rejected = f"{result.rejected} row{'' if result.rejected == 1 else 's'} rejected"
        if dry_run:
            self.stdout.write(
                f"Dry run: would import {imported} ({result.segments} SMS segments); {rejected}. Nothing was stored."
            )
        else:
            self.stdout.write(f"Imported {imported}; {rejected}.")
        if result.rejected and not result.imported:
            stored = "nothing would be stored" if dry_run else "nothing was stored"
            raise CommandError(f"{rejected} (listed above), every row: {stored}.")
        if result.rejected:
            # The valid rows are stored; the exit status tells a script that some were not.
            raise CommandError(
                f"{rejected} (listed above); fix them and import those rows again.",
                returncode=PARTIAL_IMPORT_EXIT_STATUS,
            )

    @staticmethod
    def _open(file: str, name: str) -> BinaryIO:
        """The file as a seekable binary stream: the import reads it twice."""
        try:
            if file == "-":
                return _spooled(sys.stdin.buffer)
            source = open(file, "rb")  # noqa: SIM115 - the caller closes it
            if source.seekable():
                return source
            with source:
                return _spooled(source)
        except OSError as exc:
            raise CommandError(f"cannot read {name}: {exc.strerror or exc}") from None


def _spooled(source: BinaryIO) -> BinaryIO:
    """A copy of `source` in a temporary file on disk (not in memory): standard
    input, or a pipe given by name, can be read only once."""
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - the caller closes it
    try:
        shutil.copyfileobj(source, spool)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool
