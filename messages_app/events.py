"""What happened to messages, told to whoever listens (the callbacks app's outbox).

messages_app sits below the apps that act on these events (import-linter's layers), so
it only announces them: a listener registers itself (from its AppConfig.ready) and is
called by the transitions inside their own transaction, once per batch with the ids of
the messages that changed. A listener that writes rows (an outbox) so writes them in the
same transaction as the status change: committed with it, or rolled back with it.

`wants(kind)` is asked before anything is gathered, so a kind nobody wants costs a
function call; the listener keeps its answer cheap (the callbacks app caches it).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol


class EventListener(Protocol):
    def wants(self, kind: str) -> bool: ...

    def happened(
        self,
        *,
        kind: str,
        message_ids: Sequence[int] = (),
        subject: dict[str, Any] | None = None,
        occurred_at: datetime | None = None,
    ) -> None: ...


class EventHub:
    """One kind of event source: messages' status changes here, consent's changes in consent.events."""

    def __init__(self) -> None:
        self._listeners: list[EventListener] = []

    def listen(self, listener: EventListener) -> None:
        if listener not in self._listeners:
            self._listeners.append(listener)

    def forget(self, listener: EventListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def wanted(self, kind: str) -> bool:
        return any(listener.wants(kind) for listener in self._listeners)

    def announce(
        self,
        *,
        kind: str,
        message_ids: Sequence[int] = (),
        subject: dict[str, Any] | None = None,
        occurred_at: datetime | None = None,
    ) -> None:
        """Tell the listeners that want `kind`: about messages (`message_ids`), or about
        something else (`subject`: what the event says, e.g. a number that opted out)."""
        if not message_ids and subject is None:
            return
        for listener in self._listeners:
            if listener.wants(kind):
                listener.happened(kind=kind, message_ids=message_ids, subject=subject, occurred_at=occurred_at)


# A message's status changed: the kind is its new status (sent, failed, expired, cancelled,
# suppressed), or its delivery receipt's (delivered, undelivered).
message_events = EventHub()
