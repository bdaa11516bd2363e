"""The outbox on SQLite (`make run`'s database: the portable path) writes the events its
one statement writes on PostgreSQL, for the same history of changes
(tests/callbacks/outbox_scenario.py), run in a `manage.py shell` on a fresh SQLite file."""

from __future__ import annotations

import json
import os
import secrets

import pytest

from tests.callbacks.outbox_scenario import outbox_scenario
from tests.processes import manage

pytestmark = [pytest.mark.process, pytest.mark.django_db]

SCENARIO = (
    "import json; from tests.callbacks.outbox_scenario import outbox_scenario; "
    "print('EVENTS ' + json.dumps(outbox_scenario()))"
)


def sqlite_env(tmp_path) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DATABASE_", "REDIS_")) and name not in ("DJANGO_SETTINGS_MODULE", "SECRET_KEY")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="messaging_site.settings",
        LOCAL_STATE_DIR=str(tmp_path / "state"),
        DEBUG="true",
        SECRET_KEY=secrets.token_urlsafe(50),
        CALLBACK_ALLOW_HTTP="true",
        CALLBACK_ALLOWED_NETWORKS="127.0.0.1",
        LOG_LEVEL="WARNING",
        ENV_FILE="",
    )
    return env


def test_sqlite_writes_the_events_postgresql_does(tmp_path):
    on_postgresql = outbox_scenario()

    env = sqlite_env(tmp_path)
    migrated = manage(["migrate", "--no-input"], env=env, timeout=120)
    assert migrated.returncode == 0, migrated.stdout
    assert (tmp_path / "state" / "db.sqlite3").exists()
    ran = manage(["shell", "-c", SCENARIO], env=env, timeout=60)
    assert ran.returncode == 0, ran.stdout
    [line] = [line for line in ran.stdout.splitlines() if line.startswith("EVENTS ")]
    on_sqlite = json.loads(line.removeprefix("EVENTS "))

    assert on_sqlite == json.loads(json.dumps(on_postgresql))
    # Who got what, with which target and number (each row also checked field by field above).
    assert [(e[0], e[1], e[4], e[5].removeprefix("message."), e[10]) for e in on_postgresql] == [
        ("all", 0, "http://127.0.0.1:9/orders/0", "cancelled", 1),
        ("alice's", 0, "", "cancelled", 1),
        ("all", 1, "", "cancelled", 1),
        ("all", 2, "", "sent", 1),
        ("alice's", 2, "HTTP://127.0.0.1:10/y", "sent", 1),
        ("all", 3, "", "sent", 1),
        ("all", 4, "", "failed", 1),
        ("failures", 4, "", "failed", 1),
        ("all", 2, "", "delivered", 2),
        ("alice's", 2, "HTTP://127.0.0.1:10/y", "delivered", 2),
        ("all", 3, "", "undelivered", 2),
        ("failures", 3, "http://127.0.0.1/z", "undelivered", 2),
        ("all", 4, "", "cancelled", 2),
    ]
    assert {
        (e[0], e[1], e[8], len(e[9])) for e in on_postgresql if e[5] in ("message.failed", "message.undelivered")
    } == {
        ("all", 4, "", 500),
        ("failures", 4, "", 500),
        ("all", 3, "30003", 0),
        ("failures", 3, "30003", 0),
    }
