"""Telling whoever sends that a message is due now, without their polling for it.

On PostgreSQL a write that queues a message due at once also runs `NOTIFY` on
`MESSAGES_DUE_CHANNEL`, in the writing transaction: PostgreSQL delivers it only when
that transaction commits (a rolled-back create wakes nobody), and folds the
notifications of one transaction into one. The dispatcher listens on the channel
(dispatcher.engine.pacing) and claims within its pace at once instead of at the
next tick. Other databases have no such signal: the ticks find the message.
"""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS, connections

MESSAGES_DUE_CHANNEL = "messages_due"


def messages_due_announce(*, using: str = DEFAULT_DB_ALIAS) -> None:
    """Announce on MESSAGES_DUE_CHANNEL that a message is due now (when the current
    transaction, if any, commits). Nothing on a database other than PostgreSQL."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, '')", [MESSAGES_DUE_CHANNEL])
