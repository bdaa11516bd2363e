"""Numbers opted out in the last few minutes, in Redis (the default cache), for the
check a worker makes just before each send.

A chunk asks the database once, when it starts, which of its recipients opted out
(`selectors.messages_to_suppress`); it may then send for minutes. An opt-out is put
here before its transaction commits and kept for `recent_opt_out_seconds` (longer than
any chunk sends), so a send that starts after the commit finds its number here (one
key lookup, no query; a worker asks for a whole wave of sends it is about to start at
once) and asks the database before going on.

Redis unreachable: the opt-out is recorded all the same (logged), and the workers keep
to the check at the chunk's start (docs/RELIABILITY.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.core.cache import caches

from consent.conf import consent_settings

logger = logging.getLogger(__name__)

CACHE_ALIAS = "default"
KEY_PREFIX = "consent:recent-opt-out:"
WRITE_BATCH = 10_000


def _key(phone_number: str) -> str:
    return f"{KEY_PREFIX}{phone_number}"


def recent_opt_outs_add(*, phone_numbers: Sequence[str]) -> bool:
    """Put `phone_numbers` (E.164) among the recent opt-outs, in one round trip. Called
    inside the opt-out's transaction, before it commits; False if Redis is unreachable."""
    if not phone_numbers:
        return True
    timeout = consent_settings().recent_opt_out_seconds
    try:
        for start in range(0, len(phone_numbers), WRITE_BATCH):  # a list's import: pipelines of bounded size
            batch = phone_numbers[start : start + WRITE_BATCH]
            caches[CACHE_ALIAS].set_many(dict.fromkeys(map(_key, batch), 1), timeout=timeout)
    except Exception:
        logger.warning(
            "could not add %d number(s) to the recent opt-outs in Redis; sends already under way are "
            "checked only at their chunk's start",
            len(phone_numbers),
            exc_info=True,
        )
        return False
    return True


def numbers_recently_opted_out(*, phone_numbers: Sequence[str]) -> set[str]:
    """Which of `phone_numbers` (E.164) opted out in the last `recent_opt_out_seconds`, in
    one round trip (MGET) for a wave of sends about to start. Raises if Redis is unreachable."""
    if not phone_numbers:
        return set()
    found = caches[CACHE_ALIAS].get_many([_key(number) for number in phone_numbers])
    return {key.removeprefix(KEY_PREFIX) for key in found}


def number_recently_opted_out(*, phone_number: str) -> bool:
    """Whether `phone_number` (E.164) opted out in the last `recent_opt_out_seconds`, or
    since: the database says whether it still is. Raises if Redis is unreachable."""
    return caches[CACHE_ALIAS].has_key(_key(phone_number))
