"""The README's command lines work exactly as written, after `make run` wrote its `.env`.

Every `.venv/bin/python manage.py ...` line of the README's shell blocks is run as
is (with this test run's interpreter for `.venv/bin/python`), from a folder holding
a copy of manage.py and the `.env` that the Makefile's own rule writes, against a
scratch SQLite state directory: no variable exported by hand, as a newcomer runs them.
The two long-running servers (qcluster, fakeprovider) are run with `--help` appended.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.processes import REPO_ROOT, free_port, make_run, make_run_env, make_run_ready, newcomer_env

pytestmark = pytest.mark.process

LOCAL_PYTHON = ".venv/bin/python"
LONG_RUNNING = {"qcluster", "fakeprovider"}
README = REPO_ROOT / "README.md"


def shell_lines(markdown: str) -> list[str]:
    """The commands of the ```sh blocks: continuations and quotes over several lines joined, comments dropped."""
    lines = []
    for block in re.findall(r"^```sh\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            pending += line + "\n"
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # a quote still open: the command goes on
                continue
            pending = ""
            if words:
                lines.append(shlex.join(words))
        assert not pending, f"unterminated command in the README: {pending!r}"
    return lines


def readme_manage_lines() -> list[str]:
    return [line for line in shell_lines((REPO_ROOT / "README.md").read_text()) if "manage.py" in line]


def run(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )


def test_the_readme_runs_manage_py_through_the_virtualenv():
    lines = readme_manage_lines()

    assert len(lines) >= 15
    local = [shlex.split(line) for line in lines if not line.startswith("docker compose exec ")]
    # `.venv/bin/python manage.py ...`, alone or in `$(...)`: never another python.
    assert [
        shlex.join(words)
        for words in local
        if any(word == "manage.py" and not words[i - 1].endswith(LOCAL_PYTHON) for i, word in enumerate(words))
    ] == []


def readme_checkout(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder holding manage.py, the files the README's commands name (the sample CSV)
    and the .env the Makefile's own rule writes, migrated with the superuser, as `make run`
    leaves it before it starts the processes; and the environment to run commands in it."""
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    shutil.copy(REPO_ROOT / "manage.py", workdir / "manage.py")
    for line in readme_manage_lines():
        for word in shlex.split(line):
            if "/" in word and not word.startswith(".venv/") and (REPO_ROOT / word).is_file():
                (workdir / word).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO_ROOT / word, workdir / word)
    env = newcomer_env(tmp_path)
    # The .env exactly as `make run` writes it (the Makefile's own rule).
    made = run(["make", "--no-print-directory", "-f", str(REPO_ROOT / "Makefile"), ".env"], cwd=workdir, env=env)
    assert made.returncode == 0, made.stdout
    assert "DEBUG=true" in (workdir / ".env").read_text()
    # What `make run` does before it starts the processes.
    for setup in (["migrate", "--no-input"], ["ensure_superuser", "--username", "admin"]):
        done = run([sys.executable, "manage.py", *setup], cwd=workdir, env=env)
        assert done.returncode == 0, done.stdout
    return workdir, env


def test_every_readme_command_line_works_as_written_after_make_run(tmp_path):
    workdir, env = readme_checkout(tmp_path)

    ran = []
    for line in readme_manage_lines():
        words = shlex.split(line)
        if words[0] != LOCAL_PYTHON:
            continue  # docker compose exec ...: the container's environment
        assert words[1] == "manage.py", line
        args = [sys.executable, *words[1:]]
        if words[2] in LONG_RUNNING:
            args.append("--help")
        done = run(args, cwd=workdir, env=env)
        assert done.returncode == 0, f"{line}\n{done.stdout}"
        ran.append(line)

    assert len(ran) >= 15
    # The lines acted on the scratch database the .env names: the README's pace is stored.
    status = run([sys.executable, "manage.py", "dispatcher", "status"], cwd=workdir, env=env)
    assert re.search(r"^batch size: +10$", status.stdout, flags=re.MULTILINE), status.stdout
    assert re.search(r"^interval: +30 s$", status.stdout, flags=re.MULTILINE), status.stdout
    assert (tmp_path / "state" / "db.sqlite3").exists()


# --- manage.py's .env loader ------------------------------------------------------------------

PRINT_ENV = "import os, manage; manage.load_env_file(); print(os.environ.get('NAME_A'), os.environ.get('NAME_B'))"


def load_in_subprocess(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("ENV_FILE", "NAME_A", "NAME_B")}
    return run([sys.executable, "-c", PRINT_ENV], cwd=REPO_ROOT, env={**base, **env}, timeout=30)


def test_env_file_values_fill_in_what_the_environment_does_not_set(tmp_path):
    env_file = tmp_path / "local.env"
    env_file.write_text("# comment\n\nexport NAME_A='from file'\nNAME_B=\"b=c\"\n")

    assert load_in_subprocess(tmp_path, ENV_FILE=str(env_file)).stdout.split("\n")[0] == "from file b=c"
    assert load_in_subprocess(tmp_path, ENV_FILE=str(env_file), NAME_A="set").stdout.startswith("set b=c")


def test_an_empty_env_file_setting_loads_nothing_and_a_missing_file_is_an_error(tmp_path):
    assert load_in_subprocess(tmp_path, ENV_FILE="").stdout.strip() == "None None"

    missing = load_in_subprocess(tmp_path, ENV_FILE=str(tmp_path / "nope.env"))
    assert missing.returncode != 0
    assert "ENV_FILE names" in missing.stdout


def test_a_malformed_env_line_names_the_file_and_line(tmp_path):
    env_file = tmp_path / "bad.env"
    env_file.write_text("NAME_A=1\nnot an assignment\n")

    result = load_in_subprocess(tmp_path, ENV_FILE=str(env_file))

    assert result.returncode != 0
    assert f"{env_file}, line 2: expected NAME=value" in result.stdout


def test_a_value_names_another_variable_as_dollar_braces_the_environment_first(tmp_path):
    env_file = tmp_path / "local.env"
    env_file.write_text("NAME_A=8081\nNAME_B=http://127.0.0.1:${NAME_A}/\n")

    assert load_in_subprocess(tmp_path, ENV_FILE=str(env_file)).stdout.strip() == "8081 http://127.0.0.1:8081/"
    # A variable set in the environment wins over the file, in the values that name it too.
    given = load_in_subprocess(tmp_path, ENV_FILE=str(env_file), NAME_A="8082")
    assert given.stdout.strip() == "8082 http://127.0.0.1:8082/"
    # In single quotes it is kept as written.
    env_file.write_text("NAME_A=1\nNAME_B='${NAME_A}'\n")
    assert load_in_subprocess(tmp_path, ENV_FILE=str(env_file)).stdout.strip() == "1 ${NAME_A}"


def test_a_variable_named_before_it_is_set_is_an_error_naming_the_line(tmp_path):
    env_file = tmp_path / "local.env"
    env_file.write_text("NAME_B=http://127.0.0.1:${NAME_A}/\nNAME_A=8081\n")

    result = load_in_subprocess(tmp_path, ENV_FILE=str(env_file))

    assert result.returncode != 0
    assert result.stdout == f"{env_file}, line 1: ${{NAME_A}} is not set (in the environment or above)\n"


def test_drain_refuses_while_the_dispatcher_is_stopped_as_the_readme_says(tmp_path):
    workdir, env = readme_checkout(tmp_path)
    assert run([sys.executable, "manage.py", "dispatcher", "stop"], cwd=workdir, env=env).returncode == 0

    drain = run([sys.executable, "manage.py", "dispatcher", "drain", "--max-seconds", "5"], cwd=workdir, env=env)

    assert drain.returncode == 1
    said = drain.stdout.strip().removeprefix("CommandError: ")
    assert said == "The dispatcher is stopped; start it first."
    assert f'refuses while the dispatcher is stopped ("{said}"' in " ".join(README.read_text().split())


# --- make test: the browser first -------------------------------------------------------------


def test_the_readme_installs_chromium_before_it_runs_the_tests():
    lines = shell_lines(README.read_text())

    assert lines.index("make browser-deps") < lines.index("make test")


def test_make_test_without_chromium_stops_within_seconds_saying_what_to_run(tmp_path):
    venv = Path(sys.prefix)
    # --collect-only: were the check missing, the suite would not run from here either.
    env = {**os.environ, "CHROMIUM_PATH": str(tmp_path / "no-chromium"), "PYTEST_ADDOPTS": "--collect-only -q"}
    make_test = ["make", "--no-print-directory", "-o", f"{venv}/bin/.installed", "test", f"VENV={venv}"]

    started = time.monotonic()
    done = subprocess.run(make_test, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    took = time.monotonic() - started

    assert done.returncode != 0, done.stdout[-2000:]
    assert took < 10
    assert done.stderr.startswith(
        f"make test: Chromium not found at {tmp_path / 'no-chromium'}; the browser tests need it. "
        "Run 'make browser-deps' (or set CHROMIUM_PATH to a Chromium binary), then 'make test'.\n"
    ), done.stderr
    assert done.stdout == ""  # nothing else ran: no lint, no pytest


# --- what the README says of the tests ---------------------------------------------------------


def test_the_readme_names_only_tests_that_exist_and_no_xfail_test_the_suite_lacks():
    text = README.read_text()
    test_files = list((REPO_ROOT / "tests").rglob("test_*.py"))

    assert set(re.findall(r"\btest_\w+\.py\b", text)) - {path.name for path in test_files} == set()
    if "xfail" in text:  # a known gap "pinned by a test marked xfail" needs such a test
        assert any(re.search(r"^\s*@pytest\.mark\.xfail\b", path.read_text(), re.MULTILINE) for path in test_files)


# --- the API and delivery lifecycle examples, against `make run` ----------------------------------

# A shown output: `# {"k":v,...}` under a command (with `...` where it shortens), or `# -> "k": v` beside one.
_SHOWN_PAIR = re.compile(r'"(\w+)":\s*("(?:[^"\\]|\\.)*"|null|true|false|-?\d+)')
SEND_BUDGET_SECONDS = 120


CONSENT_SECTION = "Consent: STOP, START, HELP and quiet hours"


def section_blocks(title: str) -> list[str]:
    """The ```sh blocks of the README's section `## title`, as written."""
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"^```sh\n(.*?)^```", text[start:end], flags=re.MULTILINE | re.DOTALL)


def shown_output(block: str) -> tuple[str, bool] | None:
    """What the README shows a block's last command answers: the text, and whether it is whole."""
    comments = [line.removeprefix("#").strip() for line in block.splitlines() if line.startswith("# ")]
    if comments and comments[0].startswith("{"):
        shown = " ".join(comments)
        return shown, "..." not in shown
    arrow = re.search(r"# -> (.*)$", block.strip().splitlines()[-1])
    return (arrow[1], False) if arrow else None


def assert_shown(block: str, answered: str) -> None:
    shown = shown_output(block)
    if shown is None:
        return
    text, whole = shown
    if whole:
        assert answered == text, f"the README shows {text}\nthe service answered {answered}"
        return
    actual = json.loads(answered)
    pairs = _SHOWN_PAIR.findall(text)
    assert pairs, text
    for key, value in pairs:
        assert actual.get(key) == json.loads(value), f"the README shows {key}: {value}\nthe service answered {answered}"


def test_the_api_lifecycle_and_consent_examples_answer_what_the_readme_shows_against_make_run(tmp_path):
    """The README's API block, then (once its messages are sent and the fake provider's own
    receipts are in) every block of *Delivery lifecycle*, then those of *Consent* (a STOP
    through the fake provider), run by bash as written from a checkout where `make run` runs,
    its ports for 8000 and 8081; each shown answer compared, and what the consent blocks did."""
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    shutil.copy(REPO_ROOT / "manage.py", workdir / "manage.py")
    (workdir / ".venv").symlink_to(sys.prefix)
    web_port, provider_port = free_port(), free_port()
    env = make_run_env(tmp_path)

    def bash(script: str, *, timeout: float = 120) -> str:
        done = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + script.replace("localhost:8000", f"localhost:{web_port}")],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"{script}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    [api] = [block for block in section_blocks("API") if 'H="Authorization: Token $TOKEN"' in block]
    login = api[: api.index('H="Authorization: Token $TOKEN"')] + 'H="Authorization: Token $TOKEN"\n'
    with make_run(tmp_path, f"WEB_PORT={web_port}", f"PROVIDER_PORT={provider_port}", env_file=workdir / ".env") as (
        terminal
    ):
        make_run_ready(terminal)
        bash(api)
        token = bash(login + 'printf %s "$TOKEN"')

        def api_get(path: str) -> dict:
            request = urllib.request.Request(
                f"http://127.0.0.1:{web_port}{path}", headers={"Authorization": f"Token {token}"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())

        def message(number: int) -> dict:
            return api_get(f"/api/messages/{number}/")

        deadline = time.monotonic() + SEND_BUDGET_SECONDS
        while not all(message(n)["delivery_status"] == "delivered" for n in (1, 2, 3)):
            assert time.monotonic() < deadline, f"messages 1-3 not sent and delivered:\n{terminal.output}"
            terminal.read(1)
        time.sleep(1.1)  # the receipts below are stamped to the second: after the fake provider's

        blocks = section_blocks("Delivery lifecycle")
        marked = "".join(f"printf '\\n@@block@@\\n'\n{block}" for block in blocks)
        answers = bash(login + marked).split("\n@@block@@\n")[1:]
        # *Consent*: a STOP through the fake provider, the 422 it causes, START; records by hand.
        consent = bash(login + "\n".join(section_blocks(CONSENT_SECTION)).replace(":8081/", f":{provider_port}/"))
        after = {number: api_get(f"/api/consents/{number}/") for number in ("+12125550123", "+12125550124")}
        # *Status callbacks*: an endpoint registered, the devtools receiver started, a message
        # queued; make run's callbacks worker posts its message.sent, whose signature the
        # receiver checks with the standardwebhooks package.
        [try_callbacks, *_] = section_blocks("Status callbacks")
        # The block waits up to 90 s itself (`timeout 90`), after a `sleep 5` and three commands
        # that start Python: more than 120 s in all on a loaded machine.
        called_back = bash(login + try_callbacks.replace("8090", str(free_port())), timeout=300)
        queued_last = api_get("/api/messages/?page_size=1")["results"][0]

    assert len(answers) == len(blocks) >= 6
    for block, answered in zip(blocks, answers, strict=True):
        assert_shown(block, answered.strip().splitlines()[-1] if answered.strip() else "")
    # What the examples showed is what the message keeps: the README's receipt for message 1.
    assert shown_output(blocks[0]) == ('{"outcome":"applied","message_id":1}', True)
    # The STOP was heard, the message to the number refused, START heard; the hand-made opt-out kept.
    assert '"keyword\\":\\"opt_out\\"' in consent, consent
    assert "The recipient opted out" in consent, consent
    assert after["+12125550123"]["status"] == "opted_in", after
    assert [change["status"] for change in after["+12125550123"]["history"]][:2] in (
        ["opted_out", "opted_in"],
        ["opted_in", "opted_out"],
    ), after
    assert after["+12125550124"]["status"] == "opted_out", after
    verified = [line for line in called_back.splitlines() if line.startswith("verified ")]
    # Its message.sent; and its message.delivered too if the fake provider's receipt came first.
    expected = [
        rf"verified evt_[0-9a-f]{{32}} message.{status} message_id={queued_last['id']} client_reference=order-17 "
        rf"sequence={sequence} status={status}"
        for sequence, status in ((1, "sent"), (2, "delivered"))
    ]
    assert 1 <= len(verified) <= 2, called_back
    assert all(re.fullmatch(pattern, line) for pattern, line in zip(expected, verified, strict=False)), called_back
    assert "# verified evt_" in " ".join(section_blocks("Status callbacks")[0].split("\n"))
