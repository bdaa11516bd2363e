"""`manage.py qcluster`: django-q2's own command, with a sentinel that stops gracefully
on SIGTERM, and its scheduler on the database's clock.

django-q2's sentinel (the process that runs the workers) keeps SIGTERM's default
action, so a SIGTERM to the cluster's whole process group, which systemd and
container runtimes send, killed it and its workers mid-task and left the main
process waiting for a sentinel that was gone. Here the sentinel takes SIGTERM as
the request to stop that it is: it stops pulling tasks and waits for its workers
to finish (they stop early themselves: dispatcher.tasks.worker_handles_sigterm).
It also hands the cluster's stop event to the workers it forks, so they learn the
cluster is stopping from it rather than from the cluster status in the cache
(dispatcher.engine.pacing.qcluster_is_stopping).
The sentinel runs django-q2's scheduler about every 30 s; here it runs on the
database's clock, so a host whose clock is off cannot move the schedule that starts
dispatch windows away from everyone else's (dispatcher.schedule), and then starts a
dispatch window if the one that paced was lost with its qcluster
(dispatcher.engine.pacing.dispatch_window_revive).
This app is listed before django_q, so this command is the one `qcluster` runs.
"""

from __future__ import annotations

import logging
import signal
import threading

from django_q import cluster
from django_q.conf import Conf
from django_q.management.commands.qcluster import Command as DjangoQCommand

from callbacks.schedule import callbacks_cluster_starting
from callbacks.tasks import cluster_stopping_check_set
from dispatcher.engine.pacing import dispatch_window_revive, qcluster_is_stopping, qcluster_stop_event_share
from dispatcher.schedule import scheduler_pass_on_database_clock

logger = logging.getLogger(__name__)


class GracefulSentinel(cluster.Sentinel):
    def start(self) -> None:
        signal.signal(signal.SIGTERM, self._request_stop)
        qcluster_stop_event_share(self.stop_event)  # before super().start() forks the workers
        super().start()

    def _request_stop(self, signum, frame) -> None:
        # Not stop_event.set() here: the handler runs in the thread that may be
        # inside stop_event.wait(), holding the event's (non-reentrant) lock.
        # Another thread sets it once that lock is free.
        threading.Thread(target=self.stop_event.set, daemon=True).start()


def sentinel_scheduler_pass(broker=None) -> None:
    """What the sentinel's guard loop calls about every 30 s: django-q2's scheduler on the
    database's clock; then, on the sending cluster, a new dispatch window if the one that
    paced was lost with its qcluster. Never raises: the guard loop keeps the workers alive."""
    scheduler_pass_on_database_clock(broker=broker)
    if Conf.CLUSTER_NAME != Conf.PREFIX:  # the callbacks cluster (ALT_CLUSTERS) sends nothing
        return
    try:
        dispatch_window_revive()
    except Exception as exc:
        logger.warning("scheduler: could not check that a dispatch window paces: %r", exc)


class Command(DjangoQCommand):
    def handle(self, *args, **options) -> None:
        cluster.Sentinel = GracefulSentinel
        cluster.scheduler = sentinel_scheduler_pass  # what the sentinel's guard loop calls
        cluster_stopping_check_set(qcluster_is_stopping)
        callbacks_cluster_starting()
        super().handle(*args, **options)
