from __future__ import annotations

import django_filters
from django import forms
from django.core.exceptions import ValidationError

from messages_app.models import Message
from messages_app.validators import normalize_phone_number


class MessageFilterForm(forms.Form):
    def clean(self) -> dict:
        cleaned = super().clean()
        # django-filter reads `?status=` as "no filter", while the schema lists the
        # statuses a value must be one of: an empty one is refused, not ignored.
        if "status" in self.data and self.data["status"] == "":
            self.add_error("status", "Give one of the statuses, or leave the parameter out.")
        return cleaned


class MessageFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=Message.Status.choices)
    recipient_phone_number = django_filters.CharFilter(
        method="filter_recipient", help_text="Any format with country code; matched in E.164."
    )

    class Meta:
        model = Message
        fields = ["status", "recipient_phone_number"]
        form = MessageFilterForm

    def filter_recipient(self, queryset, name, value):
        try:
            normalized = normalize_phone_number(value)
        except ValidationError:
            # A number that cannot be valid matches nothing rather than erroring.
            return queryset.none()
        return queryset.filter(recipient_phone_number=normalized)
