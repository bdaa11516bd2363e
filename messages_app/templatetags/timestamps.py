"""`{% load timestamps %}`: `{{ when|relative_time }}` ("12 s ago", "in 3 s") and
`{{ when|timestamp }}` ("2025-01-31 09:00:05 UTC (12 s ago)")."""

from __future__ import annotations

from django import template

from messages_app import timestamps

register = template.Library()


@register.filter
def relative_time(value):
    return timestamps.relative_time(value) if value else ""


@register.filter
def timestamp(value, empty: str = "-"):
    return timestamps.timestamp_text(value, empty=empty)
