"""Serializer fields that read numbers in ASCII digits only, and times the service takes.

Python's int() and Django's date parsing take any Unicode decimal digit, so
REST framework read "\u0665" (ARABIC-INDIC DIGIT FIVE) or "\uff15" (FULLWIDTH
DIGIT FIVE) as 5, and a date written in Arabic-Indic digits as that date: values
no client means, and that a person reading the request would not take for
numbers. The API documents ASCII digits; these fields refuse anything else.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from rest_framework import serializers

from restapi.storable import time_in_range


class AsciiIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, str) and not data.isascii():
            self.fail("invalid")
        return super().to_internal_value(data)


class AsciiDateTimeField(serializers.DateTimeField):
    """Every date-time the API reads: in ASCII digits, with an offset some place uses,
    and within the years the service takes (restapi.storable.time_in_range)."""

    def to_internal_value(self, value):
        if isinstance(value, str) and not value.isascii():
            self.fail("invalid", format="YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]")
        return super().to_internal_value(value)

    def enforce_timezone(self, value):
        # Checked as given, before REST framework converts it: the conversion would
        # hide an impossible offset, and overflow on the year 0 or 10000.
        if timezone.is_naive(value):
            value = super().enforce_timezone(value)  # in the default time zone
        try:
            time_in_range(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None
        return super().enforce_timezone(value)
