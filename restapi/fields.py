"""Serializer fields that read numbers in ASCII digits only.

Python's int() and Django's date parsing take any Unicode decimal digit, so
REST framework read "\u0665" (ARABIC-INDIC DIGIT FIVE) or "\uff15" (FULLWIDTH
DIGIT FIVE) as 5, and a date written in Arabic-Indic digits as that date: values
no client means, and that a person reading the request would not take for
numbers. The API documents ASCII digits; these fields refuse anything else.
"""

from __future__ import annotations

from rest_framework import serializers


class AsciiIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, str) and not data.isascii():
            self.fail("invalid")
        return super().to_internal_value(data)


class AsciiDateTimeField(serializers.DateTimeField):
    def to_internal_value(self, value):
        if isinstance(value, str) and not value.isascii():
            self.fail("invalid", format="YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]")
        return super().to_internal_value(value)
