"""The dispatcher's django-q2 schedules on the database's clock (dispatcher/schedule.py): django-q2's
scheduler run on it, and no schedule of ours left more than one interval ahead of it. With real
qclusters, one of them under `faketime`: tests/dispatcher/test_faults.py (6d)."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from django.utils import timezone
from django_q import scheduler as django_q_scheduler
from django_q.models import OrmQ, Schedule

from dispatcher.schedule import (
    DISPATCH_SCHEDULE_NAME,
    DISPATCH_WINDOW_TASK,
    PRUNE_KEYS_SCHEDULE_NAME,
    PRUNE_KEYS_TASK,
    RETENTION_SCHEDULE_NAME,
    dispatcher_schedules_bring_back,
    scheduler_pass_on_database_clock,
)
from messages_app.transitions import database_now

# Transactions of their own: a scheduler pass drops connections inside a transaction (close_old_connections).
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fast_host_clock(monkeypatch):
    """This process's clock ten minutes ahead of the database's: Django's timezone.now, which
    django-q2's scheduler reads (through `timezone.now()` and its `localtime()`)."""
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + dt.timedelta(minutes=10))


def next_run(name: str) -> dt.datetime:
    return Schedule.objects.get(name=name).next_run


def queued_funcs() -> list[str]:
    return [task.func() for task in OrmQ.objects.all()]


def test_a_scheduler_pass_on_a_host_whose_clock_runs_ahead_keeps_to_the_database_clock(fast_host_clock):
    OrmQ.objects.all().delete()
    now = database_now()
    due = now - dt.timedelta(seconds=1)
    Schedule.objects.filter(name=DISPATCH_SCHEDULE_NAME).update(next_run=due)
    # Due by this host's clock, not by the database's.
    not_due = now + dt.timedelta(minutes=5)
    Schedule.objects.filter(name__in=[PRUNE_KEYS_SCHEDULE_NAME, RETENTION_SCHEDULE_NAME]).update(next_run=not_due)

    scheduler_pass_on_database_clock()

    # The due one ran once, and is due again one interval on, by the database's clock (django-q2's
    # scheduler alone moved it past this host's clock: eleven minutes ahead).
    assert queued_funcs() == [DISPATCH_WINDOW_TASK]
    assert next_run(DISPATCH_SCHEDULE_NAME) == due + dt.timedelta(minutes=1)
    assert next_run(PRUNE_KEYS_SCHEDULE_NAME) == not_due
    # The scheduler module's own clock is back once the pass is over.
    assert django_q_scheduler.timezone is timezone
    assert PRUNE_KEYS_TASK not in queued_funcs()


def test_a_scheduler_pass_brings_back_a_schedule_left_far_ahead():
    # As a host whose clock ran ahead left it, under a release without the database's clock.
    Schedule.objects.filter(name=DISPATCH_SCHEDULE_NAME).update(next_run=database_now() + dt.timedelta(minutes=11))

    scheduler_pass_on_database_clock()

    lead = next_run(DISPATCH_SCHEDULE_NAME) - database_now()
    assert dt.timedelta(seconds=55) <= lead <= dt.timedelta(minutes=1)


def test_only_our_schedules_more_than_one_interval_ahead_are_brought_back(caplog):
    now = database_now()
    Schedule.objects.filter(name=DISPATCH_SCHEDULE_NAME).update(next_run=now + dt.timedelta(minutes=11))
    # Every hour: half an hour ahead is within its interval.
    within = now + dt.timedelta(minutes=30)
    Schedule.objects.filter(name=PRUNE_KEYS_SCHEDULE_NAME).update(next_run=within)
    # Someone's own schedule, set for tomorrow on purpose: not ours to move.
    theirs = Schedule.objects.create(
        name="someone's report", func="math.floor", schedule_type=Schedule.MINUTES, minutes=1, next_run=now
    )
    Schedule.objects.filter(pk=theirs.pk).update(next_run=now + dt.timedelta(days=1))

    with caplog.at_level(logging.WARNING, logger="dispatcher.schedule"):
        brought_back = dispatcher_schedules_bring_back()

    assert brought_back == [DISPATCH_SCHEDULE_NAME]
    assert now + dt.timedelta(minutes=1) <= next_run(DISPATCH_SCHEDULE_NAME) <= database_now() + dt.timedelta(minutes=1)
    assert next_run(PRUNE_KEYS_SCHEDULE_NAME) == within
    assert Schedule.objects.get(pk=theirs.pk).next_run == now + dt.timedelta(days=1)
    [warning] = [r.getMessage() for r in caplog.records if r.name == "dispatcher.schedule"]
    assert DISPATCH_SCHEDULE_NAME in warning and "ahead" in warning, warning
    assert dispatcher_schedules_bring_back() == []
