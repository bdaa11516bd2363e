from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from audit.models import ControlAction


@admin.register(ControlAction)
class ControlActionAdmin(admin.ModelAdmin):
    """The audit log, read-only for everyone (superusers included): a record
    that could be edited or deleted from here would prove nothing."""

    list_display = ["created_at", "actor_display", "action", "via", "detail_display"]
    list_filter = ["action", "via", "created_at"]
    search_fields = ["actor_label"]
    date_hierarchy = "created_at"
    ordering = ["-created_at", "-id"]
    list_per_page = 100
    fields = ["created_at", "actor_label", "actor", "action", "via", "detail_display"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    # The label, not the foreign key: it names who acted even after the account is deleted.
    @admin.display(description="actor", ordering="actor_label")
    def actor_display(self, obj: ControlAction) -> str:
        return obj.actor_label

    @admin.display(description="detail")
    def detail_display(self, obj: ControlAction) -> str:
        """The detail in words: "batch size 10 (was 2); changed", "message ids 4, 7 (2 selected); count 2"."""
        return "; ".join(f"{_label(key)} {_value(obj.detail[key])}" for key in sorted(obj.detail)) or "-"


def _label(key: str) -> str:
    return key.replace("_", " ")


def _value(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        shown = ", ".join(str(item) for item in value[:20])
        return shown + (f" and {len(value) - 20} more" if len(value) > 20 else "")
    if isinstance(value, dict):
        return "(" + ", ".join(f"{_label(k)} {_value(v)}" for k, v in sorted(value.items())) + ")"
    return "-" if value is None else str(value)
