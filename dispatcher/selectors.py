from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dispatcher.models import DispatcherState
from dispatcher.services import dispatcher_state_ensure
from messages_app.models import Message
from messages_app.selectors import message_status_counts


@dataclass(frozen=True)
class DispatcherStatus:
    running: bool
    batch_size: int
    interval_seconds: int
    last_tick_at: datetime | None
    next_tick_at: datetime | None
    counts: dict[str, int]
    delivery_cache_pending: int


def dispatcher_status() -> DispatcherStatus:
    state: DispatcherState = dispatcher_state_ensure()
    return DispatcherStatus(
        running=state.running,
        batch_size=state.batch_size,
        interval_seconds=state.interval_seconds,
        last_tick_at=state.last_tick_at,
        next_tick_at=state.next_tick_at if state.running else None,
        counts=message_status_counts(),
        delivery_cache_pending=Message.objects.filter(delivery_cache_pending=True).count(),
    )
