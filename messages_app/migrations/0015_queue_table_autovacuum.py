"""Autovacuum settings that fit a queue table (docs/RELIABILITY.md, "A table that stays healthy").

PostgreSQL's defaults vacuum a table once a fifth of it is dead (autovacuum_vacuum_scale_factor
0.2): for a messages table of 10 million rows that is 2 million dead row versions before
anything is cleaned, and every message leaves several (unsent -> processing -> sent is three
versions, each in every index the update touches). The claim reads the due queue, whose
index entries for rows already sent stay until a vacuum removes them. So vacuum by a
fixed count instead of a fraction: after 10,000 dead rows plus 1 % of the table, without
cost-based sleeping longer than 1 ms, and analyze as often, so the planner's picture of the
small due queue stays current. The attempts and receipts tables only grow (and shrink when
retention deletes): vacuum them after inserts too (autovacuum_vacuum_insert_*) so their
visibility map, which index-only scans read, keeps up.
"""

from django.db import migrations

from messages_app.migration_operations import PostgreSQLOnlySQL

MESSAGES = "messages_app_message"
APPEND_MOSTLY = ("messages_app_deliveryattempt", "messages_app_deliveryreceipt")

QUEUE_SETTINGS = {
    "autovacuum_vacuum_scale_factor": "0.01",
    "autovacuum_vacuum_threshold": "10000",
    "autovacuum_vacuum_insert_scale_factor": "0.01",
    "autovacuum_vacuum_insert_threshold": "10000",
    "autovacuum_analyze_scale_factor": "0.01",
    "autovacuum_analyze_threshold": "10000",
    "autovacuum_vacuum_cost_delay": "1",
}
APPEND_SETTINGS = {
    "autovacuum_vacuum_scale_factor": "0.02",
    "autovacuum_vacuum_insert_scale_factor": "0.02",
    "autovacuum_vacuum_insert_threshold": "10000",
    "autovacuum_analyze_scale_factor": "0.02",
}


def _set(table: str, settings: dict[str, str]) -> str:
    return f"ALTER TABLE {table} SET ({', '.join(f'{name} = {value}' for name, value in settings.items())})"


def _reset(table: str, settings: dict[str, str]) -> str:
    return f"ALTER TABLE {table} RESET ({', '.join(settings)})"


class Migration(migrations.Migration):
    dependencies = [
        ("messages_app", "0014_message_final_created"),
    ]

    operations = [
        PostgreSQLOnlySQL(_set(MESSAGES, QUEUE_SETTINGS), _reset(MESSAGES, QUEUE_SETTINGS)),
        *(PostgreSQLOnlySQL(_set(table, APPEND_SETTINGS), _reset(table, APPEND_SETTINGS)) for table in APPEND_MOSTLY),
    ]
