"""The dispatcher's settings, read from settings.DISPATCHER in one place."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

# Short names accepted for DISPATCH_PROVIDER_BACKEND, like Django's email backends.
PROVIDER_ALIASES = {
    "webhook": "dispatcher.engine.providers.webhook.WebhookProvider",
    "console": "dispatcher.engine.providers.console.ConsoleProvider",
    "locmem": "dispatcher.engine.providers.locmem.LocmemProvider",
}


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
    concurrency: int
    # Empty: /metrics is open to anyone who can reach it.
    metrics_token: str = ""

    def lease_for(self, batch_size: int) -> float:
        """How long a claim of `batch_size` messages is ours: long enough to send them all,
        `concurrency` at a time, even if every send runs into the timeout."""
        rounds = -(-batch_size // self.concurrency)
        return self.lease_seconds + rounds * self.webhook_timeout_seconds


def dispatcher_settings() -> DispatcherSettings:
    raw = settings.DISPATCHER
    backend = raw.get("PROVIDER_BACKEND", "webhook")
    ttl = raw.get("DELIVERY_CACHE_TTL_SECONDS", 0)
    return DispatcherSettings(
        provider_backend=PROVIDER_ALIASES.get(backend, backend),
        webhook_url=raw.get("WEBHOOK_URL", "http://127.0.0.1:8081/"),
        webhook_auth_key=raw.get("WEBHOOK_AUTH_KEY", ""),
        webhook_timeout_seconds=float(raw.get("WEBHOOK_TIMEOUT_SECONDS", 10.0)),
        initial_batch_size=int(raw.get("INITIAL_BATCH_SIZE", 2)),
        initial_interval_seconds=int(raw.get("INITIAL_INTERVAL_SECONDS", 120)),
        # 0 means "keep forever", which Django's cache spells None.
        delivery_cache_ttl_seconds=ttl or None,
        window_seconds=int(raw.get("WINDOW_SECONDS", 100)),
        max_attempts=int(raw.get("MAX_ATTEMPTS", 5)),
        retry_base_seconds=float(raw.get("RETRY_BASE_SECONDS", 5.0)),
        retry_max_seconds=float(raw.get("RETRY_MAX_SECONDS", 600.0)),
        lease_seconds=float(raw.get("LEASE_SECONDS", 60.0)),
        concurrency=int(raw.get("CONCURRENCY", 16)),
        metrics_token=raw.get("METRICS_TOKEN") or "",
    )
