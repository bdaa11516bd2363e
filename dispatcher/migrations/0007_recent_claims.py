from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("dispatcher", "0006_hot_tables_autovacuum"),
    ]

    operations = [
        migrations.AddField(
            model_name="dispatcherstate",
            name="recent_claims",
            field=models.JSONField(blank=True, default=list, editable=False),
        ),
    ]
