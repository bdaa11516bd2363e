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


def delivery_cache_record(*, provider_message_id: str, sent_at: datetime) -> bool:
    """Store the delivery record; return False (and log) if the cache is unreachable.

    A cache failure must never undo a delivery the provider accepted, so errors
    are reported, not raised.
    """
    record = {"messageId": provider_message_id, "timestamp": int(sent_at.timestamp())}
    try:
        caches[settings.DELIVERY_CACHE_ALIAS].set(
            delivery_cache_key(provider_message_id),
            record,
            timeout=dispatcher_settings().delivery_cache_ttl_seconds,
        )
    except Exception:
        logger.warning("could not cache delivery messageId=%s", provider_message_id, exc_info=True)
        return False
    return True


def delivery_cache_get(provider_message_id: str) -> dict | None:
    return caches[settings.DELIVERY_CACHE_ALIAS].get(delivery_cache_key(provider_message_id))
