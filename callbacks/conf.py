"""The callbacks app's settings, read from the environment once by messaging_site.settings
into settings.CALLBACKS, and read back here (each call: tests override them)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

# The django-q2 cluster (and ORM queue) the deliveries run on: `Q_CLUSTER_NAME=callbacks
# manage.py qcluster`. A queue of its own: a dead endpoint never delays sending.
CLUSTER_NAME = "callbacks"

# Svix's schedule: the first try at once, then after these many seconds since the last
# failure; an event failing the last one is given up (`failed`).
RETRY_SCHEDULE_SECONDS = (0, 5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)


@dataclass(frozen=True)
class CallbackSettings:
    timeout_seconds: float  # connect and read, per request
    allow_http: bool  # plain http callback URLs (development, tests)
    allowed_networks: tuple[IPv4Network | IPv6Network, ...]  # private addresses allowed anyway
    disable_after_seconds: int  # an endpoint failing that long is disabled
    batch_size: int  # events one task delivers to one endpoint
    concurrency: int  # requests in flight per task
    lease_seconds: int  # a claim not finished by then is taken again (its worker died)
    poll_seconds: float  # how often the pump looks for due events
    pump_seconds: int  # how long one pump task runs before its successor takes over
    endpoint_cache_seconds: float  # how long a process trusts its list of wanted event types
    qcluster_nice: int  # the callbacks qcluster's CPU niceness
    max_response_bytes: int  # of an endpoint's answer, what is read (the rest is dropped)
    retry_schedule: tuple[float, ...]  # seconds before each try (the first: 0)
    secret_key: str  # derives every endpoint's signing secret (never stored)


def callback_settings() -> CallbackSettings:
    from django.conf import settings

    return CallbackSettings(**settings.CALLBACKS)
