"""The admin site of this service: its name on every page, and its apps in the
order operators use them (messages first), not alphabetically."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.http import HttpRequest

# App labels first in the index and the sidebar, in this order; the rest follow alphabetically.
APP_ORDER = ("messages_app", "dispatcher", "audit")


class MessagingAdminSite(admin.AdminSite):
    site_header = "Message sending service"
    site_title = "Message sending service"
    index_title = "Operator console"

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[dict]:
        apps = super().get_app_list(request, app_label)
        rank = {label: position for position, label in enumerate(APP_ORDER)}
        # sorted() is stable: the apps not named keep Django's alphabetical order.
        return sorted(apps, key=lambda app: rank.get(app["app_label"], len(APP_ORDER)))


class MessagingAdminConfig(AdminConfig):
    """Listed in INSTALLED_APPS instead of django.contrib.admin: `admin.site` is a MessagingAdminSite."""

    default_site = "messaging_site.admin_site.MessagingAdminSite"
