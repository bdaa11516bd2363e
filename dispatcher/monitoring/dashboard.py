"""The operator dashboard in the admin: message counts, the last hour's outcomes
as a chart, the dispatcher's state and controls, the latest failures, and
"requeue all failed" behind a confirmation.

DispatcherStateAdmin mounts these views (see its get_urls); they read through
selectors and write through services, like the rest of the admin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from audit.models import ControlAction
from callbacks.selectors import callback_summary
from consent.selectors import consent_summary
from dispatcher.engine.providers.status import provider_statuses
from dispatcher.errors import DispatcherConfigError
from dispatcher.state import dispatcher_configure, dispatcher_status
from messages_app.models import Message
from messages_app.selectors import (
    delivery_funnel,
    delivery_outcomes_per_minute,
    message_count,
    messages_recent_failures,
)
from messages_app.services import messages_requeue_failed
from messages_app.timestamps import relative_time, timestamp_text
from retention.selectors import retention_summary

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

CHART_MINUTES = 60
RECENT_FAILURES = 10
# The page reloads itself this often, so an operator watching it sees the cluster move.
REFRESH_SECONDS = 15

# Chart geometry, in SVG user units; the SVG scales to the page's width.
_MINUTE_WIDTH = 12
_BAR_WIDTH = 5
_PLOT_LEFT = 44
_PLOT_TOP = 12
_PLOT_HEIGHT = 180
_AXIS_HEIGHT = 28
_LABEL_EVERY = 10  # minutes between time labels on the x axis
_LABEL_GAP = 5  # columns (minutes) a label needs to itself
_PLOT_RIGHT_MARGIN = 24  # room for half the newest minute's label


class PaceForm(forms.Form):
    # No min/max here: dispatcher_configure owns the allowed ranges, and a
    # browser-side `min` would stop an out-of-range value before the server
    # could explain what is wrong with it.
    batch_size = forms.IntegerField(label="Batch size", help_text="Messages one tick claims and sends.")
    interval_seconds = forms.IntegerField(label="Interval (seconds)", help_text="Seconds between two ticks.")


@dataclass(frozen=True)
class ChartBar:
    outcome: str  # "sent" or "failed"
    count: int
    x: float
    y: float
    height: float


@dataclass(frozen=True)
class ChartMinute:
    minute: datetime
    sent: int
    failed: int
    x: float
    center_x: float
    bars: list[ChartBar]
    labelled: bool  # gets a time label on the x axis


@dataclass(frozen=True)
class ChartTick:
    value: int
    y: float


@dataclass(frozen=True)
class OutcomeChart:
    minutes: list[ChartMinute]
    y_ticks: list[ChartTick]
    total_sent: int
    total_failed: int
    width: int
    height: int
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    plot_height: int
    minute_width: int
    bar_width: int

    @property
    def value_label_x(self) -> int:
        return self.plot_left - 4

    @property
    def time_label_y(self) -> int:
        return self.plot_bottom + 16


def _tick_step(peak: int) -> int:
    """A round step (1, 2 or 5 times a power of ten) reaching `peak` in at most four steps."""
    raw = max(peak, 1) / 4
    magnitude = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    return next(int(factor * magnitude) for factor in (1, 2, 5, 10) if factor * magnitude >= raw)


def outcome_chart(
    *, per_minute: dict[datetime, dict[str, int]], last_minute: datetime, minutes: int = CHART_MINUTES
) -> OutcomeChart:
    """Lay out sent and failed counts per minute as bar positions for the SVG template.

    `last_minute` is the newest minute shown (truncated to the minute); minutes
    without attempts are shown as empty columns, so the time axis is even.
    """
    first = last_minute - timedelta(minutes=minutes - 1)
    columns = [(first + timedelta(minutes=i), per_minute.get(first + timedelta(minutes=i), {})) for i in range(minutes)]
    peak = max((max(c.get("sent", 0), c.get("failed", 0)) for _, c in columns), default=0)
    step = _tick_step(peak)
    top_value = max(step * math.ceil(peak / step), step)
    plot_bottom = _PLOT_TOP + _PLOT_HEIGHT

    def y_of(value: int) -> float:
        return round(plot_bottom - value / top_value * _PLOT_HEIGHT, 1)

    chart_minutes = []
    for i, (minute, counts) in enumerate(columns):
        x = _PLOT_LEFT + i * _MINUTE_WIDTH
        bars = []
        for offset, outcome in ((1, "sent"), (1 + _BAR_WIDTH, "failed")):
            count = counts.get(outcome, 0)
            if count:
                y = y_of(count)
                bars.append(ChartBar(outcome=outcome, count=count, x=x + offset, y=y, height=round(plot_bottom - y, 1)))
        chart_minutes.append(
            ChartMinute(
                minute=minute,
                sent=counts.get("sent", 0),
                failed=counts.get("failed", 0),
                x=x,
                center_x=x + _MINUTE_WIDTH / 2,
                bars=bars,
                # Round minutes, and the newest one; a round minute too close to the
                # newest would overlap its label.
                labelled=i == minutes - 1
                or (timezone.localtime(minute).minute % _LABEL_EVERY == 0 and i < minutes - _LABEL_GAP),
            )
        )
    plot_right = _PLOT_LEFT + minutes * _MINUTE_WIDTH
    return OutcomeChart(
        minutes=chart_minutes,
        y_ticks=[ChartTick(value=v, y=y_of(v)) for v in range(0, top_value + 1, step)],
        total_sent=sum(m.sent for m in chart_minutes),
        total_failed=sum(m.failed for m in chart_minutes),
        width=plot_right + _PLOT_RIGHT_MARGIN,
        height=plot_bottom + _AXIS_HEIGHT,
        plot_left=_PLOT_LEFT,
        plot_right=plot_right,
        plot_top=_PLOT_TOP,
        plot_bottom=plot_bottom,
        plot_height=_PLOT_HEIGHT,
        minute_width=_MINUTE_WIDTH,
        bar_width=_BAR_WIDTH,
    )


def next_tick_text(*, running: bool, next_tick_at: datetime | None, now: datetime | None = None) -> str:
    """When the next tick comes, as the dashboard and the dispatcher's page say it.

    A tick whose time has come is due until a dispatch window takes it: "due now"
    (with since when, once that is a second or more), never "0 s ago".
    """
    if not running:
        return "none while stopped"
    now = now or timezone.now()
    if next_tick_at is None or relative_time(next_tick_at, now=now) == "now":
        return "due now"
    if next_tick_at < now:
        return f"due now, since {timestamp_text(next_tick_at, now=now)}"
    return timestamp_text(next_tick_at, now=now)


def _can_requeue(request: HttpRequest, model_admin: ModelAdmin) -> bool:
    # The same permission as the changelist's requeue action.
    return model_admin.admin_site.get_model_admin(Message).has_requeue_permission(request)


def dashboard_view(request: HttpRequest, *, model_admin: ModelAdmin) -> HttpResponse:
    """GET shows the dashboard; POST saves the pace form (errors re-render the page)."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    can_control = model_admin.has_control_permission(request)
    dashboard_url = reverse("admin:dispatcher_dashboard")
    status = dispatcher_status()

    if request.method == "POST":
        if not can_control:
            raise PermissionDenied
        form = PaceForm(request.POST)
        if form.is_valid():
            try:
                state = dispatcher_configure(**form.cleaned_data, actor=request.user, via=ControlAction.Via.ADMIN)
            except DispatcherConfigError as exc:
                form.add_error(exc.field, exc.message)
            else:
                model_admin.message_user(
                    request,
                    f"Pace saved: {state.batch_size} message(s) every {state.interval_seconds} s.",
                    messages.SUCCESS,
                )
                return HttpResponseRedirect(dashboard_url)
    else:
        form = PaceForm(initial={"batch_size": status.batch_size, "interval_seconds": status.interval_seconds})

    now = timezone.now()
    last_minute = now.replace(second=0, microsecond=0)
    first_minute = last_minute - timedelta(minutes=CHART_MINUTES - 1)
    changelist_url = reverse("admin:messages_app_message_changelist")
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Dashboard",
        "opts": model_admin.opts,
        "status": status,
        "next_tick": next_tick_text(running=status.running, next_tick_at=status.next_tick_at, now=now),
        "counts": [
            {
                "status": choice.value,
                "label": choice.label,
                "count": status.counts[choice.value],
                "url": f"{changelist_url}?status__exact={choice.value}",
            }
            for choice in Message.Status
        ],
        "funnel": delivery_funnel(since=now - timedelta(days=1)),
        "consent": consent_summary(now=now),
        "retention": retention_summary(),
        "callbacks": callback_summary(),
        "held_changelist_url": f"{changelist_url}?status__exact=unsent&category__exact=marketing",
        "providers": provider_statuses(),
        "chart": outcome_chart(per_minute=delivery_outcomes_per_minute(since=first_minute), last_minute=last_minute),
        "failures": messages_recent_failures(limit=RECENT_FAILURES),
        "failed_changelist_url": f"{changelist_url}?status__exact={Message.Status.FAILED.value}",
        "form": form,
        "can_control": can_control,
        "can_requeue": _can_requeue(request, model_admin),
        "dashboard_url": dashboard_url,
        "refresh_seconds": REFRESH_SECONDS,
    }
    request.current_app = model_admin.admin_site.name
    # A rejected form is shown with its errors, as the admin's own forms are (200).
    return TemplateResponse(request, "admin/dispatcher/dashboard.html", context)


def requeue_failed_view(request: HttpRequest, *, model_admin: ModelAdmin) -> HttpResponse:
    """GET asks for confirmation (how many would be requeued); POST requeues them all."""
    if not _can_requeue(request, model_admin):
        raise PermissionDenied
    dashboard_url = reverse("admin:dispatcher_dashboard")
    if request.method == "POST":
        requeued = messages_requeue_failed(actor=request.user, via=ControlAction.Via.ADMIN)
        model_admin.message_user(request, f"Requeued {requeued} failed message(s).", messages.SUCCESS)
        return HttpResponseRedirect(dashboard_url)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Requeue all failed messages?",
        "opts": model_admin.opts,
        "failed_count": message_count(status=Message.Status.FAILED),
        "dashboard_url": dashboard_url,
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "admin/dispatcher/requeue_failed_confirm.html", context)
