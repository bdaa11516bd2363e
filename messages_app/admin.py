from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from messages_app.models import DeliveryAttempt, Message
from messages_app.services import message_create, messages_requeue_failed
from messages_app.validators import normalize_phone_number, validate_content


class MessageAdminForm(forms.ModelForm):
    """Validates and normalises exactly as the API does."""

    # As typed, before normalisation: wider than the stored E.164 (16), like the API's.
    recipient_phone_number = forms.CharField(
        max_length=64, help_text="International format with country code, e.g. +90 555 111 22 33."
    )
    # Kept exactly as typed, as the API does (Django's form field would strip it).
    content = forms.CharField(widget=forms.Textarea, strip=False)

    class Meta:
        model = Message
        fields = ["recipient_phone_number", "content", "send_after"]
        help_texts = {"send_after": "Optional: not sent before this time."}

    def clean_recipient_phone_number(self) -> str:
        return normalize_phone_number(self.cleaned_data["recipient_phone_number"])

    def clean_content(self) -> str:
        return validate_content(self.cleaned_data["content"])


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    fields = ["number", "started_at", "duration_ms", "http_status", "outcome", "error", "provider_message_id"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["id"]

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    form = MessageAdminForm
    inlines = [DeliveryAttemptInline]
    list_display = ["id", "recipient_phone_number", "short_content", "status", "attempts", "created_at", "sent_at"]
    list_filter = ["status"]
    search_fields = ["recipient_phone_number", "content", "=uuid", "=provider_message_id"]
    date_hierarchy = "created_at"
    ordering = ["-id"]
    list_per_page = 50
    show_full_result_count = False  # a COUNT(*) over millions of rows on every page is not free
    readonly_fields = [
        "uuid",
        "status",
        "created_at",
        "send_after",
        "next_attempt_at",
        "claimed_at",
        "lease_expires_at",
        "sent_at",
        "provider_message_id",
        "delivery_cache_pending",
        "attempts",
        "last_error",
    ]
    actions = ["requeue_failed"]

    def get_fields(self, request: HttpRequest, obj: Message | None = None) -> list[str]:
        if obj is None:
            return ["recipient_phone_number", "content", "send_after"]
        return ["recipient_phone_number", "content", *self.readonly_fields]

    def get_readonly_fields(self, request: HttpRequest, obj: Message | None = None) -> list[str]:
        return self.readonly_fields if obj is not None else []

    def get_inlines(self, request: HttpRequest, obj: Message | None = None):
        return self.inlines if obj is not None else []

    @admin.display(description="content")
    def short_content(self, obj: Message) -> str:
        return obj.content if len(obj.content) <= 60 else obj.content[:57] + "..."

    def has_change_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        # A queued message is history: only its status moves, through the
        # dispatcher or the requeue action, never by editing the row.
        return False if obj is not None else super().has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: Message, form: forms.ModelForm, change: bool) -> None:
        created = message_create(
            recipient_phone_number=form.cleaned_data["recipient_phone_number"],
            content=form.cleaned_data["content"],
            send_after=form.cleaned_data.get("send_after"),
        )
        obj.pk = created.pk

    @admin.action(description="Requeue selected failed messages", permissions=["change"])
    def requeue_failed(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        selected = list(queryset.values_list("pk", flat=True))
        changed = messages_requeue_failed(message_ids=selected)
        self.message_user(request, f"Requeued {changed} failed message(s).", messages.SUCCESS)
        if len(selected) > changed:
            self.message_user(
                request, f"Skipped {len(selected) - changed} message(s) that were not failed.", messages.WARNING
            )
