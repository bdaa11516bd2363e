"""Operators' view of status callbacks: endpoints with their health (last success, failures
in a row, latency), register one (its secret shown once), rotate its secret, replay its
events since a time; events with every attempt, resend one. Each action calls a service."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from audit.models import ControlAction
from callbacks import services
from callbacks.models import CallbackAttempt, CallbackEndpoint, CallbackEvent, EventType

VIA = ControlAction.Via.ADMIN


class CallbackEndpointForm(forms.ModelForm):
    event_types = forms.MultipleChoiceField(
        choices=EventType.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every event type.",
    )

    class Meta:
        model = CallbackEndpoint
        fields = ["name", "url", "event_types", "owner", "enabled"]

    def clean_url(self) -> str:
        return services.endpoint_url_checked(self.cleaned_data["url"])


class EndpointActionForm(ActionForm):
    since = forms.DateTimeField(required=False, help_text="Replay: events created since (UTC).")
    overlap_seconds = forms.IntegerField(required=False, min_value=0, initial=86_400)


@admin.register(CallbackEndpoint)
class CallbackEndpointAdmin(admin.ModelAdmin):
    form = CallbackEndpointForm
    action_form = EndpointActionForm
    list_display = [
        "name",
        "url",
        "enabled",
        "last_success_at",
        "failures_in_row",
        "failing_since",
        "last_latency_ms",
        "last_error_short",
    ]
    list_filter = ["enabled"]
    search_fields = ["name", "url"]
    readonly_fields = [
        "disabled_reason",
        "created_at",
        "last_success_at",
        "last_failure_at",
        "failing_since",
        "failures_in_row",
        "last_latency_ms",
        "last_error",
        "previous_secret_expires_at",
    ]
    actions = ["rotate_secret", "replay_since"]

    @admin.display(description="last error")
    def last_error_short(self, obj: CallbackEndpoint) -> str:
        return obj.last_error[:80]

    def save_model(self, request: HttpRequest, obj: CallbackEndpoint, form, change: bool) -> None:
        data = form.cleaned_data
        if change:
            updated = services.endpoint_update(
                endpoint_id=obj.pk,
                actor=request.user,
                via=VIA,
                **{f: data[f] for f in ("name", "url", "event_types", "owner", "enabled") if f in form.changed_data},
            )
            obj.pk = updated.pk
            return
        registered = services.endpoint_create(
            name=data["name"],
            url=data["url"],
            event_types=data["event_types"],
            owner=data.get("owner"),
            enabled=data["enabled"],
            actor=request.user,
            via=VIA,
        )
        obj.pk = registered.endpoint.pk
        obj.__dict__.update(registered.endpoint.__dict__)
        self.message_user(
            request, f"Signing secret of {obj.name} (shown this once, keep it): {registered.secret}", messages.WARNING
        )

    def save_related(self, request, form, formsets, change) -> None:
        pass  # no related objects; the service saved everything

    @admin.action(
        description="Rotate the signing secret (the old one signs too for the overlap)", permissions=["change"]
    )
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet[CallbackEndpoint]) -> None:
        overlap = request.POST.get("overlap_seconds") or "86400"
        try:
            for endpoint in queryset:
                rotated = services.endpoint_rotate_secret(
                    endpoint_id=endpoint.pk, overlap_seconds=int(overlap), actor=request.user, via=VIA
                )
                self.message_user(
                    request,
                    f"New signing secret of {endpoint.name} (shown this once): {rotated.secret}",
                    messages.WARNING,
                )
        except (ValueError, ValidationError) as exc:
            self.message_user(request, f"Not rotated: {exc}", messages.ERROR)

    @admin.action(description="Replay every event since the time given", permissions=["change"])
    def replay_since(self, request: HttpRequest, queryset: QuerySet[CallbackEndpoint]) -> None:
        form = EndpointActionForm(request.POST)
        if not form.is_valid() or not form.cleaned_data.get("since"):
            self.message_user(request, "Give the time to replay from (since).", messages.ERROR)
            return
        total = sum(
            services.endpoint_replay(
                endpoint_id=endpoint.pk, since=form.cleaned_data["since"], actor=request.user, via=VIA
            )
            for endpoint in queryset
        )
        self.message_user(request, f"{total} event(s) will be delivered again.", messages.SUCCESS)


class CallbackAttemptInline(admin.TabularInline):
    model = CallbackAttempt
    extra = 0
    can_delete = False
    fields = ["number", "started_at", "duration_ms", "http_status", "outcome", "error"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(CallbackEvent)
class CallbackEventAdmin(admin.ModelAdmin):
    list_display = [
        "event_id",
        "endpoint",
        "event_type",
        "message_id",
        "sequence",
        "state",
        "attempts",
        "last_http_status",
        "next_attempt_at",
        "delivered_at",
    ]
    list_filter = ["state", "event_type", "endpoint"]
    search_fields = ["event_id", "=message_id", "client_reference"]
    list_select_related = ["endpoint"]
    inlines = [CallbackAttemptInline]
    actions = ["resend"]
    show_full_result_count = False

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in CallbackEvent._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_resend_permission(self, request: HttpRequest) -> bool:
        # Resending is managing the endpoint's deliveries: the same permission as the API's.
        return request.user.has_perm("callbacks.change_callbackendpoint")

    @admin.action(description="Resend the selected events", permissions=["resend"])
    def resend(self, request: HttpRequest, queryset: QuerySet[CallbackEvent]) -> None:
        count = 0
        for event in queryset:
            services.event_resend(event_id=event.pk, actor=request.user, via=VIA)
            count += 1
        self.message_user(request, f"{count} event(s) will be delivered again.", messages.SUCCESS)
