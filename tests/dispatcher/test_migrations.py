"""Upgrading past dispatcher migration 0005: staff users keep what staff status
used to let them do through the API, now as permissions (the release note is in
the migration and the README)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from dispatcher.permissions import CONTROL_DISPATCHER
from messages_app.permissions import CANCEL_MESSAGE, REQUEUE_MESSAGE

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("dispatcher", "0004_behind_since")]
AFTER = [("dispatcher", "0005_grant_operator_permissions_to_staff")]


def migrate(targets) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return MigrationExecutor(connection)


def test_active_staff_users_who_are_not_superusers_are_granted_the_operator_permissions():
    executor = migrate(BEFORE)
    try:
        OldUser = executor.loader.project_state(BEFORE).apps.get_model("auth", "User")
        for username, fields in {
            "staff": {"is_staff": True},
            "former-staff": {"is_staff": True, "is_active": False},
            "client": {},
            "root": {"is_staff": True, "is_superuser": True},
        }.items():
            OldUser.objects.create(username=username, **fields)
        migrate(AFTER)
    finally:
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    granted = {
        user.username: {f"{p.content_type.app_label}.{p.codename}" for p in user.user_permissions.all()}
        for user in get_user_model().objects.prefetch_related("user_permissions__content_type")
    }
    assert granted == {
        "staff": {CONTROL_DISPATCHER, REQUEUE_MESSAGE, CANCEL_MESSAGE},
        "former-staff": set(),
        "client": set(),
        "root": set(),  # a superuser holds every permission already
    }


def test_a_database_without_staff_users_migrates_and_gains_no_grants():
    migrate(BEFORE)
    try:
        migrate(AFTER)
    finally:
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
    assert not get_user_model().user_permissions.through.objects.exists()
