"""The retention schedule's task (named by dotted path in dispatcher.schedule)."""

from __future__ import annotations

from retention.services import retention_apply


def retention_run() -> int:
    """Delete what is past its retention; return how many messages went."""
    run = retention_apply()
    return run.messages_total if run is not None else 0
