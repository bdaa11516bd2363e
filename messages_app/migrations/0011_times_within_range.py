"""Release note (#20): times from outside are now taken only from 2000-01-01 to
2100-01-01 (UTC), with an offset of at most 14 hours (restapi/storable.py).

Before, a receipt or an import could store a time psycopg cannot read back (after
the year 9999 or before the year 1 once in UTC): every page showing its message
answered 500, and a waiting receipt's broke the dispatch window's upkeep. Such
times, and any other outside the range, are moved to its nearer end, which keeps
what they meant: a send_after of "never" still lies a lifetime ahead, an expiry
of "no time" has still passed, a receipt still orders before or after the others
as it did. Reversing this migration changes nothing back.
"""

from datetime import UTC, datetime

from django.db import migrations

# The range as this release takes it; written here, not imported, so that this
# migration does the same whatever the code becomes.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
# The columns that hold times from outside: the API's, the admin's and the import's
# send_after and expires_at (and the due time send_after sets), a receipt's time.
COLUMNS = {
    "Message": ("send_after", "next_attempt_at", "expires_at", "delivery_status_at"),
    "DeliveryReceipt": ("occurred_at",),
}


def bring_times_within_range(apps, schema_editor):
    alias = schema_editor.connection.alias
    for model_name, columns in COLUMNS.items():
        rows = apps.get_model("messages_app", model_name).objects.using(alias)
        for column in columns:
            # Compared and written by the database: Python could not hold these values.
            rows.filter(**{f"{column}__lt": EARLIEST}).update(**{column: EARLIEST})
            rows.filter(**{f"{column}__gt": LATEST}).update(**{column: LATEST})


class Migration(migrations.Migration):
    dependencies = [
        ("messages_app", "0010_receipt_id_unique_without_like_index"),
    ]

    operations = [migrations.RunPython(bring_times_within_range, migrations.RunPython.noop)]
