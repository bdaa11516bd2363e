"""A setting start-up refuses stops every entry point with one line and status 2, not a
traceback: manage.py's commands (runserver, qcluster, migrate) and gunicorn as the
Dockerfile runs it. Each in a fresh process with an environment built from scratch.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.processes import REPO_ROOT, free_port, gunicorn_command

pytestmark = pytest.mark.process

MISTAKES = {
    "a number that is not one": (
        {"DISPATCH_BATCH_SIZE": "abc"},
        "Configuration error: DISPATCH_BATCH_SIZE must be an integer, got 'abc' (set it in the environment",
    ),
    "a Twilio provider without its SID": (
        {
            "PROVIDERS": "backup",
            "PROVIDER_BACKUP_BACKEND": "twilio",
            "PROVIDER_BACKUP_AUTH_TOKEN": "token",
            "PROVIDER_BACKUP_FROM": "+15005550006",
        },
        "Configuration error: provider 'backup': PROVIDER_BACKUP_ACCOUNT_SID is required for the twilio backend",
    ),
}


def scratch_env(tmp_path, **overrides: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "DEBUG": "true",
        "SECRET_KEY": "local-only-key",
        "LOCAL_STATE_DIR": str(tmp_path / "state"),
        "ENV_FILE": "",  # not a developer's local .env
        **overrides,
    }


def assert_one_line_and_status_2(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(expected), line
    assert line.endswith("; README, Configuration)"), line
    assert result.stdout == ""


@pytest.mark.parametrize("mistake", MISTAKES)
@pytest.mark.parametrize("command", [["runserver", "127.0.0.1:0"], ["qcluster"], ["migrate", "--no-input"]])
def test_a_command_refused_by_the_settings_says_why_in_one_line(tmp_path, command, mistake):
    variables, expected = MISTAKES[mistake]

    result = subprocess.run(
        [sys.executable, "manage.py", *command],
        cwd=REPO_ROOT,
        env=scratch_env(tmp_path, **variables),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert_one_line_and_status_2(result, expected)


def test_the_one_line_names_the_env_file_manage_py_read(tmp_path):
    env_file = tmp_path / "local.env"
    env_file.write_text("DEBUG=true\nSECRET_KEY=local-only-key\nDISPATCH_BATCH_SIZE=0\n")

    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=REPO_ROOT,
        env={**scratch_env(tmp_path), "ENV_FILE": str(env_file)},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert_one_line_and_status_2(
        result,
        "Configuration error: DISPATCH_BATCH_SIZE must be at least 1, got 0 (set it in the environment or local.env;",
    )
    # --traceback still shows where it came from.
    traced = subprocess.run(
        [sys.executable, "manage.py", "check", "--traceback"],
        cwd=REPO_ROOT,
        env={**scratch_env(tmp_path), "ENV_FILE": str(env_file)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" in traced.stderr


@pytest.mark.parametrize("mistake", MISTAKES)
def test_gunicorn_refused_by_the_settings_says_why_in_one_line_before_any_worker_starts(tmp_path, mistake):
    variables, expected = MISTAKES[mistake]

    result = subprocess.run(
        gunicorn_command(free_port()),
        cwd=REPO_ROOT,
        env=scratch_env(tmp_path, WEB_WORKERS="1", **variables),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert_one_line_and_status_2(result, expected)
