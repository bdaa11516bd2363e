"""The dispatcher's settings: each one's environment variable, default, range and
meaning written once here.

messaging_site.settings reads the environment through these specs into
settings.DISPATCHER; everything else reads them back through
`dispatcher_settings()`. This module imports nothing of Django's at import time,
because the settings module itself imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dispatcher.providers_conf import BACKEND_ALIASES as PROVIDER_ALIASES


@dataclass(frozen=True)
class SettingSpec:
    key: str  # in settings.DISPATCHER and DispatcherSettings (lower-cased)
    env: str  # the environment variable it is read from
    kind: Literal["int", "float", "str", "secret"]
    default: int | float | str
    meaning: str
    minimum: float | None = None
    maximum: float | None = None


BATCH_SIZE = SettingSpec(
    "INITIAL_BATCH_SIZE", "DISPATCH_BATCH_SIZE", "int", 2, "initial messages per tick", minimum=1, maximum=10_000
)
INTERVAL_SECONDS = SettingSpec(
    "INITIAL_INTERVAL_SECONDS",
    "DISPATCH_INTERVAL_SECONDS",
    "int",
    120,
    "initial seconds between ticks",
    minimum=1,
    maximum=86_400,
)

SPECS: tuple[SettingSpec, ...] = (
    SettingSpec(
        "PROVIDER_BACKEND", "DISPATCH_PROVIDER_BACKEND", "str", "webhook", "webhook, console, locmem or a dotted path"
    ),
    SettingSpec("WEBHOOK_AUTH_KEY", "WEBHOOK_AUTH_KEY", "secret", "", "sent as x-ins-auth-key"),
    SettingSpec(
        "WEBHOOK_TIMEOUT_SECONDS",
        "WEBHOOK_TIMEOUT_SECONDS",
        "float",
        10.0,
        "read timeout of one provider call (connect timeout is at most 3 s)",
        minimum=0.1,
        maximum=300,
    ),
    BATCH_SIZE,
    INTERVAL_SECONDS,
    SettingSpec(
        "DELIVERY_CACHE_TTL_SECONDS",
        "DELIVERY_CACHE_TTL_SECONDS",
        "int",
        0,
        "TTL of messages:<messageId> records; 0 = forever",
        minimum=0,
    ),
    SettingSpec(
        "WINDOW_SECONDS",
        "DISPATCH_WINDOW_SECONDS",
        "int",
        100,
        "how long one dispatch window paces ticks",
        minimum=5,
        maximum=600,
    ),
    SettingSpec("MAX_ATTEMPTS", "DISPATCH_MAX_ATTEMPTS", "int", 5, "attempts before a message fails for good", 1, 100),
    SettingSpec(
        "RETRY_BASE_SECONDS",
        "DISPATCH_RETRY_BASE_SECONDS",
        "float",
        5.0,
        "first retry delay; doubles each attempt, with jitter",
        minimum=0.0,
    ),
    SettingSpec(
        "RETRY_MAX_SECONDS", "DISPATCH_RETRY_MAX_SECONDS", "float", 600.0, "the longest retry delay", minimum=0.0
    ),
    SettingSpec(
        "LEASE_SECONDS",
        "DISPATCH_LEASE_SECONDS",
        "float",
        60.0,
        "a claimed chunk's lease, renewed while its worker sends; a dead worker's messages return after it",
        minimum=1.0,
        maximum=3600,
    ),
    SettingSpec(
        "CHUNK_SIZE",
        "DISPATCH_CHUNK_SIZE",
        "int",
        # Each chunk is a django-q2 task with its own queue rows, start statement and
        # lease keeper: chunks of 100 spent a quarter more CPU per message than chunks of 500
        # (bench/RESULTS.md, 2026-12-01 night).
        500,
        "messages per django-q2 task a tick hands out",
        minimum=1,
        maximum=10_000,
    ),
    SettingSpec(
        "LOWER_PRIORITY_SHARE",
        "DISPATCH_LOWER_PRIORITY_SHARE",
        "float",
        0.2,
        "share of each tick a priority leaves to the ones below it while they wait (0-0.9)",
        minimum=0.0,
        maximum=0.9,
    ),
    SettingSpec(
        "CONCURRENCY",
        "DISPATCH_CONCURRENCY",
        "int",
        # A chunk's requests wait in one event loop, where one more in flight costs next
        # to nothing: 64 sent a 50 ms provider's messages 1.3 x faster than 16.
        64,
        "requests in flight at once within a chunk",
        minimum=1,
        maximum=1024,
    ),
    SettingSpec(
        "PROVIDER_CIRCUIT_FAILURES",
        "PROVIDER_CIRCUIT_FAILURES",
        "int",
        5,
        "provider-wide failures in a row that open a provider's circuit",
        minimum=1,
        maximum=1000,
    ),
    SettingSpec(
        "PROVIDER_CIRCUIT_COOLOFF_SECONDS",
        "PROVIDER_CIRCUIT_COOLOFF_SECONDS",
        "float",
        30.0,
        "how long an open circuit sends nothing before it lets probes through",
        minimum=0.5,
        maximum=3600,
    ),
    SettingSpec(
        "PROVIDER_CIRCUIT_PROBES",
        "PROVIDER_CIRCUIT_PROBES",
        "int",
        2,
        "requests a half-open circuit lets through per cool-off",
        minimum=1,
        maximum=100,
    ),
    SettingSpec(
        "PROVIDER_OUTAGE_GRACE_SECONDS",
        "PROVIDER_OUTAGE_GRACE_SECONDS",
        "float",
        1800.0,
        "how long a provider's outage (open circuit) costs messages no attempts; after it they count",
        minimum=0.0,
        maximum=7 * 86400,
    ),
    SettingSpec(
        "PROVIDER_MAX_PAUSE_SECONDS",
        "PROVIDER_MAX_PAUSE_SECONDS",
        "float",
        300.0,
        "the longest one 429 pauses a provider for every worker, whatever its Retry-After asks",
        minimum=1.0,
        maximum=86_400,
    ),
    SettingSpec(
        "METRICS_TOKEN",
        "METRICS_TOKEN",
        "secret",
        "",
        "/metrics and /readyz's checks answer Authorization: Bearer <token> (and staff sessions)",
    ),
    SettingSpec(
        "RECEIPT_SECRET",
        "RECEIPT_WEBHOOK_SECRET",
        "secret",
        "",
        "Standard Webhooks secret (whsec_...) delivery receipts are signed with; unset, receipts are refused",
    ),
    SettingSpec(
        "INBOUND_SECRET",
        "INBOUND_WEBHOOK_SECRET",
        "secret",
        "",
        "Standard Webhooks secret (whsec_...) inbound replies are signed with; unset, replies are refused",
    ),
)
SPECS_BY_KEY = {spec.key: spec for spec in SPECS}


@dataclass(frozen=True)
class DispatcherSettings:
    provider_backend: str
    webhook_url: str
    webhook_auth_key: str
    webhook_timeout_seconds: float
    initial_batch_size: int
    initial_interval_seconds: int
    delivery_cache_ttl_seconds: int | None
    window_seconds: int
    max_attempts: int
    retry_base_seconds: float
    retry_max_seconds: float
    lease_seconds: float
    chunk_size: int
    lower_priority_share: float
    concurrency: int
    provider_circuit_failures: int = 5
    provider_circuit_cooloff_seconds: float = 30.0
    provider_circuit_probes: int = 2
    provider_outage_grace_seconds: float = 1800.0
    provider_max_pause_seconds: float = 300.0
    # Empty: /metrics is open to anyone who can reach it.
    metrics_token: str = ""
    # Empty: POST /api/receipts/ refuses every receipt.
    receipt_secret: str = ""
    # Empty: POST /api/inbound/ refuses every reply.
    inbound_secret: str = ""

    @property
    def chunk_send_budget_seconds(self) -> float:
        """How long one chunk task may go on starting sends. After it, the task
        gives the rest of its chunk back; with the sends in flight (each at most
        the provider timeout) and the outcome writes, it then ends inside the
        task timeout (`task_timeouts`), so django-q2 never kills a chunk mid-send."""
        return float(self.window_seconds)


def task_timeouts(*, window_seconds: int, webhook_timeout_seconds: float) -> tuple[int, int]:
    """django-q2's (timeout, retry) for our tasks: a dispatch window runs
    `window_seconds`; a chunk starts sends for at most as long, then waits at most
    one provider timeout for those in flight. `retry` (when the ORM broker hands an
    unacknowledged task out again) comes after the timeout, so a task is never
    run twice at once."""
    timeout = int(window_seconds + webhook_timeout_seconds + 30)
    return timeout, timeout + 30


# The last settings read, with the dict they were read from: a worker asks for them
# for every message it sends, and settings change only by replacing DISPATCHER.
_last_read: tuple[dict, DispatcherSettings] | None = None


def dispatcher_settings() -> DispatcherSettings:
    global _last_read
    from django.conf import settings

    raw = settings.DISPATCHER
    last = _last_read
    if last is not None and last[0] is raw:
        return last[1]
    _last_read = (raw, _read(raw))
    return _last_read[1]


def _read(raw: dict) -> DispatcherSettings:
    def value(key: str):
        return raw.get(key, SPECS_BY_KEY[key].default) if key in SPECS_BY_KEY else raw[key]

    backend = value("PROVIDER_BACKEND")
    return DispatcherSettings(
        provider_backend=PROVIDER_ALIASES.get(backend, backend),
        webhook_url=raw.get("WEBHOOK_URL", "http://127.0.0.1:8081/"),
        webhook_auth_key=value("WEBHOOK_AUTH_KEY") or "",
        webhook_timeout_seconds=float(value("WEBHOOK_TIMEOUT_SECONDS")),
        initial_batch_size=int(value("INITIAL_BATCH_SIZE")),
        initial_interval_seconds=int(value("INITIAL_INTERVAL_SECONDS")),
        # 0 means "keep forever", which Django's cache spells None.
        delivery_cache_ttl_seconds=int(value("DELIVERY_CACHE_TTL_SECONDS")) or None,
        window_seconds=int(value("WINDOW_SECONDS")),
        max_attempts=int(value("MAX_ATTEMPTS")),
        retry_base_seconds=float(value("RETRY_BASE_SECONDS")),
        retry_max_seconds=float(value("RETRY_MAX_SECONDS")),
        lease_seconds=float(value("LEASE_SECONDS")),
        chunk_size=int(value("CHUNK_SIZE")),
        lower_priority_share=float(value("LOWER_PRIORITY_SHARE")),
        concurrency=int(value("CONCURRENCY")),
        provider_circuit_failures=int(value("PROVIDER_CIRCUIT_FAILURES")),
        provider_circuit_cooloff_seconds=float(value("PROVIDER_CIRCUIT_COOLOFF_SECONDS")),
        provider_circuit_probes=int(value("PROVIDER_CIRCUIT_PROBES")),
        provider_outage_grace_seconds=float(value("PROVIDER_OUTAGE_GRACE_SECONDS")),
        provider_max_pause_seconds=float(value("PROVIDER_MAX_PAUSE_SECONDS")),
        metrics_token=value("METRICS_TOKEN") or "",
        receipt_secret=value("RECEIPT_SECRET") or "",
        inbound_secret=value("INBOUND_SECRET") or "",
    )
