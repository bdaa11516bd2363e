"""One way to write a time in the admin and the dashboard: to the second, with the
time zone, and how long ago or how soon."""

from __future__ import annotations

import datetime as dt

import pytest
from django.template import Context, Template
from django.utils import timezone

from messages_app.timestamps import duration_text, relative_time, timestamp_text

NOW = dt.datetime(2025, 1, 31, 9, 0, 5, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (0.4, "0 s"),
        (12, "12 s"),
        (60, "1 min"),
        (245, "4 min 5 s"),
        (3_600, "1 h"),
        (7_260, "2 h 1 min"),
        (90_061, "1 d 1 h"),
        (-12, "12 s"),
    ],
)
def test_durations_are_written_in_two_units_at_most(seconds, text):
    assert duration_text(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (12, "12 s"), (245, "4 min"), (3_599, "59 min"), (7_260, "2 h"), (1_119_600, "12 d")],
)
def test_a_duration_in_one_unit_counts_whole_ones(seconds, text):
    assert duration_text(seconds, units=1) == text


def test_relative_times_say_ago_or_in():
    assert relative_time(NOW - dt.timedelta(seconds=12), now=NOW) == "12 s ago"
    assert relative_time(NOW + dt.timedelta(seconds=3), now=NOW) == "in 3 s"
    assert relative_time(NOW + dt.timedelta(seconds=12), now=NOW) == "in 12 s"
    assert relative_time(NOW - dt.timedelta(minutes=4, seconds=5), now=NOW) == "4 min 5 s ago"


@pytest.mark.parametrize("seconds", [0, 0.3, -0.3, 0.49, -0.49])
def test_a_time_within_half_a_second_is_now_neither_ago_nor_in(seconds):
    # "0 s ago" was written for a time 0.3 s ahead as for one just past.
    assert relative_time(NOW + dt.timedelta(seconds=seconds), now=NOW) == "now"


def test_a_second_away_either_way_is_in_or_ago():
    assert relative_time(NOW + dt.timedelta(seconds=0.6), now=NOW) == "in 1 s"
    assert relative_time(NOW - dt.timedelta(seconds=0.6), now=NOW) == "1 s ago"


def test_a_timestamp_has_seconds_the_time_zone_and_the_relative_time():
    assert timestamp_text(NOW - dt.timedelta(seconds=12), now=NOW) == "2025-01-31 08:59:53 UTC (12 s ago)"
    assert timestamp_text(NOW, now=NOW) == "2025-01-31 09:00:05 UTC (now)"
    assert timestamp_text(None) == "-"
    assert timestamp_text(None, empty="never") == "never"


def test_the_site_formats_are_the_one_format():
    when = timezone.now().replace(microsecond=0)
    rendered = Template(
        "{{ when }}|{{ when|date:'DATETIME_FORMAT' }}|{% load timestamps %}{{ when|timestamp }}"
    ).render(Context({"when": when}))

    shown = f"{when:%Y-%m-%d %H:%M:%S} UTC"
    assert rendered.split("|")[:2] == [shown, shown]
    assert rendered.split("|")[2] in (f"{shown} (now)", f"{shown} (1 s ago)")
