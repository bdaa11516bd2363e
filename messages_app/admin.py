from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from audit.models import ControlAction
from messages_app.csv_export import messages_csv_lines
from messages_app.errors import MessageStateError
from messages_app.models import DeliveryAttempt, Message
from messages_app.permissions import CANCEL_MESSAGE, REQUEUE_MESSAGE
from messages_app.recipient_policy import recipients_refused
from messages_app.services import (
    message_cancel_queued,
    message_create,
    message_requeue,
    messages_cancel_queued,
    messages_delete,
    messages_requeue_failed,
)
from messages_app.template_source import TemplateLookup
from messages_app.timestamps import relative_time, timestamp_text
from messages_app.validators import normalize_phone_number, validate_content, validate_expiry
from restapi.storable import time_in_range

BEING_SENT = "This message is being sent right now and cannot be deleted; delete it once it is sent or failed."


def timestamp_display(field_name: str, *, model=Message) -> Callable:
    """A read-only field showing the time field `field_name` as every time is shown:
    "2025-01-31 09:00:05 UTC (12 s ago)". Named as the field, so its label, help text
    and the page's CSS class (field-<name>) stay the field's."""

    @admin.display(description=model._meta.get_field(field_name).verbose_name)
    def display(obj) -> str:
        return timestamp_text(getattr(obj, field_name))

    display.__name__ = field_name
    return display


def time_ago_column(field_name: str, *, description: str) -> Callable:
    """A list column for the time field `field_name`: how long ago in its largest unit
    ("2 h ago"), narrow enough for a laptop's screen, with the full time on hover
    ("2025-01-31 07:00:05 UTC (2 h 1 min ago)"); sorts by the field."""

    @admin.display(description=description, ordering=field_name)
    def column(obj) -> str:
        value = getattr(obj, field_name)
        if value is None:
            return "-"
        return format_html('<span title="{}">{}</span>', timestamp_text(value), relative_time(value, units=1))

    column.__name__ = field_name
    return column


def cut_short(text: str) -> str:
    """Text the list cuts to its column's width (the stylesheet's ellipsis), whole on hover."""
    return format_html('<span class="cut-short" title="{}">{}</span>', text, text) if text else "-"


class MessageAdminForm(forms.ModelForm):
    """Validates and normalises exactly as the API does."""

    # As typed, before normalisation: wider than the stored E.164 (16), like the API's.
    recipient_phone_number = forms.CharField(
        max_length=64, help_text="International format with country code, e.g. +90 555 111 22 33."
    )
    # Kept exactly as typed, as the API does (Django's form field would strip it).
    content = forms.CharField(widget=forms.Textarea, strip=False, required=False, help_text="Or a template below.")
    template = forms.CharField(
        required=False, max_length=100, help_text="Instead of content: a template's name or id (see Templates)."
    )
    personalisation = forms.JSONField(
        required=False, help_text='With a template: a value for each placeholder, e.g. {"name": "Ada"}.'
    )
    priority = forms.ChoiceField(
        choices=Message.Priority.choices,
        initial=Message.Priority.NORMAL,
        required=False,
        help_text="Higher goes first; lower keeps a share of every tick.",
    )
    category = forms.ChoiceField(
        choices=[("", "The default"), *Message.Category.choices],
        required=False,
        help_text="Marketing messages are held outside quiet hours in the recipient's local time.",
    )

    class Meta:
        model = Message
        fields = ["recipient_phone_number", "content", "send_after", "expires_at", "priority", "category"]
        help_texts = {
            "send_after": "Optional: not sent before this time.",
            "expires_at": "Optional: never sent after this time (it becomes expired).",
        }

    def clean_recipient_phone_number(self) -> str:
        number = normalize_phone_number(self.cleaned_data["recipient_phone_number"])
        refused = recipients_refused(phone_numbers=[number])
        if refused:
            raise forms.ValidationError(refused[number])
        return number

    def clean_content(self) -> str:
        # Browsers send a textarea's line breaks as CRLF (the HTML form encoding);
        # the line break typed is the "\n" the API takes (a lone "\r" stays refused).
        content = self.cleaned_data["content"].replace("\r\n", "\n")
        if not content and (self.data.get("template") or "").strip():
            return ""  # made from the template in clean()
        return validate_content(content)

    def clean_send_after(self) -> datetime | None:
        value = self.cleaned_data["send_after"]
        return None if value is None else time_in_range(value)

    def clean_expires_at(self) -> datetime | None:
        value = self.cleaned_data["expires_at"]
        return None if value is None else time_in_range(value)

    def clean(self) -> dict:
        cleaned = super().clean()
        try:
            validate_expiry(expires_at=cleaned.get("expires_at"), send_after=cleaned.get("send_after"))
        except forms.ValidationError as exc:
            self.add_error("expires_at", exc)
        template = (cleaned.get("template") or "").strip()
        if template and cleaned.get("content"):
            self.add_error("content", "Give content or a template, not both.")
        elif template:
            # As the API does: the template's text filled in, and what it was made from kept.
            try:
                self.template_fields = TemplateLookup().message_fields(
                    template=template,
                    personalisation=cleaned.get("personalisation") or {},
                    category=cleaned.get("category") or None,
                )
            except forms.ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    self.add_error(field if field in self.fields else "template", errors)
        elif cleaned.get("personalisation"):
            self.add_error("personalisation", "Only with a template.")
        return cleaned


class AttemptsFilter(admin.SimpleListFilter):
    title = "attempts"
    parameter_name = "attempts_range"

    # value in the query string -> (label, condition)
    RANGES = {
        "0": ("0", Q(attempts=0)),
        "1": ("1", Q(attempts=1)),
        "2-4": ("2 to 4", Q(attempts__gte=2, attempts__lte=4)),
        "5+": ("5 or more", Q(attempts__gte=5)),
    }

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(value, label) for value, (label, _) in self.RANGES.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Message]) -> QuerySet[Message]:
        if self.value() not in self.RANGES:
            return queryset
        _, condition = self.RANGES[self.value()]
        return queryset.filter(condition)


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    fields = [
        "number",
        "provider",
        "started",
        "duration_ms",
        "http_status",
        "outcome",
        "error",
        "provider_message_id",
    ]
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["id"]

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    # A method, not timestamp_display(): a tabular inline names its column headers after
    # the entry itself, which for a function would be its repr.
    @admin.display(description="started at")
    def started(self, obj: DeliveryAttempt) -> str:
        return timestamp_text(obj.started_at)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    form = MessageAdminForm
    inlines = [DeliveryAttemptInline]
    # Narrow columns, one line a row, so the list fits a laptop's screen (1280 px) with
    # the sidebar open: times as how long ago, long text cut to the column (whole on
    # hover and on the message's page); the stylesheet sets the widths.
    list_display = [
        "id",
        "recipient",
        "content_preview",
        "status_badge",
        "tries",
        time_ago_column("created_at", description="created"),
        time_ago_column("sent_at", description="sent"),
        "provider_id_preview",
        "error_preview",
    ]
    list_filter = ["status", "category", "delivery_status", "priority", "created_at", "sent_at", AttemptsFilter]
    search_fields = ["recipient_phone_number", "content", "=uuid", "=provider_message_id"]
    date_hierarchy = "created_at"
    ordering = ["-id"]
    list_per_page = 50
    show_full_result_count = False  # a COUNT(*) over millions of rows on every page is not free
    readonly_fields = [
        "uuid",
        "status",
        timestamp_display("created_at"),
        timestamp_display("send_after"),
        timestamp_display("expires_at"),
        "priority",
        "segments",
        "next_attempt",
        timestamp_display("claimed_at"),
        timestamp_display("lease_expires_at"),
        timestamp_display("sent_at"),
        "provider_message_id",
        "delivery_cache_pending",
        "attempts",
        "last_error",
        "delivery",
        "delivery_error_code",
        timestamp_display("delivery_status_at"),
        "category",
        "status_reason",
    ]
    actions = ["requeue_failed", "cancel_queued"]
    change_form_template = "admin/messages_app/message/change_form.html"

    def get_urls(self):
        own = [
            path(
                "export.csv",
                self.admin_site.admin_view(self.export_csv_view),
                name="messages_app_message_export_csv",
            ),
            path(
                "<int:message_id>/requeue/",
                self.admin_site.admin_view(self.requeue_view),
                name="messages_app_message_requeue",
            ),
            path(
                "<int:message_id>/cancel/",
                self.admin_site.admin_view(self.cancel_view),
                name="messages_app_message_cancel",
            ),
        ]
        return own + super().get_urls()

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "can_requeue": self.has_requeue_permission(request),
            "can_cancel": self.has_cancel_permission(request),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def cancel_view(self, request: HttpRequest, message_id: int) -> HttpResponse:
        """The Cancel button on an unsent (or scheduled) message's page (POST only)."""
        return self._message_button(
            request,
            message_id,
            permitted=self.has_cancel_permission(request),
            act=message_cancel_queued,
            done=f"Cancelled message #{message_id}: it will not be sent.",
        )

    def requeue_view(self, request: HttpRequest, message_id: int) -> HttpResponse:
        """The Requeue button on a failed message's page (POST only)."""
        return self._message_button(
            request,
            message_id,
            permitted=self.has_requeue_permission(request),
            act=message_requeue,
            done=f"Requeued message #{message_id}: back in the queue with a fresh budget of attempts.",
        )

    def _message_button(
        self, request: HttpRequest, message_id: int, *, permitted: bool, act: Callable[..., object], done: str
    ) -> HttpResponse:
        """A button on a message's page: POST only, by who may; the service says why it refuses."""
        if request.method != "POST" or not permitted:
            raise PermissionDenied
        try:
            act(message_id=message_id, actor=request.user, via=ControlAction.Via.ADMIN)
        except Message.DoesNotExist:
            raise Http404 from None
        except MessageStateError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            self.message_user(request, done, messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:messages_app_message_change", args=[message_id]))

    def export_csv_view(self, request: HttpRequest) -> HttpResponse:
        """The messages the changelist shows for the same query string (filters,
        search, date hierarchy, ordering), every page of them, as CSV."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            # What the changelist itself does with a filter it cannot apply.
            return HttpResponseRedirect(reverse("admin:messages_app_message_changelist") + "?e=1")
        response = StreamingHttpResponse(
            messages_csv_lines(queryset=changelist.queryset), content_type="text/csv; charset=utf-8"
        )
        filename = f"messages-{timezone.now():%Y%m%d-%H%M%S}.csv"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Message | None:
        # ASCII digits only: int() would read .../message/<ARABIC-INDIC DIGIT ONE>/change/ as message 1.
        if not str(object_id).isascii():
            return None
        return super().get_object(request, object_id, from_field)

    def get_fields(self, request: HttpRequest, obj: Message | None = None) -> list[str]:
        if obj is None:
            return [
                "recipient_phone_number",
                "content",
                "template",
                "personalisation",
                "send_after",
                "expires_at",
                "priority",
                "category",
            ]
        return ["recipient_phone_number", "content", *self.readonly_fields]

    def get_readonly_fields(self, request: HttpRequest, obj: Message | None = None) -> list[str]:
        return self.readonly_fields if obj is not None else []

    def get_inlines(self, request: HttpRequest, obj: Message | None = None):
        return self.inlines if obj is not None else []

    @admin.display(description="next attempt")
    def next_attempt(self, obj: Message) -> str:
        # A retry is scheduled only for a message waiting in the queue; a sent or
        # failed message has none, whatever an older row may still hold.
        if obj.status != Message.Status.UNSENT or obj.next_attempt_at is None:
            return "-"
        return timestamp_text(obj.next_attempt_at)

    @admin.display(description="recipient", ordering="recipient_phone_number")
    def recipient(self, obj: Message) -> str:
        return obj.recipient_phone_number

    @admin.display(description="tries", ordering="attempts")
    def tries(self, obj: Message) -> int:
        return obj.attempts

    @admin.display(description="content")
    def content_preview(self, obj: Message) -> str:
        return cut_short(obj.content)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Message) -> str:
        return format_html('<span class="message-status status-{}">{}</span>', obj.status, obj.get_status_display())

    @admin.display(description="provider id")
    def provider_id_preview(self, obj: Message) -> str:
        return cut_short(obj.provider_message_id)

    @admin.display(description="last error")
    def error_preview(self, obj: Message) -> str:
        return cut_short(obj.last_error)

    @admin.display(description="delivery status")
    def delivery(self, obj: Message) -> str:
        # Only a sent message waits for a receipt; one never sent gets none (a receipt
        # that came before its send was recorded is shown all the same).
        if obj.delivery_status or obj.status == Message.Status.SENT:
            return obj.get_delivery_status_display()
        return "— (not sent)"

    def has_change_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        # A queued message is history: only its status moves, through the
        # dispatcher or the requeue action, never by editing the row.
        return False if obj is not None else super().has_change_permission(request, obj)

    # A message a worker is sending cannot go (its outcome is about to be written):
    # the delete page says so, and "delete selected" keeps such messages.
    def delete_view(self, request: HttpRequest, object_id: str, extra_context=None):
        obj = self.get_object(request, object_id)
        if obj is not None and obj.status == Message.Status.PROCESSING and self.has_delete_permission(request, obj):
            self.message_user(request, BEING_SENT, messages.ERROR)
            return HttpResponseRedirect(reverse("admin:messages_app_message_change", args=[obj.pk]))
        return super().delete_view(request, object_id, extra_context)

    def delete_model(self, request: HttpRequest, obj: Message) -> None:
        deleted = messages_delete(
            queryset=Message.objects.filter(pk=obj.pk), actor=request.user, via=ControlAction.Via.ADMIN
        )
        if not deleted.deleted:
            self.message_user(request, BEING_SENT, messages.ERROR)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        result = messages_delete(queryset=queryset, actor=request.user, via=ControlAction.Via.ADMIN)
        if result.skipped:
            self.message_user(
                request,
                f"Kept {result.skipped} message(s) a worker is sending right now; delete them once they are done.",
                messages.WARNING,
            )

    def save_model(self, request: HttpRequest, obj: Message, form: forms.ModelForm, change: bool) -> None:
        fields = {
            "content": form.cleaned_data["content"],
            "category": form.cleaned_data.get("category") or None,
            # Made from a template: its content, category and what it was made from.
            **getattr(form, "template_fields", {}),
        }
        created = message_create(
            recipient_phone_number=form.cleaned_data["recipient_phone_number"],
            send_after=form.cleaned_data.get("send_after"),
            expires_at=form.cleaned_data.get("expires_at"),
            priority=form.cleaned_data.get("priority") or Message.Priority.NORMAL,
            **fields,
        )
        obj.pk = created.pk

    def has_requeue_permission(self, request: HttpRequest) -> bool:
        # Its own permission (superusers have it): staff status is what lets anyone
        # into the admin at all, so here it cannot be what allows requeueing.
        return request.user.has_perm(REQUEUE_MESSAGE)

    @admin.action(description="Requeue selected failed messages", permissions=["requeue"])
    def requeue_failed(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        selected = list(queryset.values_list("pk", flat=True))
        changed = messages_requeue_failed(message_ids=selected, actor=request.user, via=ControlAction.Via.ADMIN)
        self.message_user(request, f"Requeued {changed} failed message(s).", messages.SUCCESS)
        if len(selected) > changed:
            self.message_user(
                request, f"Skipped {len(selected) - changed} message(s) that were not failed.", messages.WARNING
            )

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(CANCEL_MESSAGE)

    @admin.action(description="Cancel selected unsent messages", permissions=["cancel"])
    def cancel_queued(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        selected = list(queryset.values_list("pk", flat=True))
        changed = messages_cancel_queued(message_ids=selected, actor=request.user, via=ControlAction.Via.ADMIN)
        self.message_user(request, f"Cancelled {changed} unsent message(s).", messages.SUCCESS)
        if len(selected) > changed:
            self.message_user(
                request,
                f"Skipped {len(selected) - changed} message(s) that were not unsent (being sent, or done).",
                messages.WARNING,
            )
