"""Upgrading past messages_app migration 0011: times stored before intake checked their
range (restapi/storable.py) are brought inside it, so that no row the database holds
makes a read fail. psycopg cannot load a time after the year 9999 or before the year 1
(in UTC): such a row answered 500 on every page that showed it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client

from dispatcher.engine.receipts import receipts_apply_waiting
from messages_app.models import DeliveryReceipt, Message
from tests.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("messages_app", "0010_receipt_id_unique_without_like_index")]
# What the receipts and import stored: the year 10000 and the year 0 in UTC.
YEAR_10000 = "9999-12-31T23:59:59-14:00"
YEAR_0 = "0001-01-01T00:00:00+14:00"
EARLIEST, LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)


def migrate(targets) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return MigrationExecutor(connection)


def store_raw(table: str, pk: int, **times: str) -> None:
    """Write times as text the database reads, as the intake of old did: Python cannot hold them."""
    assignments = ", ".join(f"{column} = %s::timestamptz" for column in times)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {assignments} WHERE id = %s", [*times.values(), pk])  # noqa: S608


def test_times_out_of_range_are_brought_inside_it_and_every_page_reads_again():
    executor = migrate(BEFORE)
    try:
        old_apps = executor.loader.project_state(BEFORE).apps
        OldMessage = old_apps.get_model("messages_app", "Message")
        OldReceipt = old_apps.get_model("messages_app", "DeliveryReceipt")
        waiting = OldMessage.objects.create(recipient_phone_number="+905551112233", content="imported")
        expired = OldMessage.objects.create(recipient_phone_number="+905551112234", content="zero time")
        delivered = OldMessage.objects.create(
            recipient_phone_number="+905551112235", content="sent", status="sent", provider_message_id="p-1"
        )
        fine = OldMessage.objects.create(
            recipient_phone_number="+905551112236", content="fine", send_after=datetime(2030, 1, 1, tzinfo=UTC)
        )
        receipt = OldReceipt.objects.create(
            receipt_id="r-1", provider_message_id="p-unknown", status="delivered", occurred_at=EARLIEST
        )
        store_raw(Message._meta.db_table, waiting.pk, send_after=YEAR_10000, next_attempt_at=YEAR_10000)
        store_raw(Message._meta.db_table, expired.pk, expires_at=YEAR_0)
        store_raw(Message._meta.db_table, delivered.pk, delivery_status_at=YEAR_10000)
        store_raw(DeliveryReceipt._meta.db_table, receipt.pk, occurred_at=YEAR_0)
    finally:
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    rows = {m.pk: m for m in Message.objects.all()}
    assert (rows[waiting.pk].send_after, rows[waiting.pk].next_attempt_at) == (LATEST, LATEST)
    assert rows[expired.pk].expires_at == EARLIEST
    assert rows[delivered.pk].delivery_status_at == LATEST
    assert rows[fine.pk].send_after == datetime(2030, 1, 1, tzinfo=UTC)  # in range: untouched
    assert DeliveryReceipt.objects.get().occurred_at == EARLIEST
    root = Client()
    root.force_login(make_user(username="root", superuser=True))
    for pk in rows:
        assert root.get(f"/api/messages/{pk}/").status_code == 200
        assert root.get(f"/admin/messages_app/message/{pk}/change/").status_code == 200
    assert root.get("/api/messages/").status_code == 200
    assert root.get("/messages").status_code == 200
    assert root.get("/admin/messages_app/message/").status_code == 200
    assert root.get("/admin/dashboard/", follow=True).status_code == 200
    assert receipts_apply_waiting() == 0  # the window's upkeep reads the waiting receipts again
