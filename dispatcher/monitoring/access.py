"""Who may read the monitoring details: /metrics, and /readyz's checks.

Anyone may ask /healthz and /readyz whether the service is up and ready (probes
and load balancers send no credentials), but what the checks found (exception
class names, how long ticks have stalled) and the metrics (queue depth, traffic)
tell an outsider about the deployment, so they need `Authorization: Bearer
<METRICS_TOKEN>` (Prometheus) or the session of an active staff user (an operator
in a browser, logged in to the admin).
"""

from __future__ import annotations

import enum
import secrets

from django.http import HttpRequest

from dispatcher.conf import dispatcher_settings


class MonitoringAccess(enum.Enum):
    GRANTED = "granted"
    NO_CREDENTIALS = "no credentials"
    WRONG_TOKEN = "wrong token"  # noqa: S105 (a state, not a password)


def monitoring_access(request: HttpRequest) -> MonitoringAccess:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given.strip():
        token = dispatcher_settings().metrics_token
        if token and secrets.compare_digest(given.strip().encode(), token.encode()):
            return MonitoringAccess.GRANTED
        return MonitoringAccess.WRONG_TOKEN
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and user.is_active and user.is_staff:
        return MonitoringAccess.GRANTED
    return MonitoringAccess.NO_CREDENTIALS
