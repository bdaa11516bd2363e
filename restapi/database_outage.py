"""Whether this web process can reach PostgreSQL, as its connection pool last found out.

The pool (DATABASE_POOL_MAX_SIZE, gunicorn.conf.py) opens its connections in the
background while a request waits up to DATABASE_POOL_TIMEOUT_SECONDS for one, and it
keeps that request waiting the whole time even when every attempt to connect fails
at once: with PostgreSQL down, every request took the pool's timeout to fail. The
pool makes its connections with `ReachabilityRecordingConnection`, which notes each
attempt's outcome here; while the last one failed, requests are answered 503 at once
(restapi.defaults.DatabaseUnavailableMiddleware) but one a second, which goes on to
the pool and finds out. The first connection that succeeds ends the outage, and so
does a request that is given one (Django's connection_created, restapi.apps).

A failed attempt is no outage while requests are given connections: the pool grows
while PostgreSQL refuses more clients (too many connections) and its connections
still serve. So an attempt that fails within a second of a connection given out
changes nothing.

Only the pool's connections are watched: a process without a pool (qcluster, manage.py,
runserver) connects when a query needs it, bounded by DATABASE_CONNECT_TIMEOUT_SECONDS.
Imported by the settings, so nothing of Django here.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg

logger = logging.getLogger(__name__)

# While PostgreSQL is unreachable, one request this often goes on to the pool to find out.
PROBE_EVERY_SECONDS = 1.0


class DatabaseReachability:
    """The outcome of this process's last attempt to connect: its outage logged once (and its end)."""

    def __init__(self, *, probe_every_seconds: float = PROBE_EVERY_SECONDS) -> None:
        self.probe_every_seconds = probe_every_seconds
        self.down = False
        self._probe_at = 0.0
        self._connected_at = float("-inf")
        self._lock = threading.Lock()

    def connect_failed(self, exc: Exception) -> None:
        if time.monotonic() - self._connected_at < self.probe_every_seconds:
            return  # connections are being given out: PostgreSQL serves
        with self._lock:
            if not self.down:
                logger.warning(
                    "PostgreSQL unreachable (%s); requests answered 503 until a connection succeeds",
                    str(exc).strip()[:200],
                )
            self.down = True
            self._probe_at = time.monotonic() + self.probe_every_seconds

    def connected(self) -> None:
        self._connected_at = time.monotonic()
        if not self.down:  # the common case, on every request's connection: no lock
            return
        with self._lock:
            if self.down:
                logger.info("PostgreSQL reachable again")
            self.down = False

    def refuse_request(self) -> bool:
        """True while the last attempt to connect failed, except for one request every
        probe_every_seconds, which is let through to find out."""
        if not self.down:
            return False
        with self._lock:
            now = time.monotonic()
            if not self.down or now >= self._probe_at:
                self._probe_at = now + self.probe_every_seconds
                return False
            return True


reachability = DatabaseReachability()


class ReachabilityRecordingConnection(psycopg.Connection):
    """psycopg's connection, noting whether each attempt to connect succeeded (the pool's
    `connection_class`, messaging_site/settings.py)."""

    @classmethod
    def connect(cls, *args, **kwargs):
        try:
            connection = super().connect(*args, **kwargs)
        except psycopg.OperationalError as exc:
            reachability.connect_failed(exc)
            raise
        reachability.connected()
        return connection
