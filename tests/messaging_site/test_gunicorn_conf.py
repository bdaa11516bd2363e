"""gunicorn.conf.py, the deployed web server's configuration (the Dockerfile's command),
started for real.

gunicorn 27 opens a control socket (`gunicornc`: show, add or kill workers, reload, shut
down) at one path per user: a second gunicorn on the host took it over, and a command
meant for one reached the other (#20, item 15).
"""

from __future__ import annotations

import re

import pytest
from gunicorn.ctl.client import ControlClient

from tests.processes import production_gunicorn

pytestmark = [pytest.mark.process, pytest.mark.django_db(transaction=True)]

LISTENING = re.compile(r"Control socket listening at (\S+)")


@pytest.fixture
def one_user(tmp_path) -> dict[str, str]:
    """The environment of one OS user, as every gunicorn it starts sees it: a home of its own
    here (never the real ~/.gunicorn) and no XDG_RUNTIME_DIR, so gunicorn's default path is
    <home>/.gunicorn/gunicorn.ctl."""
    home = tmp_path / "home"
    home.mkdir()
    return {"HOME": str(home), "XDG_RUNTIME_DIR": ""}


def control_sockets(log: str) -> list[str]:
    return LISTENING.findall(log)


def test_two_gunicorns_of_one_user_do_not_share_a_control_socket(tmp_path, one_user):
    with (
        production_gunicorn(tmp_path, log_name="first.log", **one_user) as first,
        production_gunicorn(tmp_path, log_name="second.log", **one_user) as second,
    ):
        first_sockets, second_sockets = control_sockets(first.log()), control_sockets(second.log())

    assert not set(first_sockets) & set(second_sockets), (first_sockets, second_sockets)
    # The deployed configuration opens none: nobody uses it, and nothing is left to take over.
    assert first_sockets == second_sockets == []
    assert not (tmp_path / "home" / ".gunicorn").exists()


def test_web_control_socket_gives_each_gunicorn_a_socket_of_its_own(tmp_path, one_user):
    paths = {name: tmp_path / f"{name}.ctl" for name in ("first", "second")}
    with (
        production_gunicorn(
            tmp_path, log_name="first.log", WEB_CONTROL_SOCKET=str(paths["first"]), **one_user
        ) as first,
        production_gunicorn(
            tmp_path, log_name="second.log", WEB_CONTROL_SOCKET=str(paths["second"]), **one_user
        ) as second,
    ):
        for name, server in (("first", first), ("second", second)):
            with ControlClient(str(paths[name]), timeout=10) as client:
                assert client.send_command("show stats")["pid"] == server.popen.pid
        second.stop()
        # Stopping one leaves the other's socket, and it still answers for the first.
        with ControlClient(str(paths["first"]), timeout=10) as client:
            assert client.send_command("show stats")["pid"] == first.popen.pid
