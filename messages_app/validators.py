"""Validation shared by the API, the admin, the commands and the services."""

from __future__ import annotations

import phonenumbers
from django.conf import settings
from django.core.exceptions import ValidationError


def normalize_phone_number(value: str) -> str:
    """Return `value` in E.164, or raise ValidationError with a reason a person can act on."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("A phone number is required.", code="required")
    raw = value.strip()
    # phonenumbers tolerates letters (vanity numbers) and very long input; we don't.
    if len(raw) > 32 or any(ch.isalpha() for ch in raw):
        raise ValidationError("Enter a phone number in international format, e.g. +905551112233.", code="invalid")
    try:
        parsed = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        raise ValidationError(
            "Enter a phone number in international format with its country code, e.g. +905551112233.",
            code="invalid",
        ) from None
    if not phonenumbers.is_valid_number(parsed):
        raise ValidationError("This phone number is not valid for its country.", code="invalid")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def validate_content(value: str) -> str:
    """Check content length in characters (code points), never bytes; return it unchanged."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("Content must not be blank.", code="blank")
    if "\x00" in value:
        raise ValidationError("Content must not contain NUL characters.", code="null_characters_not_allowed")
    limit = settings.MESSAGE_MAX_LENGTH
    if len(value) > limit:
        raise ValidationError(f"Content is {len(value)} characters long; the limit is {limit}.", code="max_length")
    return value
