"""Keeping a chunk's lease alive while its worker sends it.

A chunk's lease is short (DISPATCH_LEASE_SECONDS), so a worker that dies
(SIGKILL, a lost host) gives its messages back within about that long, however
big the batch. While the worker lives, a thread renews the lease every third of
it. A renewal that finds a message no longer held, or that cannot reach the
database, means the lease may be lost: the worker then stops sending and
writes no outcome for the chunk (its claim token no longer matches anyway).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from django.db import connection

from messages_app.models import Message
from messages_app.transitions import messages_renew_lease

logger = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, *, message_ids: Iterable[int], claim_token: uuid.UUID, lease_seconds: float) -> None:
        self.claim_token = claim_token
        self.lease_seconds = lease_seconds
        self._outstanding = set(message_ids)
        # Held while outcomes are written (recording()) and while a renewal runs, so a
        # renewal never mistakes a message whose outcome was just written for a lost one.
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{claim_token}", daemon=True)
        self.lost = False

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def done(self, message_ids: Iterable[int]) -> None:
        """These no longer need a lease (their outcome is written, or they were given back)."""
        with self._lock:
            self._outstanding.difference_update(message_ids)

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Write outcomes (and call done()) inside this: no renewal runs meanwhile."""
        with self._lock:
            yield

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.lease_seconds / 3):
                with self._lock:
                    outstanding = set(self._outstanding)
                    if not outstanding:
                        continue
                    try:
                        held = messages_renew_lease(
                            message_ids=outstanding, claim_token=self.claim_token, lease_seconds=self.lease_seconds
                        )
                        missing = outstanding - held
                        # A message deleted meanwhile is simply gone: not a lost lease.
                        deleted = missing - set(Message.objects.filter(pk__in=missing).values_list("pk", flat=True))
                    except Exception as exc:
                        self._lose(f"the renewal failed: {exc!r}")
                        return
                    self._outstanding -= deleted
                    missing -= deleted
                if missing:
                    self._lose(f"{len(missing)} messages are no longer held (first id {min(missing)})")
                    return
        finally:
            connection.close()  # this thread's own connection

    def _lose(self, why: str) -> None:
        self.lost = True
        logger.error("lease %s lost: %s; this worker writes no outcome for its chunk", self.claim_token, why)
