"""Telling whoever sends that a message is due now, without their polling for it.

On PostgreSQL a write that queues a message due at once also runs `NOTIFY` on
`MESSAGES_DUE_CHANNEL`, in the writing transaction: PostgreSQL delivers it only when
that transaction commits (a rolled-back create wakes nobody), and folds the
notifications of one transaction into one. The dispatcher listens on the channel
(dispatcher.engine.pacing) and claims within its pace at once instead of at the
next tick. Other databases have no such signal: the ticks find the message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime

from django.db import DEFAULT_DB_ALIAS, connections

logger = logging.getLogger(__name__)

MESSAGES_DUE_CHANNEL = "messages_due"


def messages_due_announce(*, due: Iterable[tuple[str, datetime]] = (), using: str = DEFAULT_DB_ALIAS) -> None:
    """Announce on MESSAGES_DUE_CHANNEL that messages are due now (when the current
    transaction, if any, commits). Nothing on a database other than PostgreSQL.

    `due` is the (priority, next_attempt_at) of what was queued: the payload carries the
    earliest per priority, so the dispatcher reads its due queue from there even if the
    row committed after its claims had gone past that time (dispatcher.engine.claiming's
    floors: a transaction that stayed open, a send_after in the past, a web host whose
    clock is behind the database's)."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    earliest = due_earliest(due)
    payload = json.dumps({p: moment.isoformat() for p, moment in earliest.items()}) if earliest else ""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [MESSAGES_DUE_CHANNEL, payload])


def due_earliest(due: Iterable[tuple[str, datetime]]) -> dict[str, datetime]:
    """The earliest of the (priority, due time) pairs `due`, per priority."""
    earliest: dict[str, datetime] = {}
    for priority, moment in due:
        if priority not in earliest or moment < earliest[priority]:
            earliest[priority] = moment
    return earliest


def messages_due_earliest(payloads: Iterable[str]) -> dict[str, datetime]:
    """The earliest due time per priority that `payloads` (of MESSAGES_DUE_CHANNEL) name;
    an empty or unreadable payload names none (the wake still happens)."""
    named: list[tuple[str, datetime]] = []
    for payload in payloads:
        if not payload:
            continue
        try:
            pairs = [(str(p), datetime.fromisoformat(v)) for p, v in json.loads(payload).items()]
        except (ValueError, TypeError, AttributeError):
            logger.warning("ignoring an unreadable %s payload: %.80r", MESSAGES_DUE_CHANNEL, payload)
            continue
        named.extend((priority, moment) for priority, moment in pairs if moment.tzinfo is not None)
    return due_earliest(named)
