"""The dispatcher's django-q2 tasks by name: the minute schedule that opens dispatch
windows, and enqueueing windows and chunks. Tasks are named by dotted path, so
nothing here imports the task module."""

from __future__ import annotations

import uuid

from django.utils import timezone

DISPATCH_WINDOW_TASK = "dispatcher.tasks.dispatch_window"
SEND_CHUNK_TASK = "dispatcher.tasks.send_chunk"
DISPATCH_SCHEDULE_NAME = "dispatcher: pace dispatch ticks"
PRUNE_KEYS_TASK = "restapi.idempotency.idempotency_keys_prune"
PRUNE_KEYS_SCHEDULE_NAME = "prune expired idempotency keys"
TASK_GROUP = "dispatcher"


def dispatcher_schedule_ensure(*, using: str = "default") -> None:
    """Make sure django-q2 starts a dispatch window every minute, and prunes expired
    idempotency keys every hour (created once, kept as is)."""
    from django_q.models import Schedule

    for name, func, minutes in (
        (DISPATCH_SCHEDULE_NAME, DISPATCH_WINDOW_TASK, 1),
        (PRUNE_KEYS_SCHEDULE_NAME, PRUNE_KEYS_TASK, 60),
    ):
        Schedule.objects.using(using).get_or_create(
            name=name,
            defaults={
                "func": func,
                "schedule_type": Schedule.MINUTES,
                "minutes": minutes,
                "repeats": -1,
                "next_run": timezone.now(),
            },
        )


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
