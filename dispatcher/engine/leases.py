"""Keeping a chunk's lease alive while its worker sends it.

A chunk's lease is short (DISPATCH_LEASE_SECONDS), so a worker that dies
(SIGKILL, a lost host) gives its messages back within about that long, however
big the batch. While the worker lives, a thread renews the lease every third of
it. A renewal that finds a message no longer held, or that cannot reach the
database, means the lease may be lost: the worker then stops sending and
writes no outcome for the chunk (its claim token no longer matches anyway).

A worker that was frozen (SIGSTOP, a paused VM or container, a host that slept)
learns of a lost lease only from its next renewal, and its sends could start
first. So before each send it also asks `holds()`: whether the last successful
renewal is recent enough that the lease surely still runs, without a query.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from django.db import connection

from messages_app.models import Message
from messages_app.transitions import messages_renew_lease

logger = logging.getLogger(__name__)

# A worker starts no send once this share of the lease has passed since its last successful renewal
# began. Renewals come every third of the lease, so a running worker never gets there; a frozen one,
# or one whose renewals stall, stops before the lease can have run out, with a quarter of it to spare
# for the clocks' rates and the moment between the check and the request.
TRUSTED_SHARE_OF_LEASE = 0.75

# On Linux, a clock that also counts while the host sleeps (CLOCK_MONOTONIC stops then), as the
# database's clock, which ends the lease, goes on meanwhile.
_LEASE_CLOCK = getattr(time, "CLOCK_BOOTTIME", None)


def lease_clock() -> float:
    """Seconds on a clock that no change of the wall clock moves, to measure how long ago a lease
    was renewed. The lease runs `lease_seconds` from the database's time of the renewing statement,
    which is no earlier than a reading of this clock taken just before the statement was sent."""
    return time.clock_gettime(_LEASE_CLOCK) if _LEASE_CLOCK is not None else time.monotonic()


class LeaseKeeper:
    def __init__(
        self,
        *,
        message_ids: Iterable[int],
        claim_token: uuid.UUID,
        lease_seconds: float,
        renewed_at: float | None = None,
    ) -> None:
        """`renewed_at`: the lease_clock() reading taken just before the statement that last
        renewed the lease (the chunk's start); by default, now."""
        self.claim_token = claim_token
        self.lease_seconds = lease_seconds
        self._renewed_at = lease_clock() if renewed_at is None else renewed_at
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

    def holds(self) -> bool:
        """Whether the lease surely still runs: not known lost, and renewed recently enough
        (TRUSTED_SHARE_OF_LEASE). Asked before each send; costs no query."""
        return not self.lost and lease_clock() - self._renewed_at < self.lease_seconds * TRUSTED_SHARE_OF_LEASE

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
                    renewing_at = lease_clock()
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
                    if not missing:
                        self._renewed_at = renewing_at
                if missing:
                    self._lose(f"{len(missing)} messages are no longer held (first id {min(missing)})")
                    return
        finally:
            connection.close()  # this thread's own connection

    def _lose(self, why: str) -> None:
        self.lost = True
        logger.error("lease %s lost: %s; this worker writes no outcome for its chunk", self.claim_token, why)
