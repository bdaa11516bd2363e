"""The callbacks cluster's django-q2 tasks (thin): the pump that hands out due events, and
the delivery of one endpoint's claim. Both run only on the cluster named
callbacks.conf.CLUSTER_NAME (`Q_CLUSTER_NAME=callbacks manage.py qcluster`)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from django.db import close_old_connections, connection

from callbacks.conf import CLUSTER_NAME, callback_settings
from callbacks.delivery import claim_deliver, claims_take

logger = logging.getLogger(__name__)

PUMP_TASK = "callbacks.tasks.callbacks_pump"
DELIVER_TASK = "callbacks.tasks.callbacks_deliver"
PUMP_SCHEDULE_NAME = "callbacks: hand out due events"
# pg_try_advisory_lock key: one pump at a time, site-wide (its connection's death frees it).
PUMP_LOCK_KEY = 0x63616C6C  # "call"


# Whether the qcluster running this worker is shutting down: the dispatcher's qcluster command
# hands its check in before the workers fork (callbacks sits below the dispatcher).
_cluster_stopping: Callable[[], bool] = lambda: False  # noqa: E731


def cluster_stopping_check_set(check: Callable[[], bool]) -> None:
    global _cluster_stopping
    _cluster_stopping = check


def deliver_enqueue(*, endpoint_id: int, claim_token: uuid.UUID) -> None:
    from django_q.tasks import async_task

    async_task(DELIVER_TASK, endpoint_id, str(claim_token), cluster=CLUSTER_NAME, group="callbacks")


def pump_enqueue() -> None:
    from django_q.tasks import async_task

    async_task(PUMP_TASK, cluster=CLUSTER_NAME, group="callbacks")


def callbacks_deliver(endpoint_id: int, claim_token: str) -> dict[str, int]:
    return claim_deliver(endpoint_id=endpoint_id, claim_token=uuid.UUID(claim_token))


def _lock_take() -> bool:
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [PUMP_LOCK_KEY])
        return bool(cursor.fetchone()[0])


def _lock_release() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [PUMP_LOCK_KEY])


def callbacks_pump() -> int:
    """For CALLBACK_PUMP_SECONDS, every CALLBACK_POLL_SECONDS: claim each endpoint's due
    events and enqueue a delivery task per claim. One pump runs at a time (an advisory
    lock); it enqueues its successor as it ends, and the minute schedule (and each
    callbacks qcluster's start) starts one if that chain broke. Also the sweeper: an
    event whose delivery died (SIGKILL) is due again once its endpoint's lease runs out."""
    conf = callback_settings()
    close_old_connections()
    if not _lock_take():
        return 0
    handed_out = 0
    try:
        deadline = time.monotonic() + conf.pump_seconds
        while time.monotonic() < deadline and not _cluster_stopping():
            try:
                claims = claims_take()
            except Exception as exc:  # a database hiccup: try again at the next poll
                logger.warning("callbacks pump: could not claim due events: %r", exc)
                close_old_connections()
                claims = []
            for claim in claims:
                deliver_enqueue(endpoint_id=claim.endpoint_id, claim_token=claim.claim_token)
                handed_out += claim.count
            if not claims:
                time.sleep(conf.poll_seconds)
    finally:
        try:
            _lock_release()
        except Exception:  # the connection is gone: so is its lock
            close_old_connections()
    if not _cluster_stopping():
        pump_enqueue()
    return handed_out
