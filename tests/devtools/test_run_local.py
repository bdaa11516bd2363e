"""`make run` and its process runner (devtools/run_local.py): Ctrl-C in the terminal
stops the web server, qcluster and the fake provider cleanly, and make exits 0.

The make test is the real thing: `make run` in a pseudo-terminal (its own session,
so the terminal's Ctrl-C goes to its foreground process group exactly as in a
developer's shell), on a scratch SQLite state directory and free ports.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import suppress
from pathlib import Path

import pytest

from devtools.run_local import ProcfileEntry, read_procfile
from tests.processes import (
    REPO_ROOT,
    free_port,
    group_alive,
    make_command,
    make_run,
    make_run_env,
    make_run_ready,
    started_groups,
)

pytestmark = pytest.mark.process

STOP_BUDGET_SECONDS = 15
# The first tick after a fresh start can take 30 s more than the .env's 10 s interval (README).
SEND_BUDGET_SECONDS = 90
PORT_CHECK_BUDGET_SECONDS = 20


def write_earlier_env(env_file: Path, *, env: dict[str, str], web_port: int, provider_port: int) -> None:
    """The .env as an earlier `make run WEB_PORT=... PROVIDER_PORT=...` left it (the Makefile's own rule)."""
    done = subprocess.run(
        make_command(str(env_file), f"WEB_PORT={web_port}", f"PROVIDER_PORT={provider_port}", env_file=env_file),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def queue_message(web_port: int, token: str) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{web_port}/api/messages/",
        data=json.dumps({"recipient_phone_number": "+905551112233", "content": "hello from make run"}).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201


def provider_accepted(provider_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{provider_port}/_fake/stats", timeout=5) as response:
        return json.loads(response.read())["accepted"]


def test_make_run_sends_on_the_ports_given_over_an_earlier_env_and_ctrl_c_stops_it_cleanly(tmp_path):
    env_file = tmp_path / "local.env"
    write_earlier_env(env_file, env=make_run_env(tmp_path), web_port=free_port(), provider_port=free_port())
    web_port, provider_port = free_port(), free_port()

    with make_run(tmp_path, f"WEB_PORT={web_port}", f"PROVIDER_PORT={provider_port}", env_file=env_file) as terminal:
        make_run_ready(terminal)
        groups = started_groups(terminal.output)
        assert set(groups) == {"web", "worker", "provider", "callbacks"}, terminal.output
        # The banner names the ports in use; the provider's address is its live page.
        assert f"Provider:  http://127.0.0.1:{provider_port}/  (what it received, live" in terminal.output
        assert f"Admin:     http://127.0.0.1:{web_port}/admin/" in terminal.output
        with urllib.request.urlopen(f"http://127.0.0.1:{provider_port}/", timeout=5) as page:
            assert page.headers["Content-Type"].startswith("text/html")
        # The API token is in the banner too.
        token = re.search(r"API token: ([0-9a-f]{40})  \(Authorization: Token <key>\)", terminal.output)
        assert token, terminal.output

        # The worker sends to the provider on the port given, not to the one the earlier .env named.
        queue_message(web_port, token[1])
        deadline = time.monotonic() + SEND_BUDGET_SECONDS
        while provider_accepted(provider_port) < 1:
            assert time.monotonic() < deadline, f"nothing sent within {SEND_BUDGET_SECONDS} s:\n{terminal.output}"
            terminal.read(1)

        pressed = time.monotonic()
        terminal.press_ctrl_c()
        status = terminal.wait(STOP_BUDGET_SECONDS)
        took = time.monotonic() - pressed

        assert status == 0, f"make exited {status} after {took:.1f} s:\n{terminal.output}"
        assert "SIGKILL" not in terminal.output
        assert "Interrupt" not in terminal.output  # make's "*** [run] Interrupt"
        for name in ("web", "worker", "provider", "callbacks"):
            assert f"| {name} exited (rc=0)" in terminal.output, terminal.output
        assert "| all stopped" in terminal.output
        # The provider is told to stop only once the worker, which sends to it, has exited.
        output = terminal.output
        assert output.index("| worker exited (rc=0)") < output.index("sending SIGINT to provider"), output
        # Nothing of theirs is left: not qcluster's workers, not runserver's reloader child.
        assert [name for name, pgid in groups.items() if group_alive(pgid)] == []


def test_make_run_checks_the_env_files_ports_before_starting_anything_and_names_the_one_in_use(tmp_path):
    env_file = tmp_path / "local.env"
    web_port, provider_port = free_port(), free_port()
    write_earlier_env(env_file, env=make_run_env(tmp_path), web_port=web_port, provider_port=provider_port)

    with socket.socket() as taken:  # another program on the provider's port
        taken.bind(("127.0.0.1", provider_port))
        taken.listen()
        with make_run(tmp_path, env_file=env_file) as terminal:
            status = terminal.wait(PORT_CHECK_BUDGET_SECONDS)
            output = terminal.output

    assert status == 2, f"make run went on ({status}) with port {provider_port} taken:\n{output}"
    # The .env's port (none was given), named with the option that moves it; nothing was started.
    assert re.search(rf"port {provider_port} \(PROVIDER_PORT\) is in use .*: make run PROVIDER_PORT=\d+", output)
    assert "WEB_PORT" not in output
    assert "started (pid=" not in output and "migrate" not in output, output


# --- the runner on its own ------------------------------------------------------------------------


def write_procfile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "Procfile"
    path.write_text(text)
    return path


def run_runner(
    procfile: Path, *args: str, signal_after: float | None = None, signum: int = signal.SIGTERM
) -> tuple[int, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.run_local", str(procfile), *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        if signal_after is not None:
            time.sleep(signal_after)
            process.send_signal(signum)
        output, _ = process.communicate(timeout=30)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, output


SLEEPER = f"{sys.executable} -c 'import time; time.sleep(60)'"


def test_a_process_that_quits_stops_the_others_and_fails_the_run(tmp_path):
    procfile = write_procfile(tmp_path, f"sleeper: {SLEEPER}\nquitter: sh -c 'echo bye; exit 3'\n")

    returncode, output = run_runner(procfile)

    assert returncode == 1, output
    assert "quitter | bye" in output
    assert "quitter exited (rc=3)" in output
    assert "sending SIGTERM to sleeper" in output
    assert "stopped, not cleanly" in output


def test_sigterm_to_the_runner_stops_every_process_and_exits_0(tmp_path):
    procfile = write_procfile(tmp_path, f"one: {SLEEPER}\ntwo: {SLEEPER}\n")

    returncode, output = run_runner(procfile, signal_after=2)

    # The sleepers die of the SIGTERM passed on to them, which is not a clean exit of theirs.
    assert "SIGTERM received" in output
    assert output.index("sending SIGTERM to two") < output.index("sending SIGTERM to one")
    assert returncode == 1
    handles_it = (
        f"{sys.executable} -c 'import signal, sys, time; "
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); time.sleep(60)'"
    )
    returncode, output = run_runner(write_procfile(tmp_path, f"polite: {handles_it}\n"), signal_after=2)
    assert returncode == 0, output
    assert "polite exited (rc=0)" in output
    # The terminal closing (SIGHUP) stops them the same way.
    returncode, output = run_runner(
        write_procfile(tmp_path, f"polite: {handles_it}\n"), signal_after=2, signum=signal.SIGHUP
    )
    assert returncode == 0, output
    assert "SIGHUP received" in output and "sending SIGTERM to polite" in output


def stops_after(name: str, seconds: float) -> str:
    """A process that, told to stop, says so, takes `seconds` to finish its work, and exits 0."""
    script = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *args: ("
        f"print('{name} stopping', flush=True), time.sleep({seconds}), print('{name} done', flush=True), "
        "sys.exit(0))); time.sleep(60)"
    )
    return f"{sys.executable} -c {shlex.quote(script)}"


def test_processes_stop_in_the_reverse_of_the_procfile_order_each_after_the_one_before(tmp_path):
    # As Procfile.dev lists them: the provider before the worker that sends to it.
    procfile = write_procfile(
        tmp_path, f"provider: {stops_after('provider', 0)}\nworker: {stops_after('worker', 1.5)}\n"
    )

    returncode, output = run_runner(procfile, signal_after=2)

    assert returncode == 0, output
    # The worker finishes its work while the provider still answers; only then is the provider stopped.
    assert output.index("| worker done") < output.index("sending SIGTERM to provider"), output
    assert output.index("worker exited (rc=0)") < output.index("| provider stopping"), output
    assert "sending SIGTERM to worker\n" in output


def test_a_process_that_ignores_the_stop_signal_is_killed_after_the_timeout(tmp_path):
    stubborn = (
        f"{sys.executable} -c 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'"
    )
    procfile = write_procfile(tmp_path, f"stubborn: {stubborn}\n")

    started = time.monotonic()
    returncode, output = run_runner(procfile, "--stop-timeout", "1", signal_after=2)

    assert time.monotonic() - started < 15
    assert "still running after 1 s" in output
    assert "sending SIGKILL to stubborn" in output
    assert returncode == 1


def test_procfile_dev_names_the_three_processes():
    entries = read_procfile(REPO_ROOT / "Procfile.dev")

    # Stopped in the reverse order: the worker first, while the provider it sends to still answers.
    assert [entry.name for entry in entries] == ["web", "provider", "worker", "callbacks"]
    assert entries[2] == ProcfileEntry(name="worker", command="python manage.py qcluster")


def test_a_malformed_procfile_line_is_named(tmp_path):
    with pytest.raises(SystemExit, match=r"Procfile, line 2: expected 'name: command'"):
        read_procfile(write_procfile(tmp_path, "web: true\njust words\n"))
