"""`manage.py callbacks add|list|rotate|replay|resend`: status callback endpoints from a shell."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_datetime

from callbacks import services
from callbacks.models import CallbackEndpoint, CallbackEvent


def _errors(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
    return " ".join(exc.messages)


class Command(BaseCommand):
    help = "Register, list, rotate the secret of, and replay status callback endpoints."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True)
        add = sub.add_parser("add", help="Register an endpoint; prints its signing secret (shown this once).")
        add.add_argument("url")
        add.add_argument("--name", default="", help="Default: the URL's host.")
        add.add_argument(
            "--event", action="append", default=[], dest="events", help="An event type it gets (repeat); default: all."
        )
        add.add_argument("--owner", help="A username: the endpoint gets only events about that user's messages.")
        add.add_argument("--secret-only", action="store_true", help="Print only the secret (for scripts).")
        sub.add_parser("list", help="Endpoints with their health.")
        rotate = sub.add_parser("rotate", help="A new signing secret; the old one signs too during the overlap.")
        rotate.add_argument("endpoint", type=int)
        rotate.add_argument("--overlap-seconds", type=int, default=services.DEFAULT_OVERLAP_SECONDS)
        replay = sub.add_parser("replay", help="Deliver again every event of an endpoint since a time.")
        replay.add_argument("endpoint", type=int)
        replay.add_argument("--since", required=True, help="ISO 8601, e.g. 2025-01-31T09:00:00Z")
        resend = sub.add_parser("resend", help="Deliver one event again (by its evt_... id).")
        resend.add_argument("event_id")

    def handle(self, *args, subcommand: str, **options) -> None:
        try:
            getattr(self, f"_{subcommand}")(**options)
        except ValidationError as exc:
            raise CommandError(_errors(exc)) from None
        except CallbackEndpoint.DoesNotExist:
            raise CommandError("No such endpoint (see: manage.py callbacks list).") from None
        except CallbackEvent.DoesNotExist:
            raise CommandError("No such event.") from None

    def _add(self, *, url: str, name: str, events: list[str], owner: str | None, secret_only: bool, **_) -> None:
        owner_user = None
        if owner:
            owner_user = get_user_model().objects.filter(username=owner).first()
            if owner_user is None:
                raise CommandError(f"No user named {owner!r}.")
        registered = services.endpoint_create(
            name=name or (urlsplit(url).hostname or url)[:100], url=url, event_types=events, owner=owner_user
        )
        if secret_only:
            self.stdout.write(registered.secret)
            return
        endpoint = registered.endpoint
        self.stdout.write(f"registered endpoint {endpoint.pk} ({endpoint.name}) {endpoint.url}")
        self.stdout.write(f"events: {', '.join(endpoint.event_types) or 'all'}")
        self.stdout.write(f"signing secret (shown this once): {registered.secret}")

    def _list(self, **_) -> None:
        endpoints = list(CallbackEndpoint.objects.order_by("id"))
        if not endpoints:
            self.stdout.write("no callback endpoints")
            return
        for e in endpoints:
            health = (
                "disabled: " + e.disabled_reason[:80]
                if not e.enabled
                else (f"failing ({e.failures_in_row} in a row)" if e.failures_in_row else "healthy")
            )
            pending = e.events.filter(state=CallbackEvent.State.PENDING).count()
            self.stdout.write(
                f"{e.pk}\t{e.name}\t{e.url}\t{health}\tlast success {e.last_success_at or '-'}\t"
                f"latency {e.last_latency_ms if e.last_latency_ms is not None else '-'} ms\tpending {pending}"
            )

    def _rotate(self, *, endpoint: int, overlap_seconds: int, **_) -> None:
        rotated = services.endpoint_rotate_secret(endpoint_id=endpoint, overlap_seconds=overlap_seconds)
        self.stdout.write(f"new signing secret (shown this once): {rotated.secret}")
        self.stdout.write(f"the previous one signs too for {overlap_seconds} s")

    def _replay(self, *, endpoint: int, since: str, **_) -> None:
        moment = parse_datetime(since)
        if moment is None or moment.tzinfo is None:
            raise CommandError(
                f"--since must be an ISO 8601 time with its zone, e.g. 2025-01-31T09:00:00Z; got {since!r}"
            )
        count = services.endpoint_replay(endpoint_id=endpoint, since=moment)
        self.stdout.write(f"{count} event(s) of endpoint {endpoint} will be delivered again")

    def _resend(self, *, event_id: str, **_) -> None:
        event = CallbackEvent.objects.get(event_id=event_id)
        services.event_resend(event_id=event.pk)
        self.stdout.write(f"event {event_id} will be delivered again")
