"""Liveness and readiness probes: GET /healthz and GET /readyz, anonymous.

/healthz answers as long as the process serves requests and touches nothing
else, so a database outage never gets a healthy process restarted. /readyz
checks what sending depends on: the database, the cache and, while the
dispatcher runs, that ticks still happen somewhere in the cluster. Both are
served while PostgreSQL is known to be down (restapi.defaults refuses other
requests then), and /readyz waits at most about a second for a database
connection, so a probe learns of an outage within its own timeout.

Every check is caught: a failing check is a 503, never a 500. Anyone may call
these, so an anonymous probe gets the status only; the checks (each one's
result, naming the exception's class of a failure; the details go to the log)
are for `Authorization: Bearer <METRICS_TOKEN>` or a staff session
(dispatcher.monitoring.access).

A provider paused after a 429 is shown to them too (`paused_providers`: until
when, and why), but is no check: readiness says whether this process should take
requests, and it should. Failing it would take every web process out of its load
balancer at once, so that a provider's throttling stopped the API from queueing
messages as well, and the pause ends by itself within PROVIDER_MAX_PAUSE_SECONDS.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime

from django.core.cache import caches
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from dispatcher.engine.providers.status import provider_pauses
from dispatcher.models import DispatcherState
from dispatcher.monitoring.access import MonitoringAccess, monitoring_access
from restapi.defaults import answers_without_database

logger = logging.getLogger(__name__)

OK = "ok"
CACHE_ALIAS = "default"
# A tick is overdue after max(3 intervals, STALE_TICK_FLOOR_SECONDS) + STALE_TICK_GRACE_SECONDS.
# The floor covers django-q2's pacing: a dispatch window starts once a minute at
# best, and its scheduler wakes only every 30 s, so gaps of about 90 s are normal
# after a worker restart even with a 1 s interval.
STALE_TICK_FLOOR_SECONDS = 180
STALE_TICK_GRACE_SECONDS = 30
# A probe (docker-compose's gives up after 5 s) gets its answer within this and a little:
# a database that gives no connection in this long is "not ready".
READINESS_DATABASE_WAIT_SECONDS = 1.0


def tick_overdue_after(interval_seconds: int) -> int:
    """Seconds without a tick after which a running dispatcher counts as stalled."""
    return max(3 * interval_seconds, STALE_TICK_FLOOR_SECONDS) + STALE_TICK_GRACE_SECONDS


def check_database() -> str:
    pool = getattr(connection, "pool", None)  # the web's pool (DATABASE_POOL_MAX_SIZE), or None
    if pool is None:
        # No pool (runserver, a test): connecting is bounded by DATABASE_CONNECT_TIMEOUT_SECONDS.
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return OK
    # A request waits up to DATABASE_POOL_TIMEOUT_SECONDS for a pooled connection, which is
    # longer than a probe waits for its answer: with PostgreSQL down, /readyz took the whole
    # timeout. The probe asks the same pool, with a deadline of its own.
    pool.open()  # as Django does before its first connection; a no-op once open
    with pool.connection(timeout=READINESS_DATABASE_WAIT_SECONDS) as pooled:
        pooled.execute("SELECT 1")
    return OK


def check_cache() -> str:
    # A key of its own per probe: probes of several processes at once must not
    # read each other's values, and a value left from an earlier probe cannot pass.
    key = f"health:readyz:{secrets.token_hex(8)}"
    cache = caches[CACHE_ALIAS]
    cache.set(key, "ok", timeout=30)
    answered = cache.get(key)
    cache.delete(key)
    return OK if answered == "ok" else "the cache did not return the value just written"


def check_dispatcher(*, now: datetime | None = None) -> str:
    """OK when stopped; when running, OK if it ticked (or was started or changed) recently enough."""
    state = (
        DispatcherState.objects.filter(pk=DispatcherState.SINGLETON_PK)
        .values("running", "interval_seconds", "last_tick_at", "updated_at")
        .first()
    )
    if state is None or not state["running"]:
        return OK
    now = now or timezone.now()
    limit = tick_overdue_after(state["interval_seconds"])
    # updated_at moves on start and on every tick, so a dispatcher started a
    # moment ago that has not ticked yet is not reported as stalled.
    latest = max((t for t in (state["last_tick_at"], state["updated_at"]) if t is not None), default=None)
    if latest is None:
        return "running but has never ticked"
    age = (now - latest).total_seconds()
    if age > limit:
        return f"running but no tick for {age:.0f} s (limit {limit} s): are the qcluster workers up?"
    return OK


def _run(name: str, check: Callable[[], str]) -> str:
    try:
        return check()
    except Exception as exc:
        logger.warning("readiness check %s failed: %r", name, exc)
        return f"unavailable ({type(exc).__name__})"


def readiness_checks() -> dict[str, str]:
    checks = {"database": _run("database", check_database), "cache": _run("cache", check_cache)}
    if checks["database"] == OK:
        checks["dispatcher"] = _run("dispatcher", check_dispatcher)
    else:
        checks["dispatcher"] = "not checked (database unavailable)"
    return checks


@answers_without_database
@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up. Nothing else is checked."""
    return JsonResponse({"status": "ok"})


# Served while PostgreSQL is known to be down, to say so (within about a second).
@answers_without_database
@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """200 when the database, the cache and (while running) the dispatcher's ticks are fine; else 503.
    The checks themselves only for the token or staff."""
    try:
        checks = readiness_checks()
    except Exception as exc:  # a bug here must still answer "not ready", not a 500
        logger.exception("readiness checks crashed")
        checks = {"readiness": f"unavailable ({type(exc).__name__})"}
    ready = all(result == OK for result in checks.values())
    body: dict = {"status": "ready" if ready else "not ready"}
    if monitoring_access(request) is MonitoringAccess.GRANTED:
        body["checks"] = checks
        body["paused_providers"] = paused_providers()
    return JsonResponse(body, status=200 if ready else 503)


def paused_providers() -> dict[str, dict[str, str]]:
    """The providers paused after a 429, by name: until when (ISO 8601, UTC) and why. Information, not a check."""
    try:
        pauses = provider_pauses()
    except Exception as exc:  # what it shows must never cost the probe its answer
        logger.warning("readiness: could not read the providers' pauses: %r", exc)
        return {}
    return {
        name: {"until": datetime.fromtimestamp(pause.until, tz=UTC).isoformat(), "reason": pause.reason}
        for name, pause in pauses.items()
    }
