"""Which `callback_url` a message may carry, as the callbacks app decides (only a URL on
a registered endpoint's origin). messages_app sits below that app (import-linter's
layers), so it asks through the function named by settings.MESSAGE_CALLBACK_URL_CHECK (a
dotted path, as MESSAGE_RECIPIENT_POLICY): `check(url=) -> url`, raising Django's
ValidationError. Unset: no message may carry one.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.module_loading import import_string


@cache
def _check(path: str) -> Callable[..., str] | None:
    return import_string(path) if path else None


def callback_url_checked(url: str) -> str:
    """`url` as a message may keep it, or ValidationError (keyed `callback_url`)."""
    if not url:
        return ""
    check = _check(getattr(settings, "MESSAGE_CALLBACK_URL_CHECK", ""))
    if check is None:
        raise ValidationError({"callback_url": ["Status callbacks are not available in this service."]})
    return check(url=url)
