#!/usr/bin/env python
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

# `make run` writes the local settings (DEBUG, SECRET_KEY, ...) here, so that
# `.venv/bin/python manage.py <command>` works without anything exported first.
DEFAULT_ENV_FILE = Path(__file__).resolve().parent / ".env"


# `${NAME}` in a value: NAME's value, from the environment or an earlier line.
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def read_env_file(path: Path, *, expand: bool = True) -> dict[str, str]:
    """KEY=VALUE lines, as `make run` and .env.example write them: blank lines and
    `#` comments skipped, an optional `export `, values optionally in quotes.

    With `expand`, `${NAME}` in a value (not in single quotes) becomes NAME's value,
    the environment's if it has one (it wins, as below), else an earlier line's:
    `make run`'s `WEBHOOK_URL=http://127.0.0.1:${PROVIDER_PORT}/` follows the port
    it is given. The same syntax as docker compose's .env."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name.isidentifier():
            raise SystemExit(f"{path}, line {number}: expected NAME=value, got {raw!r}")
        literal = len(value) >= 2 and value[0] == value[-1] == "'"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if expand and not literal:

            def resolve(match: re.Match, number: int = number) -> str:
                found = os.environ.get(match[1], values.get(match[1]))
                if found is None:
                    raise SystemExit(f"{path}, line {number}: {match[0]} is not set (in the environment or above)")
                return found

            value = _REFERENCE.sub(resolve, value)
        values[name] = value
    return values


def load_env_file() -> Path | None:
    """Load ENV_FILE (default: the .env beside this file) if it exists; ENV_FILE set
    but empty loads none. The real environment wins over the file. Return the file loaded."""
    configured = os.environ.get("ENV_FILE")
    if configured == "":
        return None
    path = Path(configured) if configured else DEFAULT_ENV_FILE
    if path.is_file():
        for name, value in read_env_file(path).items():
            os.environ.setdefault(name, value)
        return path
    if configured:
        raise SystemExit(f"ENV_FILE names {configured!r}, which is not a file")
    return None


def main() -> None:
    env_file = load_env_file()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messaging_site.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as error:
        # A setting start-up refused (runserver, qcluster, migrate, any command): one line,
        # not a traceback; `--traceback` still shows it.
        if "--traceback" in sys.argv:
            raise
        from messaging_site.env import CONFIGURATION_ERROR_EXIT_STATUS, configuration_error_line

        sys.stderr.write(configuration_error_line(error, env_file=env_file and env_file.name) + "\n")
        sys.exit(CONFIGURATION_ERROR_EXIT_STATUS)


if __name__ == "__main__":
    main()
