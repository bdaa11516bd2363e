"""How each configured provider is doing: its circuit and its pause after a 429
(shared state) and its last hour on record (the attempt log). Read by GET
/api/providers/, `manage.py providers status`, the dashboard, /metrics and /readyz."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import Avg, Count, Q
from django.utils import timezone

from dispatcher.engine.providers import provider_specs
from dispatcher.engine.providers.gate import Circuit, Pause, ProviderPause
from dispatcher.providers_conf import BACKEND_ALIASES
from messages_app.models import DeliveryAttempt
from restapi.redaction import url_redacted

Outcome = DeliveryAttempt.Outcome
_ALIAS_OF = {path: alias for alias, path in BACKEND_ALIASES.items()}


@dataclass(frozen=True)
class ProviderStatus:
    name: str
    backend: str
    url: str  # without user info or query values: anyone logged in may read it
    rate_per_second: float
    circuit: str  # closed, open or half_open
    consecutive_failures: int
    open_until: datetime | None
    outage_seconds: float
    paused_until: datetime | None  # after a 429, no worker asks it before then
    pause_reason: str  # e.g. "429 Retry-After 120 s"; empty when not paused
    sent_last_hour: int
    failed_last_hour: int  # attempts that did not end sent (retried, failed, deferred)
    latency_ms_last_hour: float | None


def provider_statuses(*, since: datetime | None = None) -> list[ProviderStatus]:
    since = since or timezone.now() - timedelta(hours=1)
    stats = {
        row["provider"]: row
        for row in DeliveryAttempt.objects.filter(started_at__gte=since)
        .exclude(provider="")
        .order_by()
        .values("provider")
        .annotate(
            sent=Count("id", filter=Q(outcome=Outcome.SENT)),
            failed=Count("id", filter=Q(outcome__in=[Outcome.RETRY, Outcome.FAILED, Outcome.DEFERRED])),
            latency=Avg("duration_ms", filter=Q(outcome=Outcome.SENT)),
        )
    }
    statuses = []
    for spec in provider_specs():
        circuit = Circuit(spec.name)
        state = circuit.state()
        pause = ProviderPause(spec.name).current()
        row = stats.get(spec.name, {})
        statuses.append(
            ProviderStatus(
                name=spec.name,
                backend=_ALIAS_OF.get(spec.backend, spec.backend),
                url=url_redacted(spec.url),
                rate_per_second=spec.rate_per_second,
                circuit=state.state,
                consecutive_failures=state.failures,
                open_until=datetime.fromtimestamp(state.open_until, tz=UTC) if state.open_until else None,
                outage_seconds=round(circuit.outage_seconds(), 1),
                paused_until=_as_datetime(pause),
                pause_reason=pause.reason if pause is not None else "",
                sent_last_hour=row.get("sent", 0),
                failed_last_hour=row.get("failed", 0),
                latency_ms_last_hour=round(row["latency"], 1) if row.get("latency") is not None else None,
            )
        )
    return statuses


def provider_pauses() -> dict[str, Pause]:
    """The providers paused now (after a 429), by name: the pauses alone, without the attempt log."""
    pauses = {spec.name: ProviderPause(spec.name).current() for spec in provider_specs()}
    return {name: pause for name, pause in pauses.items() if pause is not None}


def _as_datetime(pause: Pause | None) -> datetime | None:
    return datetime.fromtimestamp(pause.until, tz=UTC) if pause is not None else None
