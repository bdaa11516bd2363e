"""The providers, configured in one place: the environment, read once at start-up.

    PROVIDERS=primary,backup                 the names, in routing order (default: one, "default")
    PROVIDER_ROUTES=+1:twilio,+90:primary    optional: a destination prefix picks a provider first
    PROVIDER_<NAME>_BACKEND                  webhook (default), twilio, console, locmem or a dotted path
    PROVIDER_<NAME>_URL                      the endpoint (webhook: where to POST; twilio: the API base)
    PROVIDER_<NAME>_AUTH_KEY[_FILE]          webhook: sent as x-ins-auth-key
    PROVIDER_<NAME>_ACCOUNT_SID              twilio
    PROVIDER_<NAME>_AUTH_TOKEN[_FILE]        twilio (also checks its status callbacks)
    PROVIDER_<NAME>_FROM                     twilio: the sending number or messaging service
    PROVIDER_<NAME>_STATUS_CALLBACK_URL      twilio: https://<host>/api/receipts/twilio/<name>/
    PROVIDER_<NAME>_TIMEOUT_SECONDS          read timeout (default WEBHOOK_TIMEOUT_SECONDS)
    PROVIDER_<NAME>_RATE_PER_SECOND          messages a second, cluster-wide (0: no limit)

Without PROVIDERS, the one provider "default" is made of the single-provider
variables (DISPATCH_PROVIDER_BACKEND, WEBHOOK_URL, WEBHOOK_AUTH_KEY, ...), as before.
Credentials come only from the environment (or *_FILE), never the database.
A mistake stops start-up with an error naming the provider and the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from restapi.redaction import url_redacted

# Short names accepted for a backend, like Django's email backends.
BACKEND_ALIASES = {
    "webhook": "dispatcher.engine.providers.webhook.WebhookProvider",
    "twilio": "dispatcher.engine.providers.twilio.TwilioProvider",
    "console": "dispatcher.engine.providers.console.ConsoleProvider",
    "locmem": "dispatcher.engine.providers.locmem.LocmemProvider",
}
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")
PREFIX_PATTERN = re.compile(r"\+[0-9]{1,6}")


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    backend: str  # a dotted path
    url: str = ""
    timeout_seconds: float = 10.0
    rate_per_second: float = 0.0  # 0: no limit
    # Credentials and backend-specific options (auth_key, account_sid, auth_token, from).
    options: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # never print a credential, those in the URL included
        return f"ProviderSpec(name={self.name!r}, backend={self.backend!r}, url={url_redacted(self.url)!r})"


@dataclass(frozen=True)
class RouteRule:
    prefix: str  # E.164 prefix, e.g. "+90"
    provider: str


def _error(name: str, field_name: str, problem: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"provider {name!r}: {field_name} {problem}")


def _number(name: str, field_name: str, raw: str | None, default: float, *, minimum: float, maximum: float) -> float:
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise _error(name, field_name, f"must be a number, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise _error(name, field_name, f"must be between {minimum:g} and {maximum:g}, got {value:g}")
    return value


def _url(name: str, field_name: str, raw: str, *, allow_http: bool) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _error(name, field_name, f"must be an http(s) URL, got {url_redacted(raw)!r}")
    if parts.scheme == "http" and not allow_http:
        raise _error(name, field_name, "is plain http, which production refuses (set WEBHOOK_ALLOW_HTTP=true if meant)")
    return raw


def provider_specs_from_env(
    *,
    read: Callable[[str], str | None],
    secret: Callable[[str], str | None],
    allow_http: bool,
) -> tuple[tuple[ProviderSpec, ...] | None, tuple[RouteRule, ...]]:
    """Build and check the providers from the environment (`read` and `secret` read one
    variable each). Without PROVIDERS: None, meaning the one provider of the
    single-provider settings (`legacy_provider_spec`, built when asked for)."""
    names_raw = (read("PROVIDERS") or "").strip()
    if not names_raw:
        if (read("PROVIDER_ROUTES") or "").strip():
            raise ImproperlyConfigured("PROVIDER_ROUTES needs PROVIDERS: routes pick among named providers")
        return None, ()
    else:
        names = [n.strip() for n in names_raw.split(",") if n.strip()]
        for name in names:
            if not NAME_PATTERN.fullmatch(name):
                raise ImproperlyConfigured(
                    f"PROVIDERS: {name!r} is not a provider name (lower-case letters, digits, _; 32 at most)"
                )
        if len(set(names)) != len(names):
            raise ImproperlyConfigured(f"PROVIDERS names a provider twice: {names_raw!r}")
        specs = tuple(_spec_from_env(name, read=read, secret=secret, allow_http=allow_http) for name in names)
    return specs, _routes_from_env(read("PROVIDER_ROUTES") or "", names={s.name for s in specs})


def _spec_from_env(name: str, *, read, secret, allow_http: bool) -> ProviderSpec:
    def var(suffix: str) -> str:
        return f"PROVIDER_{name.upper()}_{suffix}"

    backend = (read(var("BACKEND")) or "webhook").strip()
    backend = BACKEND_ALIASES.get(backend, backend)
    if "." not in backend:
        raise _error(
            name, var("BACKEND"), f"must be webhook, twilio, console, locmem or a dotted path, got {backend!r}"
        )
    url = (read(var("URL")) or "").strip()
    options: dict[str, str] = {}
    if backend == BACKEND_ALIASES["webhook"]:
        if not url:
            raise _error(name, var("URL"), "is required for the webhook backend")
        options["auth_key"] = secret(var("AUTH_KEY")) or ""
    elif backend == BACKEND_ALIASES["twilio"]:
        url = url or "https://api.twilio.com"
        for option, suffix, reader in (
            ("account_sid", "ACCOUNT_SID", read),
            ("auth_token", "AUTH_TOKEN", secret),
            ("from", "FROM", read),
        ):
            value = (reader(var(suffix)) or "").strip()
            if not value:
                raise _error(name, var(suffix), "is required for the twilio backend")
            options[option] = value
        callback = (read(var("STATUS_CALLBACK_URL")) or "").strip()
        if callback:
            options["status_callback_url"] = _url(name, var("STATUS_CALLBACK_URL"), callback, allow_http=allow_http)
    if url:
        url = _url(name, var("URL"), url, allow_http=allow_http)
    return ProviderSpec(
        name=name,
        backend=backend,
        url=url,
        timeout_seconds=_number(
            name,
            var("TIMEOUT_SECONDS"),
            read(var("TIMEOUT_SECONDS")),
            float(read("WEBHOOK_TIMEOUT_SECONDS") or 10.0),
            minimum=0.1,
            maximum=300,
        ),
        rate_per_second=_number(
            name, var("RATE_PER_SECOND"), read(var("RATE_PER_SECOND")), 0.0, minimum=0.0, maximum=100_000
        ),
        options=options,
    )


def _routes_from_env(raw: str, *, names: set[str]) -> tuple[RouteRule, ...]:
    rules = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        prefix, _, provider = item.partition(":")
        prefix, provider = prefix.strip(), provider.strip()
        if not PREFIX_PATTERN.fullmatch(prefix):
            raise ImproperlyConfigured(f"PROVIDER_ROUTES: {prefix!r} is not a destination prefix like +90")
        if provider not in names:
            raise ImproperlyConfigured(
                f"PROVIDER_ROUTES: {prefix} names provider {provider!r}, which PROVIDERS does not list"
            )
        rules.append(RouteRule(prefix=prefix, provider=provider))
    # The longest prefix first, so +1242 wins over +1.
    return tuple(sorted(rules, key=lambda rule: -len(rule.prefix)))


DEFAULT_PROVIDER = "default"


def legacy_provider_spec(*, backend: str, url: str, auth_key: str, timeout_seconds: float) -> ProviderSpec:
    """The one provider of the single-provider settings (DISPATCH_PROVIDER_BACKEND, WEBHOOK_*)."""
    return ProviderSpec(
        name=DEFAULT_PROVIDER,
        backend=BACKEND_ALIASES.get(backend, backend),
        url=url,
        timeout_seconds=timeout_seconds,
        options={"auth_key": auth_key},
    )
