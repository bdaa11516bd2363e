"""The messages table stays cheap to work with whatever its history: the queries that run
all the time read partial indexes that hold only what they look for, and the hot tables
carry autovacuum settings that fit a queue (messages_app/0015, dispatcher/0006).

The plans are read with sequential scans turned off: on a test's few rows the planner
would rightly prefer one, so this checks that each query *can* use its index (the index's
condition is implied by the query's), not what it costs; `python -m bench history` measures that.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from dispatcher.engine.claiming import claimable
from messages_app.models import Message
from messages_app.services import messages_prune_batch
from tests.factories import make_message

pytestmark = pytest.mark.django_db


def plan_of(queryset, *, sorted_by_an_index: bool = False) -> str:
    sql, params = queryset.query.sql_with_params()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        if sorted_by_an_index:  # the order comes from an index, not from sorting what another found
            cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def reloptions(table: str) -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE oid = %s::regclass", [table])
        (options,) = cursor.fetchone()
    return dict(option.split("=", 1) for option in options or [])


def test_the_claim_reads_the_due_queue_index_only():
    make_message(status=Message.Status.SENT)
    make_message()

    plan = plan_of(claimable().filter(priority="normal").order_by("next_attempt_at", "id").values("id")[:100])

    assert "message_due_queue" in plan


def test_the_sent_list_reads_the_sent_index_newest_first():
    make_message(status=Message.Status.SENT)

    plan = plan_of(Message.objects.filter(status=Message.Status.SENT).order_by("-sent_at", "-id")[:50])

    assert "message_sent_recent" in plan


def test_retention_finds_the_oldest_final_messages_by_their_own_index():
    make_message(status=Message.Status.FAILED)
    cutoff = timezone.now() - timedelta(days=30)

    plan = plan_of(
        Message.objects.filter(created_at__lt=cutoff, status__in=["failed"]).order_by("created_at", "pk").values("pk"),
        sorted_by_an_index=True,
    )

    assert "message_final_created" in plan
    assert not messages_prune_batch(created_before=cutoff, statuses=["failed"], batch_size=10)


def test_the_queue_tables_vacuum_by_a_count_not_a_fifth_of_the_table():
    messages = reloptions("messages_app_message")
    assert float(messages["autovacuum_vacuum_scale_factor"]) <= 0.01
    assert int(messages["autovacuum_vacuum_threshold"]) == 10_000
    assert float(messages["autovacuum_analyze_scale_factor"]) <= 0.01
    for table in ("messages_app_deliveryattempt", "messages_app_deliveryreceipt"):
        assert "autovacuum_vacuum_insert_scale_factor" in reloptions(table)
    for table in ("dispatcher_dispatcherstate", "django_q_ormq"):
        hot = reloptions(table)
        assert hot["autovacuum_vacuum_scale_factor"] == "0" and int(hot["autovacuum_vacuum_threshold"]) <= 500
