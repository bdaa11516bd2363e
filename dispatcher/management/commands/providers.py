from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser

from dispatcher.engine.providers.status import provider_statuses
from messages_app.timestamps import timestamp_text


class Command(BaseCommand):
    help = (
        "Show the configured providers in routing order: circuit state, rate limit, the last hour's sends, "
        "and a pause after a 429."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="operation", required=True, metavar="{status}")
        sub.add_parser(
            "status",
            help="Each provider's circuit, rate, sent/failed and latency over the last hour, and its pause if any.",
        )

    def handle(self, *args, operation: str, **options) -> None:
        self.stdout.write(
            f"{'provider':<16} {'backend':<10} {'circuit':<10} {'rate/s':>7} "
            f"{'sent 1h':>8} {'failed 1h':>9} {'latency':>9}"
        )
        for status in provider_statuses():
            circuit = status.circuit
            if status.circuit != "closed":
                circuit += f" ({status.consecutive_failures} failures, outage {status.outage_seconds:.0f} s)"
            latency = f"{status.latency_ms_last_hour:.0f} ms" if status.latency_ms_last_hour is not None else "-"
            rate = f"{status.rate_per_second:g}" if status.rate_per_second else "-"
            self.stdout.write(
                f"{status.name:<16} {status.backend:<10} {circuit:<10} {rate:>7} "
                f"{status.sent_last_hour:>8} {status.failed_last_hour:>9} {latency:>9}"
            )
            if status.paused_until is not None:
                self.stdout.write(f"  paused until {timestamp_text(status.paused_until)}: {status.pause_reason}")
