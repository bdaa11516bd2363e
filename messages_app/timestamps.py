"""Times as the admin and the dashboard show them: DATETIME_FORMAT (to the second,
with the time zone) and, next to it, how long ago or how soon: "12 s ago", "in 3 s", "now"."""

from __future__ import annotations

from datetime import datetime

from django.utils import formats, timezone

# (seconds in the unit, its abbreviation), largest first; two units at most are shown.
_UNITS = ((86_400, "d"), (3_600, "h"), (60, "min"), (1, "s"))


def duration_text(seconds: float, *, units: int = 2) -> str:
    """A duration in its largest unit and the next one down: 0 s, 12 s, 4 min 5 s, 2 h 1 min,
    3 d 4 h; with `units=1` the largest alone, whole ones counted: 0 s, 12 s, 4 min, 2 h, 3 d."""
    remaining = round(abs(seconds))
    for (size, unit), (next_size, next_unit) in zip(_UNITS, [*_UNITS[1:], (1, "")], strict=True):
        if remaining >= size or size == 1:
            count, rest = divmod(remaining, size)
            smaller = rest // next_size if next_unit and units > 1 else 0
            return f"{count} {unit} {smaller} {next_unit}" if smaller else f"{count} {unit}"
    raise AssertionError("unreachable: the last unit is one second")


def relative_time(value: datetime, *, now: datetime | None = None, units: int = 2) -> str:
    """'12 s ago' for a past time, 'in 3 s' for a future one, 'now' within half a second
    (which is neither: "0 s ago" was written for a time just ahead too). `units` as
    duration_text takes it."""
    seconds = (value - (now or timezone.now())).total_seconds()
    if round(abs(seconds)) == 0:
        return "now"
    duration = duration_text(seconds, units=units)
    return f"in {duration}" if seconds > 0 else f"{duration} ago"


def timestamp_text(value: datetime | None, *, now: datetime | None = None, empty: str = "-") -> str:
    """'2025-01-31 09:00:05 UTC (12 s ago)', in TIME_ZONE; `empty` for None."""
    if value is None:
        return empty
    shown = formats.date_format(timezone.localtime(value), "DATETIME_FORMAT")
    return f"{shown} ({relative_time(value, now=now)})"
