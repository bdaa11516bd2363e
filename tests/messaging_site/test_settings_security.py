"""Production settings: what start-up refuses, and that the documented production
environment passes `manage.py check --deploy`.

Settings are read once, at import, so each case imports them in a fresh process
with an environment built from scratch: nothing leaks in from tests.settings
(which turns the https defaults off) or from the developer's shell.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest

from tests.processes import REPO_ROOT

# check --deploy does not connect, so this database need not exist.
DEPLOY_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/messaging_deploycheck"

SETUP = "import django; django.setup()"
MAKE_A_KEY = "secrets.token_urlsafe(50)"


def strong_key() -> str:
    return secrets.token_urlsafe(50)


def production_env(**overrides: str | None) -> dict[str, str]:
    """The README's production environment (behind a TLS proxy); None removes a variable."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "DJANGO_SETTINGS_MODULE": "messaging_site.settings",
        "SECRET_KEY": strong_key(),
        "ALLOWED_HOSTS": "example.com",
        "CSRF_TRUSTED_ORIGINS": "https://example.com",
        "SECURE_PROXY_SSL_HEADER": "true",
        "DATABASE_URL": DEPLOY_DATABASE_URL,
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "WEBHOOK_URL": "https://provider.example.com/send",
        "WEBHOOK_AUTH_KEY": "provider-key",
        "ENV_FILE": "",  # manage.py: not a developer's local .env
    }
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def setting(expression: str, env: dict[str, str]) -> str:
    """The value of `expression` (over django.conf.settings) in a process started with `env`."""
    result = run_python(f"{SETUP}; from django.conf import settings; print({expression})", env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def refusal(env: dict[str, str]) -> str:
    """The ImproperlyConfigured message start-up stops with under `env`."""
    result = run_python(SETUP, env)
    assert result.returncode != 0, "start-up was expected to refuse this environment"
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("django.core.exceptions.ImproperlyConfigured: "), result.stderr
    return last_line.removeprefix("django.core.exceptions.ImproperlyConfigured: ")


# --- the documented production environment ---------------------------------------------


def test_documented_production_environment_passes_check_deploy():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO_ROOT,
        env=production_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_debug_defaults_to_false_and_the_https_defaults_are_the_safe_ones():
    values = setting(
        "settings.DEBUG, settings.SECURE_SSL_REDIRECT, settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE,"
        " settings.SECURE_HSTS_SECONDS, settings.SECURE_HSTS_INCLUDE_SUBDOMAINS, settings.SECURE_HSTS_PRELOAD,"
        " settings.SECURE_PROXY_SSL_HEADER",
        production_env(SECURE_PROXY_SSL_HEADER=None),
    )

    assert values == "False True True True 31536000 True True None"


def test_debug_turns_the_https_defaults_off():
    values = setting(
        "settings.DEBUG, settings.SECURE_SSL_REDIRECT, settings.SESSION_COOKIE_SECURE, settings.SECURE_HSTS_SECONDS",
        production_env(DEBUG="true"),
    )

    assert values == "True False False 0"


def test_secure_proxy_ssl_header_trusts_x_forwarded_proto():
    assert setting("settings.SECURE_PROXY_SSL_HEADER", production_env()) == "('HTTP_X_FORWARDED_PROTO', 'https')"


def test_the_default_body_limit_fits_the_largest_valid_bulk_request(settings):
    # Python's json.dumps escapes every non-ASCII character; an emoji becomes 12 bytes.
    content = "\N{GRINNING FACE}" * settings.MESSAGE_MAX_LENGTH
    item = {"recipient_phone_number": "+905551112233", "content": content, "send_after": "2030-01-31T09:00:00+03:00"}
    body = json.dumps({"messages": [item] * settings.MESSAGE_BULK_MAX_ITEMS}, indent=2).encode()

    assert len(body) <= settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def test_max_request_body_bytes_sets_the_upload_limit():
    env = production_env(MAX_REQUEST_BODY_BYTES="65536")
    assert setting("settings.DATA_UPLOAD_MAX_MEMORY_SIZE", env) == "65536"


# --- SECRET_KEY ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("x7Qp" * 10, id="short"),
        pytest.param("ab" * 40, id="few-distinct-characters"),
        pytest.param(f"django-insecure-{secrets.token_urlsafe(50)}", id="django-insecure"),
    ],
)
def test_production_refuses_a_missing_or_weak_secret_key(key):
    message = refusal(production_env(SECRET_KEY=key))

    assert message.startswith("SECRET_KEY")
    assert MAKE_A_KEY in message


def test_debug_allows_a_weak_secret_key_but_not_a_missing_one():
    assert setting("settings.SECRET_KEY", production_env(DEBUG="true", SECRET_KEY="dev")) == "dev"
    assert "SECRET_KEY must be set" in refusal(production_env(DEBUG="true", SECRET_KEY=None))


def test_secret_key_file_is_read_and_stripped(tmp_path):
    key = strong_key()
    key_file = tmp_path / "secret_key"
    key_file.write_text(f"{key}\n")

    env = production_env(SECRET_KEY=None, SECRET_KEY_FILE=str(key_file))

    assert setting("settings.SECRET_KEY", env) == key


def test_secret_key_and_secret_key_file_together_are_refused(tmp_path):
    key_file = tmp_path / "secret_key"
    key_file.write_text(strong_key())

    message = refusal(production_env(SECRET_KEY_FILE=str(key_file)))

    assert "SECRET_KEY and SECRET_KEY_FILE are both set" in message


def test_a_missing_secret_key_file_is_refused(tmp_path):
    missing = tmp_path / "nowhere"

    message = refusal(production_env(SECRET_KEY=None, SECRET_KEY_FILE=str(missing)))

    assert message.startswith("SECRET_KEY_FILE")
    assert str(missing) in message


def test_a_weak_key_from_a_file_is_refused_too(tmp_path):
    key_file = tmp_path / "secret_key"
    key_file.write_text("short")

    assert refusal(production_env(SECRET_KEY=None, SECRET_KEY_FILE=str(key_file))).startswith("SECRET_KEY")


# --- provider secrets ------------------------------------------------------------------


def test_webhook_auth_key_and_metrics_token_files_are_read(tmp_path):
    (tmp_path / "auth_key").write_text("from-a-file\n")
    (tmp_path / "metrics_token").write_text("  scrape-me  \n")
    env = production_env(
        WEBHOOK_AUTH_KEY=None,
        WEBHOOK_AUTH_KEY_FILE=str(tmp_path / "auth_key"),
        METRICS_TOKEN_FILE=str(tmp_path / "metrics_token"),
    )

    values = setting("settings.DISPATCHER['WEBHOOK_AUTH_KEY'], settings.DISPATCHER['METRICS_TOKEN']", env)

    assert values == "from-a-file scrape-me"


def test_an_empty_webhook_auth_key_file_is_refused(tmp_path):
    (tmp_path / "auth_key").write_text("\n")

    message = refusal(production_env(WEBHOOK_AUTH_KEY=None, WEBHOOK_AUTH_KEY_FILE=str(tmp_path / "auth_key")))

    assert message.startswith("WEBHOOK_AUTH_KEY_FILE")


# --- WEBHOOK_URL ---------------------------------------------------------------------


def test_production_refuses_a_plain_http_webhook_url():
    message = refusal(production_env(WEBHOOK_URL="http://provider.example.com/send"))

    assert message.startswith("WEBHOOK_URL")
    assert "WEBHOOK_ALLOW_HTTP" in message


def test_production_refuses_the_default_webhook_url_which_is_plain_http():
    message = refusal(production_env(WEBHOOK_URL=None))

    assert "WEBHOOK_URL is not set" in message
    assert "WEBHOOK_ALLOW_HTTP" in message


@pytest.mark.parametrize("allowed_by", [{"WEBHOOK_ALLOW_HTTP": "true"}, {"DEBUG": "true"}], ids=["allow-http", "debug"])
def test_a_plain_http_webhook_url_is_allowed_explicitly_or_in_debug(allowed_by):
    env = production_env(WEBHOOK_URL="http://fakeprovider:8081/", **allowed_by)

    assert setting("settings.DISPATCHER['WEBHOOK_URL']", env) == "http://fakeprovider:8081/"


def test_webhook_url_of_another_scheme_is_refused_even_in_debug():
    message = refusal(production_env(DEBUG="true", WEBHOOK_URL="ftp://provider.example.com/"))

    assert message.startswith("WEBHOOK_URL must be a URL starting with http:// or https://")


def test_a_refused_url_is_quoted_without_its_credentials():
    message = refusal(production_env(DEBUG="true", WEBHOOK_URL="ftp://user:hunter2@provider.example.com/?key=SECRETQ"))

    assert message.startswith("WEBHOOK_URL must be a URL starting with http:// or https://")
    assert "ftp://provider.example.com/?key=REDACTED" in message
    assert "hunter2" not in message and "SECRETQ" not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PROVIDER_MAX_PAUSE_SECONDS", "nan"),
        ("PROVIDER_MAX_PAUSE_SECONDS", "inf"),
        ("DISPATCH_RETRY_MAX_SECONDS", "inf"),
    ],
)
def test_a_number_setting_that_is_not_finite_is_refused(name, value):
    # NaN passes any range check; a setting with no maximum would take infinity.
    assert refusal(production_env(**{name: value})) == f"{name} must be a finite number, got {value!r}"
