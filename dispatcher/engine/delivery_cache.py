"""The record of each delivery in Redis: `messages:<messageId>` -> {"messageId", "timestamp"}."""

from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings
from django.core.cache import caches

from dispatcher.conf import dispatcher_settings

logger = logging.getLogger(__name__)

KEY_PREFIX = "messages:"


def bare_key(key: str, key_prefix: str, version: int) -> str:
    """Cache KEY_FUNCTION that stores keys exactly as given (no prefix or version)."""
    return key


def delivery_cache_key(provider_message_id: str) -> str:
    return f"{KEY_PREFIX}{provider_message_id}"


def delivery_cache_record_many(*, deliveries: list[tuple[str, datetime]]) -> bool:
    """Store many delivery records in one round trip (a pipeline on Redis); False if unreachable."""
    records = {
        delivery_cache_key(message_id): {"messageId": message_id, "timestamp": int(sent_at.timestamp())}
        for message_id, sent_at in deliveries
    }
    try:
        caches[settings.DELIVERY_CACHE_ALIAS].set_many(
            records, timeout=dispatcher_settings().delivery_cache_ttl_seconds
        )
    except Exception:
        logger.warning("could not cache %d deliveries", len(records), exc_info=True)
        return False
    return True


def delivery_cache_get(provider_message_id: str) -> dict | None:
    return caches[settings.DELIVERY_CACHE_ALIAS].get(delivery_cache_key(provider_message_id))
