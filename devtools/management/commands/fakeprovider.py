from __future__ import annotations

import logging
import signal
import sys

from django.core.management.base import BaseCommand, CommandError, CommandParser

from devtools.fakeprovider.server import Faults, make_fake_provider


class Command(BaseCommand):
    help = (
        "Run a local HTTP server that answers like the SMS provider (202 with a new messageId), "
        "logs each request, and injects faults on request. Change faults while it runs with "
        "`curl -X POST localhost:8081/_fake/faults -d '{\"error_rate\": 0.5}'`; "
        "see what it received at /_fake/requests."
    )
    requires_system_checks: list = []
    requires_migrations_checks = False

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8081)
        parser.add_argument("--latency-ms", type=float, default=0.0, help="Delay before every answer.")
        parser.add_argument("--error-rate", type=float, default=0.0, help="Share of requests (0..1) that fail.")
        parser.add_argument("--error-status", type=int, default=500, help="Status of the failing answers.")
        parser.add_argument("--status-code", type=int, default=202, help="Status of the successful answers.")
        parser.add_argument("--missing-message-id", action="store_true", help="Leave messageId out of answers.")
        parser.add_argument(
            "--retry-after", type=float, default=0.0, help="Send this Retry-After (seconds) on 429 and 503 answers."
        )
        parser.add_argument("--auth-key", default=None, help="Require this x-ins-auth-key (default: accept any).")

    def handle(self, *args, **options) -> None:
        faults = Faults()
        try:
            faults.update(
                {
                    "latency_ms": options["latency_ms"],
                    "error_rate": options["error_rate"],
                    "error_status": options["error_status"],
                    "status_code": options["status_code"],
                    "missing_message_id": options["missing_message_id"],
                    "retry_after": options["retry_after"],
                }
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        for name in ("error_status", "status_code"):
            if not 100 <= getattr(faults, name) <= 599:
                raise CommandError(f"--{name.replace('_', '-')} must be an HTTP status (100-599)")

        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s fakeprovider %(message)s"))
        log = logging.getLogger("devtools.fakeprovider.server")
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False

        try:
            server = make_fake_provider(
                host=options["host"], port=options["port"], faults=faults, auth_key=options["auth_key"]
            )
        except OSError as exc:
            raise CommandError(f"cannot listen on {options['host']}:{options['port']}: {exc.strerror}") from None
        # serve_forever() returns on shutdown(); make SIGTERM behave like Ctrl-C.
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
        self.stdout.write(f"Fake provider listening on http://{options['host']}:{options['port']}/ faults={faults}")
        self.stdout.flush()
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            self.stdout.write("Fake provider stopped.")
