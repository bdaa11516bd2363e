"""The admin site of this service: its name on every page, its apps in the order
operators use them (messages first), not alphabetically, and change lists that
answer a filter the database refuses as a bad filter."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.contrib.admin.options import IncorrectLookupParameters
from django.db import DataError, transaction
from django.http import HttpRequest

# App labels first in the index and the sidebar, in this order; the rest follow alphabetically.
APP_ORDER = ("messages_app", "dispatcher", "consent", "audit")


class RefusedLookupsAreBadFilters:
    """A change list filters, searches and dates by what its address says, and Django
    checks only the form of those values: the database refuses some it reads (a NUL,
    a UTC offset beyond 15:59, as in ?send_after__gte=2030-01-01T00:00:00+23:59),
    which was a 500. Such a filter is answered as any other the list cannot apply:
    back to the list with Django's "?e=1"."""

    def get_changelist_instance(self, request: HttpRequest):
        try:
            # Counting its rows runs the query; in a savepoint, so that a refusal inside an
            # outer transaction leaves it usable.
            with transaction.atomic():
                return super().get_changelist_instance(request)
        except DataError as exc:
            raise IncorrectLookupParameters(exc) from None


class MessagingAdminSite(admin.AdminSite):
    site_header = "Message sending service"
    site_title = "Message sending service"
    index_title = "Operator console"

    def register(self, model_or_iterable, admin_class=None, **options) -> None:
        # Every model's admin, this service's and the libraries' (users, schedules), alike.
        admin_class = admin_class or admin.ModelAdmin
        if not issubclass(admin_class, RefusedLookupsAreBadFilters):
            admin_class = type(admin_class.__name__, (RefusedLookupsAreBadFilters, admin_class), {})
        super().register(model_or_iterable, admin_class, **options)

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[dict]:
        apps = super().get_app_list(request, app_label)
        rank = {label: position for position, label in enumerate(APP_ORDER)}
        # sorted() is stable: the apps not named keep Django's alphabetical order.
        return sorted(apps, key=lambda app: rank.get(app["app_label"], len(APP_ORDER)))


class MessagingAdminConfig(AdminConfig):
    """Listed in INSTALLED_APPS instead of django.contrib.admin: `admin.site` is a MessagingAdminSite."""

    default_site = "messaging_site.admin_site.MessagingAdminSite"
