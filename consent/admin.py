from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from audit.models import ControlAction
from consent.models import Consent, ConsentChange, InboundMessage
from consent.services import consent_set
from messages_app.validators import normalize_phone_number

VIA = ControlAction.Via.ADMIN


class ConsentAdminForm(forms.ModelForm):
    # As typed, before normalisation (the stored E.164 is at most 16 characters).
    phone_number = forms.CharField(max_length=64, help_text="International format with country code.")

    class Meta:
        model = Consent
        fields = ["phone_number", "status", "note"]

    def clean_phone_number(self) -> str:
        return normalize_phone_number(self.cleaned_data["phone_number"])


class ConsentChangeInline(admin.TabularInline):
    """The history: every change, newest first, never edited."""

    model = ConsentChange
    extra = 0
    can_delete = False
    fields = ["changed_at", "status", "method", "changed_by", "inbound_message", "note"]
    readonly_fields = fields
    ordering = ["-changed_at", "-id"]

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Consent)
class ConsentAdmin(admin.ModelAdmin):
    form = ConsentAdminForm
    list_display = ["phone_number", "status", "method", "changed_by", "changed_at"]
    list_filter = ["status", "method"]
    search_fields = ["phone_number"]
    inlines = [ConsentChangeInline]
    actions = ["opt_out", "opt_in"]

    def get_readonly_fields(self, request: HttpRequest, obj: Consent | None = None) -> list[str]:
        shown = ["changed_at", "method", "changed_by", "inbound_message"]
        return ["phone_number", *shown] if obj is not None else shown

    def save_model(self, request: HttpRequest, obj: Consent, form: forms.ModelForm, change: bool) -> None:
        # Through the service, so that the history and the audit log are written too.
        result = consent_set(
            phone_number=obj.phone_number,
            status=obj.status,
            note=obj.note,
            method=Consent.Method.ADMIN,
            via=VIA,
            actor=request.user,
        )
        obj.pk = result.consent.pk

    def has_delete_permission(self, request: HttpRequest, obj: Consent | None = None) -> bool:
        # Proof of consent is kept: a number is opted in again, not forgotten.
        return False

    def _set_all(self, request: HttpRequest, queryset: QuerySet[Consent], status: str) -> None:
        changed = sum(
            consent_set(
                phone_number=number, status=status, method=Consent.Method.ADMIN, via=VIA, actor=request.user
            ).changed
            for number in queryset.values_list("phone_number", flat=True)
        )
        self.message_user(request, f"{changed} number(s) now {Consent.Status(status).label.lower()}.", messages.SUCCESS)

    @admin.action(description="Opt out the selected numbers", permissions=["change"])
    def opt_out(self, request: HttpRequest, queryset: QuerySet[Consent]) -> None:
        self._set_all(request, queryset, Consent.Status.OPTED_OUT)

    @admin.action(description="Opt in the selected numbers", permissions=["change"])
    def opt_in(self, request: HttpRequest, queryset: QuerySet[Consent]) -> None:
        self._set_all(request, queryset, Consent.Status.OPTED_IN)


@admin.register(InboundMessage)
class InboundMessageAdmin(admin.ModelAdmin):
    list_display = ["received_at", "from_number", "to_number", "keyword", "short_text", "provider", "reply_message"]
    list_filter = ["keyword", "provider"]
    search_fields = ["from_number", "provider_message_id"]
    readonly_fields = [
        "inbound_id",
        "provider",
        "provider_message_id",
        "from_number",
        "to_number",
        "text",
        "received_at",
        "keyword",
        "reply_message",
    ]

    @admin.display(description="text")
    def short_text(self, obj: InboundMessage) -> str:
        return obj.text if len(obj.text) <= 60 else f"{obj.text[:59]}…"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
