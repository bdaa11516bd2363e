"""`make run`'s .env and ports (devtools/local_env.py), run as the Makefile runs it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.processes import REPO_ROOT, free_port

pytestmark = pytest.mark.process


def local_env(action: str, path: Path, **ports: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WEB_PORT", "PROVIDER_PORT")}
    return subprocess.run(
        [sys.executable, "-m", "devtools.local_env", action, str(path)],
        cwd=REPO_ROOT,
        env={**env, **ports},
        capture_output=True,
        text=True,
        timeout=30,
    )


def loaded(path: Path, name: str, **environ: str) -> str:
    """What manage.py sets `name` to from the .env at `path`."""
    env = {k: v for k, v in os.environ.items() if k not in ("WEB_PORT", "PROVIDER_PORT", "WEBHOOK_URL")}
    script = f"import os, manage; manage.load_env_file(); print(os.environ[{name!r}])"
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env={**env, **environ, "ENV_FILE": str(path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@contextmanager
def listening(port: int):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield


def test_a_new_env_file_names_the_ports_given_and_the_webhook_url_follows_the_provider_port(tmp_path):
    path = tmp_path / ".env"

    created = local_env("create", path, WEB_PORT="8101", PROVIDER_PORT="8102")

    assert created.returncode == 0, created.stderr
    text = path.read_text()
    assert "WEB_PORT=8101\nPROVIDER_PORT=8102\nWEBHOOK_URL=http://127.0.0.1:${PROVIDER_PORT}/\n" in text
    assert loaded(path, "WEBHOOK_URL") == "http://127.0.0.1:8102/"
    # A port given to a process (make run's command line, exported) wins over the file, in the URL too.
    assert loaded(path, "WEBHOOK_URL", PROVIDER_PORT="8200") == "http://127.0.0.1:8200/"
    assert local_env("create", tmp_path / "defaults.env").returncode == 0
    assert "WEB_PORT=8000\nPROVIDER_PORT=8081\n" in (tmp_path / "defaults.env").read_text()


def test_ports_given_to_make_run_are_stored_over_those_of_an_earlier_run(tmp_path):
    path = tmp_path / ".env"
    local_env("create", path, WEB_PORT=str(free_port()), PROVIDER_PORT=str(free_port()))
    web, provider = free_port(), free_port()

    settled = local_env("ports", path, WEB_PORT=str(web), PROVIDER_PORT=str(provider))

    assert settled.returncode == 0, settled.stderr
    assert settled.stdout == f"Stored WEB_PORT={web} PROVIDER_PORT={provider} in {path}.\n"
    assert f"WEB_PORT={web}\nPROVIDER_PORT={provider}\n" in path.read_text()
    assert loaded(path, "WEBHOOK_URL") == f"http://127.0.0.1:{provider}/"
    # None given: the stored ones are used, and the file is left as it is.
    before = path.read_text()
    again = local_env("ports", path)
    assert (again.returncode, again.stdout, path.read_text()) == (0, "", before)


def test_an_env_file_from_before_the_ports_were_stored_gets_them_from_its_webhook_url(tmp_path):
    path = tmp_path / ".env"
    old_provider = free_port()
    path.write_text(f"DEBUG=true\nSECRET_KEY=x\nWEBHOOK_URL=http://127.0.0.1:{old_provider}/\nQCLUSTER_WORKERS=2\n")
    web = free_port()

    settled = local_env("ports", path, WEB_PORT=str(web))

    assert settled.returncode == 0, settled.stderr
    assert path.read_text() == (
        f"DEBUG=true\nSECRET_KEY=x\nWEB_PORT={web}\nPROVIDER_PORT={old_provider}\n"
        "WEBHOOK_URL=http://127.0.0.1:${PROVIDER_PORT}/\nQCLUSTER_WORKERS=2\n"
    )
    new_provider = free_port()
    assert local_env("ports", path, PROVIDER_PORT=str(new_provider)).returncode == 0
    assert loaded(path, "WEBHOOK_URL") == f"http://127.0.0.1:{new_provider}/"


def test_a_port_in_use_is_named_with_the_option_that_moves_it_and_nothing_is_stored(tmp_path):
    path = tmp_path / ".env"
    web, provider = free_port(), free_port()
    local_env("create", path, WEB_PORT=str(web), PROVIDER_PORT=str(provider))
    before = path.read_text()

    with listening(web):
        one = local_env("ports", path)
        with listening(provider):
            both = local_env("ports", path)
        given = local_env("ports", path, WEB_PORT=str(web), PROVIDER_PORT=str(free_port()))

    assert one.returncode == 2
    [line] = one.stderr.splitlines()
    assert line.startswith(f"make run: port {web} (WEB_PORT) is in use (another program, or a `make run` still")
    suggested = re.fullmatch(r".*: stop it, or serve elsewhere: make run WEB_PORT=(\d+)", line)
    assert suggested, line
    assert int(suggested[1]) not in (web, provider)
    assert both.returncode == 2
    [line] = both.stderr.splitlines()
    assert f"port {web} (WEB_PORT) and port {provider} (PROVIDER_PORT) are in use" in line
    assert "serve elsewhere: make run WEB_PORT=" in line and " PROVIDER_PORT=" in line
    assert given.returncode == 2
    assert path.read_text() == before


def test_a_port_that_is_not_a_number_is_refused_in_one_line(tmp_path):
    path = tmp_path / ".env"
    local_env("create", path)

    refused = local_env("ports", path, WEB_PORT="80o1")

    assert refused.returncode == 2
    assert refused.stderr == "make run: WEB_PORT must be a port number (1 to 65535), got '80o1'\n"
