"""Release note (#14): staff status no longer lets an API user start, stop or pace
the dispatcher, requeue or cancel messages; only the permissions do, as in the admin.

So that nobody who could do these before loses them on upgrade, every active
staff user who is not a superuser (superusers hold every permission) is given
`dispatcher.control_dispatcher`, `messages_app.requeue_message` and
`messages_app.cancel_message` directly.
Take them away in the admin (Users) from whoever should not have them.
Reversing this migration removes nothing: it cannot tell these grants from
ones made by hand.
"""

from django.conf import settings
from django.contrib.auth.management import create_permissions
from django.db import migrations

GRANTED = [
    ("dispatcher", "dispatcherstate", "control_dispatcher"),
    ("messages_app", "message", "requeue_message"),
    ("messages_app", "message", "cancel_message"),
]


def grant_to_staff(apps, schema_editor):
    app_label, model_name = settings.AUTH_USER_MODEL.split(".")
    User = apps.get_model(app_label, model_name)
    staff = list(User.objects.filter(is_staff=True, is_superuser=False, is_active=True))
    if not staff:
        return
    # On an upgrade the permissions exist already (made after an earlier migrate);
    # in one migrate run from scratch they are only made at its end, so make them here.
    for label in {label for label, _, _ in GRANTED}:
        app_config = apps.get_app_config(label)
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Permission = apps.get_model("auth", "Permission")
    permissions = [
        Permission.objects.get(content_type__app_label=label, content_type__model=model, codename=codename)
        for label, model, codename in GRANTED
    ]
    for user in staff:
        user.user_permissions.add(*permissions)


class Migration(migrations.Migration):
    dependencies = [
        ("dispatcher", "0004_behind_since"),
        ("messages_app", "0007_providers"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("auth", "0012_alter_user_first_name_max_length"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [migrations.RunPython(grant_to_staff, migrations.RunPython.noop)]
