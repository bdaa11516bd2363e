from __future__ import annotations

import django_filters
from django import forms

from callbacks.models import CallbackEndpoint, CallbackEvent, EventType


class WholeNumberField(forms.IntegerField):
    """An id: ASCII digits only (no "1.5", no "1e3")."""

    def to_python(self, value):
        if value in self.empty_values:
            return None
        text = str(value).strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 18):
            raise forms.ValidationError("Enter a whole number.", code="invalid")
        return int(text)


class WholeNumberFilter(django_filters.Filter):
    field_class = WholeNumberField


class CallbackEventFilterForm(forms.Form):
    def clean(self) -> dict:
        cleaned = super().clean()
        # django-filter reads `?state=` as "no filter"; the schema lists the values: refused.
        for name in ("state", "event_type", "endpoint", "message_id"):
            if name in self.data and self.data[name] == "":
                self.add_error(name, "Give a value, or leave the parameter out.")
        return cleaned


class CallbackEventFilter(django_filters.FilterSet):
    endpoint = django_filters.ModelChoiceFilter(queryset=CallbackEndpoint.objects.all())
    state = django_filters.ChoiceFilter(choices=CallbackEvent.State.choices)
    event_type = django_filters.ChoiceFilter(choices=EventType.choices)
    message_id = WholeNumberFilter(help_text="The message's id.")

    class Meta:
        model = CallbackEvent
        fields = ["endpoint", "state", "event_type", "message_id"]
        form = CallbackEventFilterForm
