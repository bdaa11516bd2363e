from __future__ import annotations

import django_filters
from django import forms
from django_filters.fields import IsoDateTimeField

from consent.models import Consent, InboundMessage
from restapi.storable import time_in_range


class RefuseEmptyFilterForm(forms.Form):
    """django-filter reads `?status=` as "no filter", while the schema gives each
    parameter a type or a set of values an empty one is not: refused, not ignored."""

    def clean(self) -> dict:
        cleaned = super().clean()
        for name in self.fields:
            if name in self.data and self.data[name] == "":
                self.add_error(name, "Give a value, or leave the parameter out.")
        return cleaned


class StorableIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 time within the years the service takes (restapi.storable): one the
    database cannot compare with is a 400, not a 500."""

    def clean(self, value):
        value = super().clean(value)
        return value if value is None else time_in_range(value)


class StorableIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = StorableIsoDateTimeField


class ConsentFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=Consent.Status.choices)
    method = django_filters.ChoiceFilter(choices=Consent.Method.choices)
    changed_after = StorableIsoDateTimeFilter(field_name="changed_at", lookup_expr="gte")
    changed_before = StorableIsoDateTimeFilter(field_name="changed_at", lookup_expr="lt")

    class Meta:
        model = Consent
        fields = ["status", "method", "changed_after", "changed_before"]
        form = RefuseEmptyFilterForm


KEYWORDS = [choice for choice in InboundMessage.Keyword.choices if choice[0]]


class InboundMessageFilter(django_filters.FilterSet):
    keyword = django_filters.ChoiceFilter(choices=KEYWORDS, help_text="opt_out, opt_in or help.")
    from_number = django_filters.CharFilter()
    provider = django_filters.CharFilter()

    class Meta:
        model = InboundMessage
        fields = ["keyword", "from_number", "provider"]
        form = RefuseEmptyFilterForm
