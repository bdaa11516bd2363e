# State only: the ControlAction model (and its table, unchanged) now belongs to
# the audit app (audit 0001). Nothing in the database changes here.

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("dispatcher", "0002_control_permission_and_audit_log"),
        ("audit", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="ControlAction")],
            database_operations=[],
        ),
    ]
