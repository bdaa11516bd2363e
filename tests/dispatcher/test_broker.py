"""The qclusters' broker: django-q2's ORM queue, taken with SKIP LOCKED on the database's clock."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.models import OrmQ

from dispatcher.broker import SkipLockedORM


@pytest.mark.django_db
def test_the_cluster_uses_the_skip_locked_broker():
    assert isinstance(get_broker(), SkipLockedORM)


@pytest.mark.django_db
def test_a_task_is_handed_out_once_until_its_lock_runs_out():
    broker = SkipLockedORM(list_key="tests")
    first, second = broker.enqueue("payload-1"), broker.enqueue("payload-2")
    assert broker.dequeue() == [(first, "payload-1")]
    assert broker.dequeue() == [(second, "payload-2")]
    assert broker.dequeue() is None  # both locked for Conf.RETRY seconds
    locked_until = OrmQ.objects.get(pk=first).lock
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement_timestamp()")
        (now,) = cursor.fetchone()
    assert abs((locked_until - now) - timedelta(seconds=Conf.RETRY)) < timedelta(seconds=5)
    OrmQ.objects.filter(pk=first).update(lock=timezone.now() - timedelta(seconds=1))  # its worker died
    assert broker.dequeue() == [(first, "payload-1")]
    broker.acknowledge(second)
    assert not OrmQ.objects.filter(pk=second).exists()


@pytest.mark.django_db
def test_a_task_is_free_by_the_database_clock_not_the_enqueuers(monkeypatch):
    with monkeypatch.context() as fast_host:
        fast_host.setattr(timezone, "now", lambda: timezone.datetime.now(timezone.UTC) + timedelta(minutes=10))
        task = SkipLockedORM(list_key="tests").enqueue("from a fast host")
    # Taken at once by a host with the right time (django-q2's own broker held it back ten minutes).
    assert SkipLockedORM(list_key="tests").dequeue() == [(task, "from a fast host")]
    # A fast host's dequeue locks it by the database's clock too: no one may take it for Conf.RETRY.
    assert SkipLockedORM(list_key="tests").dequeue() is None


@pytest.mark.django_db(transaction=True)
def test_concurrent_pushers_take_different_tasks():
    enqueued = {SkipLockedORM(list_key="tests").enqueue(f"p{i}") for i in range(60)}
    taken: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def pusher() -> None:
        broker = SkipLockedORM(list_key="tests")
        start.wait()
        try:
            while tasks := broker.dequeue():
                with lock:
                    taken.extend(task_id for task_id, _ in tasks)
        finally:
            connection.close()

    threads = [threading.Thread(target=pusher) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(taken) == sorted(enqueued)  # every task once, none twice
