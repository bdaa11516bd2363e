"""Quiet hours: when a marketing message may be sent, in its recipient's own time.

The recipient's time zones come from the number (`phonenumbers.timezone`); a number
with several (a country or area code that spans zones) is sent to only while the
window is open in all of them. A number whose zone is unknown, or whose zones share
no open hour, is judged in the zone `unknown_zone` names, or not held if it says
"none". The window (default 08:00-21:00 local) may be overridden by E.164 prefix,
the longest prefix winning (stricter US states by area code, for example).

`quiet_hours_opening` answers when a message to a number, due at a moment, may go:
None if at once, else the first moment after it when the window is open, with the
reason shown on the held message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezones

UNKNOWN_ZONES = {"Etc/Unknown"}
NOT_HELD = "none"
# Look this far ahead for a moment every zone's window is open.
SEARCH_DAYS = 3
_WINDOW = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])$")


@dataclass(frozen=True)
class Window:
    start: time
    end: time  # time.max for 24:00

    def __str__(self) -> str:
        end = "24:00" if self.end == time.max else f"{self.end:%H:%M}"
        return f"{self.start:%H:%M}-{end}"

    def is_open(self, local: time) -> bool:
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end  # a window across midnight


def window_parse(text: str, *, setting: str) -> Window:
    """ "HH:MM-HH:MM" as a Window; ValueError naming `setting` otherwise."""
    found = _WINDOW.match(text.strip())
    if not found or found.group(1, 2) == found.group(3, 4):
        raise ValueError(f"{setting} must be a window like 08:00-21:00, got {text!r}")
    h1, m1, h2, m2 = (int(g) for g in found.groups())
    end = time.max if (h2, m2) == (24, 0) else time(h2, m2)
    if h2 == 24 and m2:
        raise ValueError(f"{setting} must be a window like 08:00-21:00, got {text!r}")
    return Window(time(h1, m1), end)


@dataclass(frozen=True)
class QuietHoursRules:
    window: Window
    # (E.164 prefix, window), longest prefix first.
    overrides: tuple[tuple[str, Window], ...]
    unknown_zone: str  # a zone name, or NOT_HELD

    def window_for(self, phone_number: str) -> Window:
        return next((w for prefix, w in self.overrides if phone_number.startswith(prefix)), self.window)


def quiet_hours_rules(*, window: str, overrides: str, unknown_zone: str) -> QuietHoursRules:
    """Rules from the settings' text: QUIET_HOURS_WINDOW, QUIET_HOURS_OVERRIDES
    ("+1205=08:00-20:00,+1850=08:00-20:00"), QUIET_HOURS_UNKNOWN_ZONE. ValueError naming
    the setting when one cannot be read."""
    parsed = []
    for item in filter(None, (part.strip() for part in overrides.split(","))):
        prefix, _, text = item.partition("=")
        if not re.fullmatch(r"\+[0-9]{1,15}", prefix.strip()):
            raise ValueError(f"QUIET_HOURS_OVERRIDES: {item!r} must be +<digits>=HH:MM-HH:MM")
        parsed.append((prefix.strip(), window_parse(text, setting=f"QUIET_HOURS_OVERRIDES ({prefix.strip()})")))
    unknown_zone = unknown_zone.strip()
    if unknown_zone != NOT_HELD:
        try:
            ZoneInfo(unknown_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"QUIET_HOURS_UNKNOWN_ZONE must be a time zone (e.g. UTC) or {NOT_HELD!r}, got {unknown_zone!r}"
            ) from None
    return QuietHoursRules(
        window=window_parse(window, setting="QUIET_HOURS_WINDOW"),
        overrides=tuple(sorted(parsed, key=lambda item: -len(item[0]))),
        unknown_zone=unknown_zone,
    )


@lru_cache(maxsize=4096)
def recipient_zones(phone_number: str) -> tuple[str, ...]:
    """The time zones of an E.164 number, () when unknown."""
    try:
        zones = phone_timezones.time_zones_for_number(phonenumbers.parse(phone_number, None))
    except phonenumbers.NumberParseException:
        return ()
    return tuple(zone for zone in zones if zone not in UNKNOWN_ZONES)


def _open_everywhere(at: datetime, zones: list[ZoneInfo], window: Window) -> bool:
    return all(window.is_open(at.astimezone(zone).time()) for zone in zones)


def _first_open(at: datetime, zones: list[ZoneInfo], window: Window) -> datetime | None:
    """`at` if the window is open in every zone then; else the first window opening after
    it at which it is open in every zone; None if there is none in SEARCH_DAYS."""
    if _open_everywhere(at, zones, window):
        return at
    openings = []
    for zone in zones:
        local_day = at.astimezone(zone).date()
        for days in range(SEARCH_DAYS + 1):
            opening = datetime.combine(local_day + timedelta(days=days), window.start, tzinfo=zone)
            if opening > at:
                openings.append(opening)
    return next((o for o in sorted(openings) if _open_everywhere(o, zones, window)), None)


def quiet_hours_opening(*, phone_number: str, at: datetime, rules: QuietHoursRules) -> tuple[datetime, str] | None:
    """None if a marketing message to `phone_number` may go at `at`; else (when it may, why not before)."""
    window = rules.window_for(phone_number)
    names = list(recipient_zones(phone_number))
    opening = _first_open(at, [ZoneInfo(name) for name in names], window) if names else None
    if opening is None:  # no zone known, or no hour open in all of them
        if rules.unknown_zone == NOT_HELD:
            return None
        names = [rules.unknown_zone]
        opening = _first_open(at, [ZoneInfo(rules.unknown_zone)], window)
    if opening is None or opening == at:
        return None
    where = names[0] if len(names) == 1 else f"{len(names)} time zones ({names[0]}...)"
    local = opening.astimezone(ZoneInfo(names[0]))
    return opening, f"Quiet hours {window} in {where}: held until {local:%Y-%m-%d %H:%M} {names[0]}."
