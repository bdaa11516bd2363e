# The audit log moved here from the dispatcher app. Its table already exists
# (dispatcher 0002 created it), so this only tells Django's state that the model
# is now audit.ControlAction on the same table; rows written before stay put.
# The content type is renamed too, so permissions granted on the old
# dispatcher.view_controlaction carry over as audit.view_controlaction.

import django.core.serializers.json
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def rename_content_type(apps, schema_editor, old="dispatcher", new="audit"):
    ContentType = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    if not ContentType.objects.using(db).filter(app_label=new, model="controlaction").exists():
        ContentType.objects.using(db).filter(app_label=old, model="controlaction").update(app_label=new)


def restore_content_type(apps, schema_editor):
    rename_content_type(apps, schema_editor, old="audit", new="dispatcher")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("dispatcher", "0002_control_permission_and_audit_log"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="ControlAction",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("actor_label", models.CharField(help_text="The username at the time, or manage.py and the OS user for a command.", max_length=200)),
                        ("action", models.CharField(choices=[("start", "Start sending"), ("stop", "Stop sending"), ("configure", "Change the pace"), ("requeue", "Requeue messages"), ("requeue_all", "Requeue all failed")], max_length=16)),
                        ("via", models.CharField(choices=[("api", "REST API"), ("seed-api", "Seed-compatible API"), ("admin", "Admin"), ("command", "manage.py")], max_length=16)),
                        ("detail", models.JSONField(blank=True, default=dict, encoder=django.core.serializers.json.DjangoJSONEncoder)),
                        ("actor", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        "db_table": "dispatcher_controlaction",
                        "ordering": ["-created_at", "-id"],
                        "default_permissions": ("view",),
                        "indexes": [models.Index(fields=["-created_at", "-id"], name="control_action_recent")],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(rename_content_type, restore_content_type),
    ]
