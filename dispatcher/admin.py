from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html_join
from django.utils.http import url_has_allowed_host_and_scheme

from audit.models import ControlAction
from dispatcher.errors import DispatcherConfigError
from dispatcher.models import DispatcherState
from dispatcher.monitoring import dashboard
from dispatcher.permissions import CONTROL_DISPATCHER
from dispatcher.state import dispatcher_configure, dispatcher_start, dispatcher_state_ensure, dispatcher_stop
from messages_app.selectors import message_status_counts
from messages_app.timestamps import timestamp_text

VIA = ControlAction.Via.ADMIN

# The admin's own index template comes first in the template search (the admin
# app is listed before ours), so ours is named here rather than shadowing it:
# it adds the link to the dashboard.
admin.site.index_template = "admin/dispatcher/index.html"


@admin.register(DispatcherState)
class DispatcherStateAdmin(admin.ModelAdmin):
    """One page for the one dispatcher: its state, Start/Stop, and its pace.

    Every admin user is staff, so here staff status grants nothing by itself:
    Start, Stop and the pace (this page's form and the dashboard's) need
    dispatcher.control_dispatcher, which superusers have. The model's own change
    permission is not used; a staff user without the control permission sees
    the state without the controls.
    """

    change_form_template = "admin/dispatcher/dispatcherstate/change_form.html"
    fields = ["running", "batch_size", "interval_seconds", "last_tick", "next_tick", "message_counts"]
    readonly_fields = ["running", "last_tick", "next_tick", "message_counts"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_control_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(CONTROL_DISPATCHER)

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        # Saving this page's form paces the dispatcher: that is controlling it.
        return self.has_control_permission(request)

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        # Whoever may control it may see what they control.
        return super().has_view_permission(request, obj) or self.has_control_permission(request)

    def changelist_view(self, request: HttpRequest, extra_context=None):
        state = dispatcher_state_ensure()
        return HttpResponseRedirect(reverse("admin:dispatcher_dispatcherstate_change", args=[state.pk]))

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        extra_context = {**(extra_context or {}), "can_control": self.has_control_permission(request)}
        return super().change_view(request, object_id, form_url, extra_context)

    def get_urls(self):
        own = [
            path("start/", self.admin_site.admin_view(self.start_view), name="dispatcher_dispatcherstate_start"),
            path("stop/", self.admin_site.admin_view(self.stop_view), name="dispatcher_dispatcherstate_stop"),
            path("dashboard/", self.admin_site.admin_view(self.dashboard_view), name="dispatcher_dashboard"),
            path(
                "dashboard/requeue-failed/",
                self.admin_site.admin_view(self.requeue_failed_view),
                name="dispatcher_dashboard_requeue_failed",
            ),
        ]
        return own + super().get_urls()

    @admin.display(description="last tick")
    def last_tick(self, obj: DispatcherState) -> str:
        return timestamp_text(obj.last_tick_at, empty="never")

    @admin.display(description="next tick")
    def next_tick(self, obj: DispatcherState) -> str:
        return dashboard.next_tick_text(running=obj.running, next_tick_at=obj.next_tick_at)

    @admin.display(description="messages")
    def message_counts(self, obj: DispatcherState) -> str:
        return format_html_join(", ", "{}: {}", message_status_counts().items())

    def save_model(self, request: HttpRequest, obj: DispatcherState, form, change: bool) -> None:
        try:
            dispatcher_configure(
                batch_size=obj.batch_size, interval_seconds=obj.interval_seconds, actor=request.user, via=VIA
            )
        except DispatcherConfigError as exc:  # the form validators normally catch this first
            self.message_user(request, exc.message, messages.ERROR)

    def _control(self, request: HttpRequest, operation, done: str) -> HttpResponseRedirect:
        if request.method != "POST":
            raise PermissionDenied("Use the buttons on the dispatcher page.")
        if not self.has_control_permission(request):
            raise PermissionDenied
        state = operation(actor=request.user, via=VIA)
        self.message_user(request, done, messages.SUCCESS)
        # The dashboard's buttons ask to come back to it; only a URL of this site is followed.
        back_to = request.POST.get("next") or request.GET.get("next")
        if back_to and url_has_allowed_host_and_scheme(
            back_to, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            return HttpResponseRedirect(back_to)
        return HttpResponseRedirect(reverse("admin:dispatcher_dispatcherstate_change", args=[state.pk]))

    def start_view(self, request: HttpRequest) -> HttpResponseRedirect:
        return self._control(request, dispatcher_start, "Dispatcher started: the first tick runs now.")

    def stop_view(self, request: HttpRequest) -> HttpResponseRedirect:
        return self._control(request, dispatcher_stop, "Dispatcher stopped: no more messages will be claimed.")

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        return dashboard.dashboard_view(request, model_admin=self)

    def requeue_failed_view(self, request: HttpRequest) -> HttpResponse:
        return dashboard.requeue_failed_view(request, model_admin=self)
