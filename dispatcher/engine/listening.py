"""Waiting for PostgreSQL notifications (LISTEN/NOTIFY) instead of polling.

A listener holds a connection of its own, in autocommit, outside Django's connection
handling (which closes and reopens connections between requests and tasks, and with
them their LISTENs). `open_listener` gives None on a database other than PostgreSQL,
or when the connection cannot be made: the caller then sleeps its poll as before.
"""

from __future__ import annotations

import logging

from django.db import DEFAULT_DB_ALIAS, connections

logger = logging.getLogger(__name__)


class NotificationListener:
    def __init__(self, raw_connection, channels: tuple[str, ...]) -> None:
        self._connection = raw_connection
        self.channels = channels

    def wait(self, timeout: float) -> list[str]:
        """Wait up to `timeout` seconds for a notification on any of the channels; return
        the payloads of those that came (empty: none came). Every notification already
        waiting is taken with it, so a burst of them wakes the caller once (the debounce)."""
        payloads = [n.payload for n in self._connection.notifies(timeout=max(timeout, 0.0), stop_after=1)]
        if payloads:
            payloads.extend(n.payload for n in self._connection.notifies(timeout=0.0))
        return payloads

    def close(self) -> None:
        try:
            self._connection.close()
        except Exception:  # already broken: nothing to give back
            logger.debug("closing a broken listener connection", exc_info=True)


def open_listener(*channels: str, using: str = DEFAULT_DB_ALIAS) -> NotificationListener | None:
    """A listener on `channels`, or None where there is no LISTEN (not PostgreSQL) or no connection."""
    wrapper = connections[using]
    if wrapper.vendor != "postgresql":
        return None
    import psycopg

    params = dict(wrapper.get_connection_params())
    for key in ("cursor_factory", "context", "prepare_threshold", "server_side_binding"):
        params.pop(key, None)
    try:
        raw = psycopg.connect(**params, autocommit=True)
        for channel in channels:
            raw.execute(f'LISTEN "{channel}"')
    except Exception as exc:
        logger.warning("could not listen on %s, polling instead: %r", ", ".join(channels), exc)
        return None
    return NotificationListener(raw, channels)
