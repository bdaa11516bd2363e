"""django-q2's ORM broker, taking tasks with PostgreSQL's row locks (`broker_class`).

The stock ORM broker reads the first free task and then tries to lock it with an
UPDATE guarded by the lock value it read: every qcluster's pusher reads the same
first task, one wins, and the others come back empty-handed and read again at
once. With four qclusters most dequeues were lost races, each costing the pusher
and PostgreSQL a read, an update and a connection health check. And it stamps a
task's lock with the pusher's own clock, so a host whose clock runs ahead took
tasks that another qcluster was still running (docs/RELIABILITY.md).

Here a dequeue is one statement: `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE
SKIP LOCKED) RETURNING`, so concurrent pushers take different tasks and none
waits or loses, and lock times come from the database's clock. The rest (acks,
queue sizes, purging) is django-q2's. On SQLite, which has neither SKIP LOCKED
nor several hosts, the stock broker runs unchanged.

An enqueue also NOTIFYs `TASKS_CHANNEL`, and a pusher that found the queue empty
waits on LISTEN for it (up to django-q2's poll) instead of sleeping the poll out:
a chunk handed out reaches a worker in milliseconds rather than up to 0.2 s later,
which is most of a lone message's way to the provider.
"""

from __future__ import annotations

import os
from time import sleep

from django.db import connections
from django.db.models.functions import Now
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.models import OrmQ

from dispatcher.engine.listening import NotificationListener, open_listener

TASKS_CHANNEL = "dispatcher_tasks"


class SkipLockedORM(ORM):
    def _postgresql(self) -> bool:
        return connections[Conf.ORM].vendor == "postgresql"

    def enqueue(self, task) -> int:
        if not self._postgresql():
            return super().enqueue(task)
        # Free from now by the database's clock (a fast host's clock would delay it).
        package = OrmQ.objects.using(Conf.ORM).create(key=self.list_key or Conf.CLUSTER_NAME, payload=task, lock=Now())
        with connections[Conf.ORM].cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [TASKS_CHANNEL])
        return package.pk

    _listener: NotificationListener | None = None
    _listener_pid: int | None = None

    def _wait_for_a_task(self) -> None:
        """Wait up to django-q2's poll for an enqueue's NOTIFY (the pusher's own
        connection, opened in the pusher process); sleep the poll where it cannot listen."""
        if self._listener_pid != os.getpid():  # forked: the parent's connection is not ours
            self._listener, self._listener_pid = open_listener(TASKS_CHANNEL, using=Conf.ORM), os.getpid()
        if self._listener is None:
            sleep(Conf.POLL)
            return
        try:
            self._listener.wait(Conf.POLL)
        except Exception:
            self._listener.close()
            self._listener_pid = None  # opened again at the next empty poll
            sleep(Conf.POLL)

    def dequeue(self):
        if not self._postgresql():
            return super().dequeue()
        self.get_connection()  # django-q2's: drops a stale connection (a restarted server) outside a transaction
        table = OrmQ._meta.db_table
        with connections[Conf.ORM].cursor() as cursor:
            cursor.execute(
                f"""
                UPDATE {table} SET lock = statement_timestamp() + make_interval(secs => %s)
                 WHERE id IN (
                       SELECT id FROM {table}
                        WHERE key = %s AND lock < statement_timestamp()
                        ORDER BY id
                        LIMIT %s
                          FOR UPDATE SKIP LOCKED)
                RETURNING id, payload
                """,  # noqa: S608 - the table name is django-q2's; every value is a parameter
                [Conf.RETRY, self.list_key, Conf.BULK],
            )
            tasks = cursor.fetchall()
        if tasks:
            return sorted(tasks)
        self._wait_for_a_task()  # an empty queue: spare the CPU, as the stock broker does
        return None
