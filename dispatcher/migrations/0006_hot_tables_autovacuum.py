"""Autovacuum settings for the two tables every tick writes: the dispatcher's one state row
(updated by each tick: a dead version a tick, and every reader of the row walks the versions
not yet vacuumed) and django-q2's task queue (a row inserted and deleted per chunk). Neither
ever reaches PostgreSQL's default trigger of 20 % of a table dead soon enough to matter for
a table of one or a few rows, so they vacuum after a fixed count (docs/RELIABILITY.md)."""

from django.db import migrations

from messages_app.migration_operations import PostgreSQLOnlySQL

HOT = ("dispatcher_dispatcherstate", "django_q_ormq")
SETTINGS = {
    "autovacuum_vacuum_scale_factor": "0",
    "autovacuum_vacuum_threshold": "500",
    "autovacuum_analyze_scale_factor": "0",
    "autovacuum_analyze_threshold": "500",
    "autovacuum_vacuum_cost_delay": "0",
}


class Migration(migrations.Migration):
    dependencies = [
        ("dispatcher", "0005_grant_operator_permissions_to_staff"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [
        PostgreSQLOnlySQL(
            f"ALTER TABLE {table} SET ({', '.join(f'{name} = {value}' for name, value in SETTINGS.items())})",
            f"ALTER TABLE {table} RESET ({', '.join(SETTINGS)})",
        )
        for table in HOT
    ]
