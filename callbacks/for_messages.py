"""What messages_app asks the callbacks app (through settings.MESSAGE_CALLBACK_URL_CHECK):
may a message carry this callback_url? Only on the origin of a registered endpoint,
whose secret signs its callbacks; the address is checked again when one is sent."""

from __future__ import annotations

from django.core.exceptions import ValidationError

from callbacks.addresses import UnsafeCallbackURL, url_checked, url_origin
from callbacks.outbox import endpoint_cache


def callback_url_check(*, url: str) -> str:
    try:
        url_checked(url)
    except UnsafeCallbackURL as exc:
        raise ValidationError({"callback_url": [f"Refused: {exc}."]}) from None
    origin = url_origin(url)
    if not any(route.origin == origin for route in endpoint_cache.routes()):
        raise ValidationError(
            {"callback_url": [f"{origin} is not the origin of a registered callback endpoint; register one first."]}
        )
    return url
