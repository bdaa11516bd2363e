"""The providers' configuration (dispatcher/providers_conf.py): read once from the environment,
every mistake named by its provider and its variable, credentials from the environment or *_FILE."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from dispatcher.providers_conf import BACKEND_ALIASES, RouteRule, provider_specs_from_env
from messaging_site.env import env_secret, env_str
from tests.processes import REPO_ROOT

WEBHOOK = BACKEND_ALIASES["webhook"]
TWILIO = BACKEND_ALIASES["twilio"]


def specs(env: dict[str, str], *, allow_http: bool = True):
    """provider_specs_from_env over `env` alone (a secret is its plain variable)."""
    return provider_specs_from_env(read=env.get, secret=env.get, allow_http=allow_http)


def error_of(env: dict[str, str], *, allow_http: bool = True) -> str:
    with pytest.raises(ImproperlyConfigured) as raised:
        specs(env, allow_http=allow_http)
    return str(raised.value)


TWO = {
    "PROVIDERS": "primary, backup",
    "PROVIDER_PRIMARY_URL": "https://sms.example.com/send",
    "PROVIDER_PRIMARY_AUTH_KEY": "primary-key",
    "PROVIDER_BACKUP_BACKEND": "twilio",
    "PROVIDER_BACKUP_ACCOUNT_SID": "AC0123",
    "PROVIDER_BACKUP_AUTH_TOKEN": "backup-token",
    "PROVIDER_BACKUP_FROM": "+15005550006",
}


# --- what a good configuration gives ------------------------------------------------------


def test_without_providers_the_single_provider_settings_stay():
    assert specs({}) == (None, ())
    assert specs({"PROVIDERS": " "}) == (None, ())


def test_providers_in_their_order_with_backends_urls_and_credentials():
    (primary, backup), routes = specs(TWO)
    assert routes == ()
    assert (primary.name, primary.backend, primary.url) == ("primary", WEBHOOK, "https://sms.example.com/send")
    assert primary.options == {"auth_key": "primary-key"}
    assert (backup.name, backup.backend) == ("backup", TWILIO)
    # Twilio's own API unless told otherwise (a local fake in the tests).
    assert backup.url == "https://api.twilio.com"
    assert backup.options == {"account_sid": "AC0123", "auth_token": "backup-token", "from": "+15005550006"}
    assert primary.rate_per_second == backup.rate_per_second == 0.0


def test_timeout_defaults_to_the_webhook_timeout_and_rate_is_read():
    (primary, backup), _ = specs(
        {
            **TWO,
            "WEBHOOK_TIMEOUT_SECONDS": "4",
            "PROVIDER_BACKUP_TIMEOUT_SECONDS": "2.5",
            "PROVIDER_PRIMARY_RATE_PER_SECOND": "200",
        }
    )
    assert (primary.timeout_seconds, backup.timeout_seconds) == (4.0, 2.5)
    assert (primary.rate_per_second, backup.rate_per_second) == (200.0, 0.0)


def test_a_dotted_path_backend_needs_no_url():
    (spec,), _ = specs({"PROVIDERS": "custom", "PROVIDER_CUSTOM_BACKEND": "tests.dispatcher.backends.Custom"})
    assert (spec.backend, spec.url) == ("tests.dispatcher.backends.Custom", "")


def test_aliases_name_their_classes():
    (a, b), _ = specs({"PROVIDERS": "a,b", "PROVIDER_A_BACKEND": "locmem", "PROVIDER_B_BACKEND": "console"})
    assert (a.backend, b.backend) == (BACKEND_ALIASES["locmem"], BACKEND_ALIASES["console"])


def test_twilio_status_callback_url_is_kept():
    (_, backup), _ = specs(
        {**TWO, "PROVIDER_BACKUP_STATUS_CALLBACK_URL": "https://sms.example.com/api/receipts/twilio/backup/"}
    )
    assert backup.options["status_callback_url"] == "https://sms.example.com/api/receipts/twilio/backup/"


def test_routes_are_checked_and_the_longest_prefix_comes_first():
    _, routes = specs({**TWO, "PROVIDER_ROUTES": "+1:backup, +1242:primary,+90:primary"})
    assert routes == (
        RouteRule(prefix="+1242", provider="primary"),
        RouteRule(prefix="+90", provider="primary"),
        RouteRule(prefix="+1", provider="backup"),
    )


def test_a_spec_never_shows_its_credentials():
    (primary, backup), _ = specs(TWO)
    shown = repr(primary) + repr(backup) + str(primary) + str(backup)
    assert "primary-key" not in shown and "backup-token" not in shown
    assert "primary" in shown and "backup" in shown


# --- mistakes, each named by provider and variable ----------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PROVIDERS": "Primary"}, "PROVIDERS: 'Primary' is not a provider name"),
        ({"PROVIDERS": "9lives"}, "PROVIDERS: '9lives' is not a provider name"),
        ({"PROVIDERS": "a" * 33}, "is not a provider name"),
        ({"PROVIDERS": "sms-eu"}, "PROVIDERS: 'sms-eu' is not a provider name"),
        (
            {"PROVIDERS": "a,b,a", "PROVIDER_A_URL": "https://a.example", "PROVIDER_B_URL": "https://b.example"},
            "PROVIDERS names a provider twice",
        ),
        ({"PROVIDER_ROUTES": "+90:primary"}, "PROVIDER_ROUTES needs PROVIDERS"),
    ],
)
def test_bad_provider_lists(env, expected):
    assert expected in error_of(env)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PROVIDER_BACKUP_BACKEND": "smtp"}, "provider 'backup': PROVIDER_BACKUP_BACKEND must be webhook, twilio"),
        ({"PROVIDER_PRIMARY_URL": ""}, "provider 'primary': PROVIDER_PRIMARY_URL is required for the webhook backend"),
        (
            {"PROVIDER_PRIMARY_URL": "ftp://sms.example.com"},
            "provider 'primary': PROVIDER_PRIMARY_URL must be an http(s) URL",
        ),
        (
            {"PROVIDER_PRIMARY_URL": "sms.example.com/send"},
            "provider 'primary': PROVIDER_PRIMARY_URL must be an http(s) URL",
        ),
        ({"PROVIDER_BACKUP_URL": "twilio"}, "provider 'backup': PROVIDER_BACKUP_URL must be an http(s) URL"),
        (
            {"PROVIDER_BACKUP_ACCOUNT_SID": ""},
            "provider 'backup': PROVIDER_BACKUP_ACCOUNT_SID is required for the twilio backend",
        ),
        (
            {"PROVIDER_BACKUP_AUTH_TOKEN": " "},
            "provider 'backup': PROVIDER_BACKUP_AUTH_TOKEN is required for the twilio backend",
        ),
        ({"PROVIDER_BACKUP_FROM": ""}, "provider 'backup': PROVIDER_BACKUP_FROM is required for the twilio backend"),
        (
            {"PROVIDER_BACKUP_STATUS_CALLBACK_URL": "/api/receipts/"},
            "provider 'backup': PROVIDER_BACKUP_STATUS_CALLBACK_URL must be an http(s) URL",
        ),
        (
            {"PROVIDER_PRIMARY_TIMEOUT_SECONDS": "ten"},
            "provider 'primary': PROVIDER_PRIMARY_TIMEOUT_SECONDS must be a number, got 'ten'",
        ),
        (
            {"PROVIDER_PRIMARY_TIMEOUT_SECONDS": "0"},
            "provider 'primary': PROVIDER_PRIMARY_TIMEOUT_SECONDS must be between 0.1 and 300",
        ),
        (
            {"PROVIDER_BACKUP_TIMEOUT_SECONDS": "301"},
            "provider 'backup': PROVIDER_BACKUP_TIMEOUT_SECONDS must be between",
        ),
        (
            {"PROVIDER_PRIMARY_RATE_PER_SECOND": "-1"},
            "provider 'primary': PROVIDER_PRIMARY_RATE_PER_SECOND must be between 0 and 100000",
        ),
        (
            {"PROVIDER_BACKUP_RATE_PER_SECOND": "fast"},
            "provider 'backup': PROVIDER_BACKUP_RATE_PER_SECOND must be a number",
        ),
        ({"PROVIDER_ROUTES": "90:primary"}, "PROVIDER_ROUTES: '90' is not a destination prefix"),
        ({"PROVIDER_ROUTES": "+90"}, "PROVIDER_ROUTES: +90 names provider '', which PROVIDERS does not list"),
        (
            {"PROVIDER_ROUTES": "+90:twilio"},
            "PROVIDER_ROUTES: +90 names provider 'twilio', which PROVIDERS does not list",
        ),
        ({"PROVIDER_ROUTES": "+1234567:primary"}, "is not a destination prefix"),
    ],
)
def test_each_mistake_names_the_provider_and_the_field(env, expected):
    assert expected in error_of({**TWO, **env})


def test_production_refuses_plain_http_naming_the_field():
    message = error_of({**TWO, "PROVIDER_PRIMARY_URL": "http://10.0.0.5/send"}, allow_http=False)
    assert "provider 'primary': PROVIDER_PRIMARY_URL is plain http" in message
    message = error_of(
        {**TWO, "PROVIDER_BACKUP_STATUS_CALLBACK_URL": "http://sms.example.com/api/receipts/twilio/backup/"},
        allow_http=False,
    )
    assert "provider 'backup': PROVIDER_BACKUP_STATUS_CALLBACK_URL is plain http" in message
    # https passes; so does http where it is allowed.
    assert specs(TWO, allow_http=False)[0][0].url.startswith("https://")
    assert specs({**TWO, "PROVIDER_PRIMARY_URL": "http://10.0.0.5/send"}, allow_http=True)[0][0].url


def test_errors_never_show_a_credential():
    message = error_of({**TWO, "PROVIDER_BACKUP_FROM": ""})
    assert "backup-token" not in message and "primary-key" not in message


# A provider whose credentials are in its URL: user info, and a key in the query string.
CREDENTIALED_URL = "http://user:hunter2@sms.example.com/send?api_key=SECRETQ"


def test_a_spec_shows_its_url_without_the_credentials_in_it():
    (primary,), _ = specs({"PROVIDERS": "primary", "PROVIDER_PRIMARY_URL": CREDENTIALED_URL})
    assert primary.url == CREDENTIALED_URL  # what the backend sends to
    assert "http://sms.example.com/send?api_key=REDACTED" in repr(primary)
    assert "hunter2" not in repr(primary) and "SECRETQ" not in repr(primary)


@pytest.mark.parametrize(
    "env",
    [
        {"PROVIDERS": "primary", "PROVIDER_PRIMARY_URL": CREDENTIALED_URL.replace("http", "ftp", 1)},
        {"PROVIDERS": "primary", "PROVIDER_PRIMARY_URL": CREDENTIALED_URL, "ALLOW": ""},
    ],
    ids=["not http", "plain http in production"],
)
def test_a_url_refused_at_start_up_is_quoted_without_its_credentials(env):
    message = error_of(env, allow_http="ALLOW" not in env)
    assert "PROVIDER_PRIMARY_URL" in message
    assert "hunter2" not in message and "SECRETQ" not in message


# --- secrets from the environment or from a file --------------------------------------------


@pytest.fixture
def environ(monkeypatch):
    """environ(**vars): set these (and only these provider) variables for the real readers."""
    for name in list(os.environ):
        if name.startswith("PROVIDER"):
            monkeypatch.delenv(name)

    def set_vars(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_vars


def real_specs(*, allow_http: bool = True):
    return provider_specs_from_env(read=env_str, secret=env_secret, allow_http=allow_http)


def test_credentials_from_files_are_read_and_stripped(environ, tmp_path):
    key_file, token_file = tmp_path / "key", tmp_path / "token"
    key_file.write_text("key-from-a-file\n")
    token_file.write_text("  token-from-a-file \n")
    environ(
        **{k: v for k, v in TWO.items() if k not in ("PROVIDER_PRIMARY_AUTH_KEY", "PROVIDER_BACKUP_AUTH_TOKEN")},
        PROVIDER_PRIMARY_AUTH_KEY_FILE=str(key_file),
        PROVIDER_BACKUP_AUTH_TOKEN_FILE=str(token_file),
    )
    (primary, backup), _ = real_specs()
    assert primary.options["auth_key"] == "key-from-a-file"
    assert backup.options["auth_token"] == "token-from-a-file"


def test_a_credential_and_its_file_both_set_is_refused(environ, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("from-file")
    environ(**TWO, PROVIDER_PRIMARY_AUTH_KEY_FILE=str(key_file))
    with pytest.raises(ImproperlyConfigured, match="PROVIDER_PRIMARY_AUTH_KEY and PROVIDER_PRIMARY_AUTH_KEY_FILE"):
        real_specs()


@pytest.mark.parametrize(("content", "problem"), [(None, "cannot be read"), ("\n", "which is empty")])
def test_a_missing_or_empty_secret_file_names_its_variable(environ, tmp_path, content, problem):
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    env = {k: v for k, v in TWO.items() if k != "PROVIDER_BACKUP_AUTH_TOKEN"}
    environ(**env, PROVIDER_BACKUP_AUTH_TOKEN_FILE=str(token_file))
    with pytest.raises(ImproperlyConfigured) as raised:
        real_specs()
    assert "PROVIDER_BACKUP_AUTH_TOKEN_FILE" in str(raised.value)
    assert problem in str(raised.value)


def test_webhook_auth_key_is_optional(environ):
    environ(PROVIDERS="primary", PROVIDER_PRIMARY_URL="https://sms.example.com/")
    (primary,), _ = real_specs()
    assert primary.options == {"auth_key": ""}


# --- the settings module: read once at start-up ----------------------------------------------

SHOW_PROVIDERS = """
import json
import django
django.setup()
from django.conf import settings
print(json.dumps({
    "providers": [[s.name, s.backend, s.url, s.timeout_seconds, s.rate_per_second]
                  for s in settings.DISPATCH_PROVIDERS or ()],
    "routes": [[r.prefix, r.provider] for r in settings.DISPATCH_PROVIDER_ROUTES],
}))
"""


def start_up(**env: str) -> subprocess.CompletedProcess:
    """Load the settings in a fresh interpreter with these provider variables (and no others)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PROVIDER")}
    return subprocess.run(
        [sys.executable, "-c", SHOW_PROVIDERS],
        cwd=REPO_ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "tests.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_settings_read_the_providers_at_start_up(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("token\n")
    done = start_up(
        PROVIDERS="primary,backup",
        PROVIDER_ROUTES="+1:backup",
        PROVIDER_PRIMARY_URL="http://127.0.0.1:9/",
        PROVIDER_PRIMARY_RATE_PER_SECOND="50",
        PROVIDER_BACKUP_BACKEND="twilio",
        PROVIDER_BACKUP_URL="http://127.0.0.1:10",
        PROVIDER_BACKUP_ACCOUNT_SID="AC1",
        PROVIDER_BACKUP_AUTH_TOKEN_FILE=str(token_file),
        PROVIDER_BACKUP_FROM="+15005550006",
        PROVIDER_BACKUP_TIMEOUT_SECONDS="3",
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    assert shown == {
        "providers": [
            ["primary", WEBHOOK, "http://127.0.0.1:9/", 10.0, 50.0],
            ["backup", TWILIO, "http://127.0.0.1:10", 3.0, 0.0],
        ],
        "routes": [["+1", "backup"]],
    }


def test_a_bad_provider_stops_start_up_naming_provider_and_field():
    done = start_up(
        PROVIDERS="primary,backup", PROVIDER_PRIMARY_URL="http://127.0.0.1:9/", PROVIDER_BACKUP_BACKEND="twilio"
    )
    assert done.returncode != 0
    assert "ImproperlyConfigured: provider 'backup': PROVIDER_BACKUP_ACCOUNT_SID is required" in done.stderr, (
        done.stderr
    )


def test_production_start_up_refuses_a_plain_http_provider():
    done = start_up(
        WEBHOOK_ALLOW_HTTP="false",
        WEBHOOK_URL="https://sms.example.com/",
        PROVIDERS="primary",
        PROVIDER_PRIMARY_URL="http://10.0.0.5/",
    )
    assert done.returncode != 0
    assert "provider 'primary': PROVIDER_PRIMARY_URL is plain http" in done.stderr, done.stderr


def test_the_readmes_example_configuration_is_valid_in_production(environ, tmp_path):
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split("## Providers", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    env = {}
    for line in block.strip().splitlines():
        name, _, value = line.split("#", 1)[0].strip().partition("=")
        if name.endswith("_FILE"):  # a mounted secret: here, a file of the test's
            secret_file = tmp_path / name
            secret_file.write_text("from-a-file\n")
            value = str(secret_file)
        env[name] = value
    environ(**env)
    (primary, backup), routes = real_specs(allow_http=False)
    assert (primary.name, primary.backend, primary.rate_per_second) == ("primary", WEBHOOK, 200.0)
    assert primary.options["auth_key"] == "from-a-file"
    assert (backup.name, backup.backend, backup.options["auth_token"]) == ("backup", TWILIO, "from-a-file")
    assert routes == (RouteRule(prefix="+1", provider="backup"),)
