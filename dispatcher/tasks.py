"""django-q2 tasks. Thin: they take no arguments and call into the services."""

from __future__ import annotations

from dispatcher.conf import dispatcher_settings
from dispatcher.engine.pacing import run_dispatch_window


def dispatch_window() -> str:
    ticks = run_dispatch_window(window_seconds=dispatcher_settings().window_seconds)
    return f"{ticks} ticks"
