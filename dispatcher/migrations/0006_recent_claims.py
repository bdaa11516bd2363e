from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("dispatcher", "0005_grant_operator_permissions_to_staff"),
    ]

    operations = [
        migrations.AddField(
            model_name="dispatcherstate",
            name="recent_claims",
            field=models.JSONField(blank=True, default=list, editable=False),
        ),
    ]
