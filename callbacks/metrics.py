"""Callback deliveries counted by outcome, in the default cache (Redis) so every worker
adds to the same numbers (as dispatcher.engine.counters does for sends); /metrics reads
them back with `deliveries_counted`."""

from __future__ import annotations

import logging

from django.core.cache import caches

logger = logging.getLogger(__name__)

DELIVERIES = "messaging_callback_deliveries"
OUTCOMES = ("delivered", "retry", "failed")


def delivery_counter_key(outcome: str) -> str:
    return f"metrics:{DELIVERIES}:{outcome}"


def deliveries_count(counts: dict[str, int]) -> None:
    """Add a task's outcomes; never raises (metrics must not break delivery)."""
    try:
        cache = caches["default"]
        for outcome, n in counts.items():
            if not n:
                continue
            try:
                cache.incr(delivery_counter_key(outcome), n)
            except ValueError:
                if not cache.add(delivery_counter_key(outcome), n, timeout=None):
                    cache.incr(delivery_counter_key(outcome), n)
    except Exception as exc:
        logger.warning("callbacks: could not count deliveries in the cache: %r", exc)


def deliveries_counted() -> dict[str, int]:
    values = caches["default"].get_many([delivery_counter_key(o) for o in OUTCOMES])
    return {o: int(values.get(delivery_counter_key(o), 0)) for o in OUTCOMES}
