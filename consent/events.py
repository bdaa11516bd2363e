"""What happened to consent and replies, told to whoever listens (the callbacks app's
outbox), inside the transaction that recorded it: kinds `opted_out` and `opted_in`
(subject: the numbers), `inbound` (subject: the ordinary replies received). As
messages_app.events, whose hub it reuses: consent sits below the callbacks app."""

from __future__ import annotations

from messages_app.events import EventHub

consent_events = EventHub()


def consent_changes_announce(*, numbers: list[str], status: str, method: str) -> None:
    if numbers and consent_events.wanted(status):
        consent_events.announce(
            kind=status, subject={"items": [{"phone_number": n, "status": status, "method": method} for n in numbers]}
        )
