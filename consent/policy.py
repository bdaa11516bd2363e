"""What messages_app asks the consent app through its settings (it sits below it and
cannot import it): whom not to queue for (consent.selectors.recipients_refused, by
MESSAGE_RECIPIENT_POLICY) and when a marketing message may go (here, by MESSAGE_QUIET_HOURS)."""

from __future__ import annotations

from datetime import datetime

from consent.conf import consent_settings
from consent.quiet_hours import quiet_hours_opening


def marketing_opening(*, phone_number: str, at: datetime) -> tuple[datetime, str] | None:
    """None if a marketing message to `phone_number` may go at `at`; else when, and why not before."""
    return quiet_hours_opening(phone_number=phone_number, at=at, rules=consent_settings().quiet_hours)
