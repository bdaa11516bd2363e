"""Validation shared by the API, the admin, the commands and the services."""

from __future__ import annotations

import unicodedata
from datetime import datetime, time

import phonenumbers
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from messages_app.models import Message
from restapi.storable import time_in_range


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


def validate_category(value: str) -> str:
    """A category as the API takes it (transactional or marketing, exactly as written)."""
    if value not in Message.Category.values:
        raise ValidationError(f"must be one of {', '.join(Message.Category.values)}.", code="invalid_choice")
    return value


def validate_priority(value: str) -> str:
    """A priority as the API takes it (its ChoiceField over the same Message.Priority): one
    of the values exactly as written, lower case, no spaces around it; return it unchanged.
    The import checks its cells with this, so a file cannot store what the API refuses."""
    if value not in Message.Priority.values:
        raise ValidationError(f"must be one of {', '.join(Message.Priority.values)}.", code="invalid_choice")
    return value


# Control characters a message may hold: line breaks and tabs. Everything else of
# category Cc (C0 and C1 controls, DEL) is refused, e.g. the ESC that starts an
# ANSI escape sequence, which would repaint the terminal of whoever reads a log.
ALLOWED_CONTROL_CHARACTERS = frozenset("\n\t")

# What a person can see: a letter, digit, punctuation or symbol (Unicode categories
# L*, N*, P*, S*). Not separators and spaces, controls, formatting characters
# (zero-width spaces and joiners, the byte order mark, bidi marks), private-use or
# unassigned code points, nor marks that only modify the character before them
# (combining accents, variation selectors); and not the letters and symbols drawn
# blank: the Hangul fillers and the blank braille pattern.
_VISIBLE_CATEGORY_CLASSES = frozenset("LNPS")
_BLANK_GLYPHS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def is_visible_character(char: str) -> bool:
    return unicodedata.category(char)[0] in _VISIBLE_CATEGORY_CLASSES and char not in _BLANK_GLYPHS


def is_forbidden_control_character(char: str) -> bool:
    return unicodedata.category(char) == "Cc" and char not in ALLOWED_CONTROL_CHARACTERS


def validate_content(value: str) -> str:
    """Check that content is text a person can read and within the length limit
    (in characters, i.e. code points, never bytes); return it unchanged."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("Content must not be blank.", code="blank")
    if "\x00" in value:
        raise ValidationError("Content must not contain NUL characters.", code="null_characters_not_allowed")
    control = next((i for i, char in enumerate(value) if is_forbidden_control_character(char)), None)
    if control is not None:
        raise ValidationError(
            f"Content must not contain control characters (U+{ord(value[control]):04X} at position {control + 1}); "
            "only line breaks (\\n) and tabs are allowed.",
            code="control_characters",
        )
    if not any(is_visible_character(char) for char in value):
        raise ValidationError(
            "Content must have at least one visible character (it holds only invisible ones, such as "
            "zero-width spaces or a byte order mark).",
            code="invisible",
        )
    limit = settings.MESSAGE_MAX_LENGTH
    if len(value) > limit:
        raise ValidationError(f"Content is {len(value)} characters long; the limit is {limit}.", code="max_length")
    return value


def parse_aware_datetime(value: str) -> datetime:
    """Parse an ISO 8601 date-time, or a date (meaning its midnight), as the API reads
    `send_after`; a time without an offset is in the default time zone (TIME_ZONE).
    Return it in UTC if the service takes it (restapi.storable.time_in_range)."""
    # ASCII only: Django's parser (and int()) would read any Unicode digits.
    text = value.strip() if isinstance(value, str) and value.isascii() else ""
    try:
        parsed = parse_datetime(text)
        if parsed is None and (day := parse_date(text)) is not None:
            parsed = datetime.combine(day, time())
    except ValueError:  # well-formed but impossible, e.g. month 13
        parsed = None
    if parsed is None:
        raise ValidationError(
            f"{value!r} is not an ISO 8601 date or date-time, e.g. 2025-01-31 or 2025-01-31T09:00:00+03:00.",
            code="invalid",
        )
    return time_in_range(timezone.make_aware(parsed) if timezone.is_naive(parsed) else parsed)


def validate_expiry(*, expires_at: datetime | None, send_after: datetime | None = None) -> datetime | None:
    """An expiry must lie ahead, and after `send_after` if there is one: a message that
    could never be sent is refused, not queued to expire."""
    if expires_at is None:
        return None
    if expires_at <= timezone.now():
        raise ValidationError("expires_at must be in the future.", code="expired")
    if send_after is not None and expires_at <= send_after:
        raise ValidationError("expires_at must be after send_after.", code="expires_before_send_after")
    return expires_at
