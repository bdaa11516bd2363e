"""Which recipients a message may not be queued for, and when a marketing message may
go, as the app that knows decides (the consent app: numbers that opted out, quiet hours).

messages_app sits below that app (import-linter's layers), so it asks through the
functions named by settings.MESSAGE_RECIPIENT_POLICY and MESSAGE_QUIET_HOURS, dotted
paths as provider backends are chosen, imported once:
`policy(phone_numbers=[...]) -> {number: reason}` for the refused ones, for a whole
batch in one call, and `quiet_hours(phone_number=, at=) -> (opening, reason) | None`.
Unset: nobody is refused, nothing is held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from functools import cache

from django.conf import settings
from django.utils.module_loading import import_string

Policy = Callable[..., dict[str, str]]


@cache
def _policy(path: str) -> Policy | None:
    return import_string(path) if path else None


def quiet_hours_opening(*, phone_number: str, at: datetime) -> tuple[datetime, str] | None:
    """For a marketing message to `phone_number` due at `at`: None if it may go then, else
    when it may and why not before (settings.MESSAGE_QUIET_HOURS; unset: never held)."""
    hook = _policy(getattr(settings, "MESSAGE_QUIET_HOURS", ""))
    return hook(phone_number=phone_number, at=at) if hook is not None else None


def recipients_refused(*, phone_numbers: Iterable[str]) -> dict[str, str]:
    """The numbers among `phone_numbers` (E.164) no message may be queued for, each with why."""
    policy = _policy(getattr(settings, "MESSAGE_RECIPIENT_POLICY", ""))
    numbers = sorted(set(phone_numbers))
    return policy(phone_numbers=numbers) if policy is not None and numbers else {}
