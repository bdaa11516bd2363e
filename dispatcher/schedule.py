"""The dispatcher's django-q2 tasks by name: the minute schedule that opens dispatch
windows, the clock its scheduler runs on, and enqueueing windows and chunks. Tasks
are named by dotted path, so nothing here imports the task module.

django-q2's scheduler (django_q/scheduler.py, run by each qcluster's sentinel about
every 30 s) takes a schedule that is due by its host's clock and moves its next run
past that clock. A host whose clock ran ten minutes ahead so set the dispatch
schedule eleven minutes ahead of everyone else's: once it left, no qcluster opened a
dispatch window for nine minutes (docs/RELIABILITY.md). Here each pass runs on the
database's clock instead (`scheduler_pass_on_database_clock`, which our `qcluster`
installs), and afterwards brings back any of our schedules that is still more than
one interval ahead of it (`dispatcher_schedules_bring_back`): whatever set it so (a
host running an older release, an edit in the admin), dispatch resumes within one
interval and a pass.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from django.db import close_old_connections
from django.db.models.functions import Now

from messages_app.transitions import database_now
from retention.conf import SCHEDULE_MINUTES as RETENTION_SCHEDULE_MINUTES

logger = logging.getLogger(__name__)

DISPATCH_WINDOW_TASK = "dispatcher.tasks.dispatch_window"
SEND_CHUNK_TASK = "dispatcher.tasks.send_chunk"
DISPATCH_SCHEDULE_NAME = "dispatcher: pace dispatch ticks"
PRUNE_KEYS_TASK = "restapi.idempotency.idempotency_keys_prune"
PRUNE_KEYS_SCHEDULE_NAME = "prune expired idempotency keys"
RETENTION_TASK = "retention.tasks.retention_run"
RETENTION_SCHEDULE_NAME = "delete messages past their retention"
TASK_GROUP = "dispatcher"

# The dispatcher's django-q2 schedules: name, task, every how many minutes.
DISPATCHER_SCHEDULES = (
    (DISPATCH_SCHEDULE_NAME, DISPATCH_WINDOW_TASK, 1),
    (PRUNE_KEYS_SCHEDULE_NAME, PRUNE_KEYS_TASK, 60),
    # Deletes nothing unless MESSAGE_RETENTION_DAYS (or one status's) is set.
    (RETENTION_SCHEDULE_NAME, RETENTION_TASK, RETENTION_SCHEDULE_MINUTES),
)


def dispatcher_schedule_ensure(*, using: str = "default") -> None:
    """Make sure django-q2 starts a dispatch window every minute, prunes expired
    idempotency keys every hour and applies the messages' retention every
    RETENTION_SCHEDULE_MINUTES (created once, kept as is), due from now by the database's clock."""
    from django_q.models import Schedule

    for name, func, minutes in DISPATCHER_SCHEDULES:
        Schedule.objects.using(using).get_or_create(
            name=name,
            defaults={
                "func": func,
                "schedule_type": Schedule.MINUTES,
                "minutes": minutes,
                "repeats": -1,
                "next_run": Now(),
            },
        )


class _SchedulerClock:
    """The time as django-q2's scheduler module asks for it, `timezone.now()` and
    `localtime()`: the database's, read once per pass (after downtime the scheduler asks
    once for each run it skips)."""

    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now

    def localtime(self, value: datetime | None = None) -> datetime:
        from django_q.utils import localtime

        return localtime(self._now if value is None else value)


def scheduler_pass_on_database_clock(broker=None) -> None:
    """django-q2's scheduler pass, with the database's clock in place of this host's; then
    `dispatcher_schedules_bring_back`. Our `qcluster` puts it where django-q2's sentinel
    calls its scheduler (django_q.cluster.scheduler).

    django-q2 offers no setting for the scheduler's clock, and its scheduler reads the
    time only through the names `timezone` (for now()) and `localtime` of its own module,
    so those are what the pass replaces while it runs: the smallest change that leaves its
    logic (due schedules locked, arguments, hooks, repeats) its own. Never raises: the
    sentinel's guard loop, which keeps the workers alive, calls it.
    """
    from django_q import scheduler as django_q_scheduler

    close_old_connections()  # a connection a database restart broke is dropped, not reused
    try:
        clock = _SchedulerClock(database_now())
    except Exception as exc:
        logger.warning("scheduler: could not read the database's clock, pass skipped: %r", exc)
        return
    own_clock = django_q_scheduler.timezone, django_q_scheduler.localtime
    django_q_scheduler.timezone, django_q_scheduler.localtime = clock, clock.localtime
    try:
        django_q_scheduler.scheduler(broker=broker)  # logs and swallows its own errors
    finally:
        django_q_scheduler.timezone, django_q_scheduler.localtime = own_clock
    try:
        dispatcher_schedules_bring_back()
    except Exception as exc:
        logger.warning("scheduler: could not check the schedules' next runs: %r", exc)


def dispatcher_schedules_bring_back() -> list[str]:
    """Bring the next run of each of the dispatcher's schedules that is more than one
    interval ahead of the database's clock back to one interval from now; return their names.

    django-q2 never sets a minute schedule further ahead than that on one clock, so a
    next run beyond it was set by a host whose clock runs ahead, and would hold back every
    other qcluster's scheduler until that far-off time. A schedule someone gave another
    kind of interval is left as it is.
    """
    from django_q.models import Schedule

    names = [name for name, _func, _minutes in DISPATCHER_SCHEDULES]
    now = database_now()
    brought_back = []
    for schedule in Schedule.objects.filter(name__in=names, schedule_type=Schedule.MINUTES):
        latest = now + timedelta(minutes=schedule.minutes or 1)  # django-q2 reads no minutes as 1
        if schedule.next_run is None or schedule.next_run <= latest:
            continue
        # Guarded by the value read: a pass that moved it meanwhile wins.
        if Schedule.objects.filter(pk=schedule.pk, next_run=schedule.next_run).update(next_run=latest):
            brought_back.append(schedule.name)
            logger.warning(
                "schedule %r was due %.0f s from now by the database's clock, more than its interval: "
                "now due at %s (a host whose clock runs ahead set it?)",
                schedule.name,
                (schedule.next_run - now).total_seconds(),
                latest.isoformat(),
            )
    return brought_back


def enqueue_dispatch_window() -> None:
    from django_q.tasks import async_task

    async_task(DISPATCH_WINDOW_TASK, task_name="dispatch window (started)", group=TASK_GROUP)


def enqueue_chunk(*, message_ids: list[int], claim_token: uuid.UUID) -> None:
    """Hand a claimed chunk to whichever worker of whichever qcluster takes it first."""
    from django_q.tasks import async_task

    async_task(
        SEND_CHUNK_TASK,
        message_ids,
        str(claim_token),
        task_name=f"send {len(message_ids)} messages ({message_ids[0]}..{message_ids[-1]})",
        group=TASK_GROUP,
        # A chunk that succeeds is not kept in django-q2's task list: keeping each made the
        # monitor lock and re-read its 200 newest results (save_limit) per chunk, an eighth
        # of a qcluster's CPU. A failed chunk is still kept; the attempt log is the record
        # that lasts.
        save=False,
    )
