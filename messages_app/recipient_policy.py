"""Which recipients a message may not be queued for, as the app that knows decides
(the consent app: numbers that opted out).

messages_app sits below that app (import-linter's layers), so it asks through the
function named by settings.MESSAGE_RECIPIENT_POLICY, a dotted path as provider
backends are chosen, imported once: `policy(phone_numbers=[...]) -> {number: reason}`
for the refused ones, for a whole batch in one call. Unset: nobody is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache

from django.conf import settings
from django.utils.module_loading import import_string

Policy = Callable[..., dict[str, str]]


@cache
def _policy(path: str) -> Policy | None:
    return import_string(path) if path else None


def recipients_refused(*, phone_numbers: Iterable[str]) -> dict[str, str]:
    """The numbers among `phone_numbers` (E.164) no message may be queued for, each with why."""
    policy = _policy(getattr(settings, "MESSAGE_RECIPIENT_POLICY", ""))
    numbers = sorted(set(phone_numbers))
    return policy(phone_numbers=numbers) if policy is not None and numbers else {}
