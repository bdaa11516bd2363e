"""Migration operations that take PostgreSQL's faster or finer path and still migrate SQLite.

Production runs on PostgreSQL; `make run` and the README's first steps run on SQLite. A table
setting such as autovacuum means nothing to SQLite, and CREATE INDEX CONCURRENTLY is
PostgreSQL's syntax, so these operations do the PostgreSQL thing there and the plain (or no)
thing elsewhere, while the migration state stays the same on every database.
"""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations


class PostgreSQLOnlySQL(migrations.RunSQL):
    """RunSQL applied on PostgreSQL only: settings (autovacuum and the like) other databases lack."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)


class AddIndexConcurrentlyOnPostgreSQL(AddIndexConcurrently):
    """CREATE INDEX CONCURRENTLY on PostgreSQL (writes go on while a long history is indexed);
    a plain CREATE INDEX elsewhere."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.add_index(model, self.index)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.remove_index(model, self.index)
