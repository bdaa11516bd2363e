"""Upgrading a database that already holds audit rows: the audit log moved from the
dispatcher app to its own (a state-only migration), and no row is lost."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from audit.models import ControlAction
from tests.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [
    ("dispatcher", "0002_control_permission_and_audit_log"),
    ("messages_app", "0004_requeue_permission"),
    ("audit", None),
]


def migrate(targets) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return MigrationExecutor(connection)


def test_migrating_forward_keeps_the_audit_rows_and_the_permission_grants():
    user = make_user(username="auditor")
    executor = migrate(BEFORE)
    try:
        old_apps = executor.loader.project_state([t for t in BEFORE if t[1]]).apps
        OldControlAction = old_apps.get_model("dispatcher", "ControlAction")
        OldPermission = old_apps.get_model("auth", "Permission")
        OldUser = old_apps.get_model("auth", "User")
        OldControlAction.objects.create(actor_label="manage.py (root)", action="stop", via="command", detail={"n": 1})
        OldControlAction.objects.create(actor_label="olga", action="start", via="api", detail={"changed": True})
        view_log = OldPermission.objects.get(content_type__app_label="dispatcher", codename="view_controlaction")
        OldUser.objects.get(pk=user.pk).user_permissions.add(view_log)
    finally:
        executor = migrate(executor.loader.graph.leaf_nodes())

    assert list(ControlAction.objects.order_by("id").values_list("actor_label", "action", "via", "detail")) == [
        ("manage.py (root)", "stop", "command", {"n": 1}),
        ("olga", "start", "api", {"changed": True}),
    ]
    assert ControlAction._meta.db_table == "dispatcher_controlaction"
    # The grant made on the old model still holds, now as the audit app's permission.
    assert Permission.objects.filter(codename="view_controlaction").count() == 1
    assert type(user).objects.get(pk=user.pk).has_perm("audit.view_controlaction")
