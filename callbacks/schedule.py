"""The callbacks cluster's django-q2 schedule: a pump every minute (a safety net; pumps
chain themselves), run only by the callbacks cluster (Schedule.cluster)."""

from __future__ import annotations

import os

from django.db.models.functions import Now

from callbacks.conf import CLUSTER_NAME
from callbacks.tasks import PUMP_SCHEDULE_NAME, PUMP_TASK, pump_enqueue


def callbacks_schedule_ensure(*, using: str = "default") -> None:
    from django_q.models import Schedule

    Schedule.objects.using(using).get_or_create(
        name=PUMP_SCHEDULE_NAME,
        defaults={
            "func": PUMP_TASK,
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
            "next_run": Now(),
            "cluster": CLUSTER_NAME,
        },
    )


def callbacks_cluster_starting() -> None:
    """Called as a qcluster starts: if it is the callbacks cluster, it lowers its CPU
    priority (CALLBACK_QCLUSTER_NICE) and a pump starts now rather than at the
    scheduler's first pass (30 s in)."""
    from django.conf import settings
    from django_q.conf import Conf

    if Conf.CLUSTER_NAME == CLUSTER_NAME:
        # Below the senders in CPU priority (its workers inherit it): on a host shared with
        # sending, callbacks take the CPU sending leaves and catch up when it is idle.
        os.nice(settings.CALLBACKS["qcluster_nice"])
        pump_enqueue()
