from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading

from django.core.management.base import BaseCommand, CommandError, CommandParser

from devtools.fakeprovider.faults import Faults
from devtools.fakeprovider.requestlog import RequestLog
from devtools.fakeprovider.server import FakeProvider, make_fake_provider
from messages_app.management.options import whole_number

RECEIPT_SECRET_ENV = "FAKE_PROVIDER_RECEIPT_SECRET"  # noqa: S105 - the name of a variable, not a secret
# Beside the service (make run, one .env), the secret the service checks receipts with.
SERVICE_RECEIPT_SECRET_ENV = "RECEIPT_WEBHOOK_SECRET"  # noqa: S105 - the name of a variable, not a secret
INBOUND_SECRET_ENV = "FAKE_PROVIDER_INBOUND_SECRET"  # noqa: S105 - the name of a variable, not a secret
SERVICE_INBOUND_SECRET_ENV = "INBOUND_WEBHOOK_SECRET"  # noqa: S105 - the name of a variable, not a secret


class Command(BaseCommand):
    help = (
        "Run a local HTTP server that answers like the SMS provider (202 with a new messageId), "
        "logs each request, injects faults on request and can send signed delivery receipts. "
        "Change faults while it runs with `curl localhost:8081/_fake/faults "
        "-H 'Content-Type: application/json' -d '{\"error_rate\": 0.5}'`; "
        "see what it received at /_fake/requests. A development tool: never expose it."
    )
    requires_system_checks: list = []
    requires_migrations_checks = False

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=whole_number(minimum=1, maximum=65_535), default=8081)
        parser.add_argument("--latency-ms", type=float, default=0.0, help="Delay before every answer.")
        parser.add_argument("--error-rate", type=float, default=0.0, help="Share of requests (0..1) that fail.")
        parser.add_argument("--error-status", type=int, default=500, help="Status of the failing answers.")
        parser.add_argument("--status-code", type=int, default=202, help="Status of the successful answers.")
        parser.add_argument("--missing-message-id", action="store_true", help="Leave messageId out of answers.")
        parser.add_argument(
            "--retry-after", type=float, default=0.0, help="Send this Retry-After (seconds) on 429 and 503 answers."
        )
        parser.add_argument("--auth-key", default=None, help="Require this x-ins-auth-key (default: accept any).")
        parser.add_argument(
            "--receipts-url", default=None, help="POST a signed delivery receipt here for each accepted message."
        )
        parser.add_argument(
            "--receipt-delay-ms", type=float, default=500.0, help="From accepting a message to its receipt."
        )
        parser.add_argument(
            "--undelivered-rate", type=float, default=0.0, help='Share of receipts (0..1) that say "undelivered".'
        )
        parser.add_argument(
            "--receipt-secret",
            default=None,
            help=f"Standard Webhooks secret (whsec_<base64>) that signs receipts "
            f"(default: ${RECEIPT_SECRET_ENV}, else ${SERVICE_RECEIPT_SECRET_ENV}).",
        )
        parser.add_argument("--bad-signature", action="store_true", help="Sign receipts with a wrong key.")
        parser.add_argument(
            "--inbound-url",
            default="http://127.0.0.1:8000/api/inbound/",
            help="Where replies from a phone (POST /_fake/reply, the page's form) are posted.",
        )
        parser.add_argument(
            "--inbound-secret",
            default=None,
            help=f"Standard Webhooks secret (whsec_<base64>) that signs replies "
            f"(default: ${INBOUND_SECRET_ENV}, else ${SERVICE_INBOUND_SECRET_ENV}).",
        )
        parser.add_argument(
            "--receipt-batch-size",
            type=int,
            default=1,
            help="Send the receipts that fall due together in one callback, up to this many (1: one per callback).",
        )
        parser.add_argument(
            "--receipt-batch-wait-ms",
            type=float,
            default=250.0,
            help="A batch not yet full goes this long after its first receipt fell due.",
        )

    def handle(self, *args, **options) -> None:
        request_log = RequestLog(sys.stdout)
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
                    "receipts_url": options["receipts_url"],
                    "receipt_delay_ms": options["receipt_delay_ms"],
                    "undelivered_rate": options["undelivered_rate"],
                    "bad_signature": options["bad_signature"],
                    "receipt_batch_size": options["receipt_batch_size"],
                    "receipt_batch_wait_ms": options["receipt_batch_wait_ms"],
                }
            )
            provider = make_fake_provider(
                host=options["host"],
                port=options["port"],
                faults=faults,
                auth_key=options["auth_key"],
                receipt_secret=options["receipt_secret"]
                or os.environ.get(RECEIPT_SECRET_ENV)
                or os.environ.get(SERVICE_RECEIPT_SECRET_ENV)
                or None,
                request_log=request_log,
                inbound_url=options["inbound_url"],
                inbound_secret=options["inbound_secret"]
                or os.environ.get(INBOUND_SECRET_ENV)
                or os.environ.get(SERVICE_INBOUND_SECRET_ENV)
                or None,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None

        # Its other events (faults changed, receipts) go through the request log too, to stay in order.
        log = logging.getLogger("devtools.fakeprovider")
        log.addHandler(request_log)
        log.setLevel(logging.INFO)
        log.propagate = False
        try:
            asyncio.run(self._serve(provider))
        finally:
            log.removeHandler(request_log)

    async def _serve(self, provider: FakeProvider) -> None:
        try:
            await provider.start()
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise CommandError(f"cannot listen on {provider.host}:{provider.port}: {reason}") from None
        stop = asyncio.Event()
        # SIGTERM (docker, the tests) stops it like Ctrl-C. Signals reach only the main thread.
        if threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        receipts = "signed" if provider.receipts.signing else "no secret"
        self.stdout.write(
            f"Fake provider listening on {provider.url} faults={provider.state.faults} "
            f"auth_key={'required' if provider.state.auth_key else 'any'} receipts={receipts} "
            f"replies={'signed' if provider.replies.signing else 'no secret'}"
        )
        self.stdout.flush()
        try:
            await stop.wait()
        finally:
            await provider.stop()
            self.stdout.write("Fake provider stopped.")
