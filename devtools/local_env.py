"""`make run`'s local .env and the two ports it serves on.

    python -m devtools.local_env create .env   # the Makefile's .env rule: written once
    python -m devtools.local_env ports .env    # `make run`, before anything starts

The ports are WEB_PORT (runserver) and PROVIDER_PORT (the fake provider). One
given to make (`make run WEB_PORT=8001 PROVIDER_PORT=8082`, or exported) wins,
and is stored in the .env: the next `make run` without it, and every
`manage.py` command run by hand, use it too. Not given, the .env's is used
(else the default). The .env's WEBHOOK_URL names `${PROVIDER_PORT}` (manage.py
expands it), so the worker always posts to the port the fake provider listens
on; an .env written before the ports were stored, whose WEBHOOK_URL names the
port itself, is moved to that form.

Both ports are checked before anything starts: one in use (another program, an
earlier `make run` still running) stops `make run` with one line naming it and
the option that moves it, e.g. `make run WEB_PORT=8001`.

Standard library only (and manage.py's reader of the .env): the .env rule runs it
before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import socket
import sys
from pathlib import Path

from manage import read_env_file

DEFAULT_PORTS = {"WEB_PORT": 8000, "PROVIDER_PORT": 8081}
LOCAL_WEBHOOK_URL = "http://127.0.0.1:${PROVIDER_PORT}/"
# What the Makefile wrote before the ports were stored: the provider's port itself.
_OLD_LOCAL_WEBHOOK_URL = re.compile(r"http://127\.0\.0\.1:(?P<port>\d+)/")


class LocalEnvError(Exception):
    """Said in one line to whoever ran `make run`."""


def port_number(name: str, raw: str) -> int:
    value = raw.strip()
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= 65535:
        raise LocalEnvError(f"{name} must be a port number (1 to 65535), got {raw!r}")
    return int(value)


def _given_ports(environ: dict[str, str]) -> dict[str, int]:
    return {name: port_number(name, environ[name]) for name in DEFAULT_PORTS if environ.get(name, "").strip()}


def env_file_create(*, path: Path, environ: dict[str, str]) -> None:
    """Write a new .env with fresh local secrets and the ports (given, else the defaults)."""
    ports = {**DEFAULT_PORTS, **_given_ports(environ)}
    receipt_key = base64.b64encode(secrets.token_bytes(32)).decode()
    # Its own key for replies (STOP...), as production has: the fake provider signs them with it.
    inbound_key = base64.b64encode(secrets.token_bytes(32)).decode()
    lines = [
        "# Written by 'make run' for local use only; never commit it.",
        "DEBUG=true",
        f"SECRET_KEY={secrets.token_urlsafe(50)}",
        f"DJANGO_SUPERUSER_PASSWORD={secrets.token_urlsafe(12)}",
        "# Where `make run` serves; `make run WEB_PORT=8001 PROVIDER_PORT=8082` changes them here.",
        f"WEB_PORT={ports['WEB_PORT']}",
        f"PROVIDER_PORT={ports['PROVIDER_PORT']}",
        f"WEBHOOK_URL={LOCAL_WEBHOOK_URL}",
        "DISPATCH_BATCH_SIZE=2",
        "DISPATCH_INTERVAL_SECONDS=10",
        "QCLUSTER_WORKERS=2",
        f"RECEIPT_WEBHOOK_SECRET=whsec_{receipt_key}",
        f"INBOUND_WEBHOOK_SECRET=whsec_{inbound_key}",
        "# Status callbacks may go to a receiver on this machine (README, Status callbacks).",
        "CALLBACK_ALLOWED_NETWORKS=127.0.0.1",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _line_of(lines: list[str], name: str) -> int | None:
    """The index of the line that sets `name` (the last one: it is the one that counts)."""
    assignment = re.compile(rf"\s*(?:export\s+)?{name}\s*=.*")
    found = [index for index, line in enumerate(lines) if assignment.fullmatch(line)]
    return found[-1] if found else None


def ports_resolve(*, path: Path, environ: dict[str, str]) -> tuple[dict[str, int], list[str]]:
    """The ports to serve on, and the .env's lines with them stored (the same lines if nothing is to store)."""
    values = read_env_file(path, expand=False)
    lines = path.read_text(encoding="utf-8").splitlines()
    stored = {name: port_number(name, values[name]) for name in DEFAULT_PORTS if name in values}
    old_url = _OLD_LOCAL_WEBHOOK_URL.fullmatch(values.get("WEBHOOK_URL", ""))
    if old_url and "PROVIDER_PORT" not in stored:
        # Written before the ports were stored: the URL named the provider's port.
        stored["PROVIDER_PORT"] = port_number("PROVIDER_PORT", old_url["port"])
        lines[_line_of(lines, "WEBHOOK_URL")] = f"WEBHOOK_URL={LOCAL_WEBHOOK_URL}"
    ports = {**DEFAULT_PORTS, **stored, **_given_ports(environ)}
    for name, port in ports.items():
        index = _line_of(lines, name)
        if index is not None:
            lines[index] = f"{name}={port}"
            continue
        # Above the WEBHOOK_URL that names it: manage.py expands from the lines above.
        url_at = _line_of(lines, "WEBHOOK_URL")
        lines.insert(len(lines) if url_at is None else url_at, f"{name}={port}")
    return ports, lines


def port_in_use(port: int) -> bool:
    """Whether a server could not listen on 127.0.0.1:port, as runserver and the fake
    provider do (SO_REUSEADDR: a port whose last connections linger is free to them)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _free_port_near(port: int, *, taken: set[int]) -> int:
    for candidate in range(port + 1, min(port + 100, 65536)):
        if candidate not in taken and not port_in_use(candidate):
            return candidate
    with socket.socket() as sock:  # none near it: any the system has free
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ports_check(ports: dict[str, int]) -> None:
    """Raise, naming each port in use and the option that moves it, if any is."""
    if len(set(ports.values())) < len(ports):
        raise LocalEnvError(
            f"WEB_PORT and PROVIDER_PORT are both {ports['WEB_PORT']}: make run PROVIDER_PORT=<another>"
        )
    busy = {name: port for name, port in ports.items() if port_in_use(port)}
    if not busy:
        return
    taken = set(ports.values())
    moves = []
    for name, port in busy.items():
        free = _free_port_near(port, taken=taken)
        taken.add(free)
        moves.append(f"{name}={free}")
    named = " and ".join(f"port {port} ({name})" for name, port in busy.items())
    raise LocalEnvError(
        f"{named} {'is' if len(busy) == 1 else 'are'} in use (another program, or a `make run` still running): "
        f"stop it, or serve elsewhere: make run {' '.join(moves)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.local_env", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["create", "ports"], help="create: write a new .env; ports: see above.")
    parser.add_argument("path", type=Path, help="The .env file (the Makefile's ENV_FILE).")
    args = parser.parse_args(argv)
    environ = dict(os.environ)
    try:
        if args.action == "create":
            env_file_create(path=args.path, environ=environ)
            sys.stdout.write(f"Wrote {args.path} with fresh local secrets.\n")
            return 0
        before = args.path.read_text(encoding="utf-8").splitlines()
        ports, lines = ports_resolve(path=args.path, environ=environ)
        ports_check(ports)
    except LocalEnvError as exc:
        sys.stderr.write(f"make run: {exc}\n")
        return 2
    if lines != before:
        args.path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        sys.stdout.write(
            f"Stored WEB_PORT={ports['WEB_PORT']} PROVIDER_PORT={ports['PROVIDER_PORT']} in {args.path}.\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
