"""Request throttles: over the rate, 429 with Retry-After. Counted in the default cache
(Redis), so a limit holds across every web process.

- THROTTLE_USER_RATE per authenticated user, on every API view;
- THROTTLE_ANON_RATE per client address, on the views anonymous clients may use;
- THROTTLE_CALLBACK_FAILURE_RATE per client address, on the routes providers call
  back (delivery receipts), counting only the callbacks refused as not signed by a
  provider (restapi.callbacks): a provider whose signatures check is never slowed,
  however many receipts it sends, and an address that forges them is refused before
  its next body is read or its signature computed.
"""

from __future__ import annotations

import logging

from django_redis.exceptions import ConnectionInterrupted
from redis.exceptions import RedisError
from rest_framework import throttling
from rest_framework.settings import api_settings

logger = logging.getLogger(__name__)

# A cache that does not answer: the throttle lets the request through rather than fail it.
CACHE_DOWN = (ConnectionInterrupted, RedisError, OSError)


class _RuntimeRateMixin:
    """Rates read when a throttle is made, not when the module is imported.

    REST framework copies DEFAULT_THROTTLE_RATES into a class attribute at import,
    so a changed setting (a test's override) would never reach it.

    The history lives in the default cache (Redis). If that is unreachable the
    request is let through: a throttle must not turn a cache outage into an API
    outage, and Redis being down already never fails a delivery.
    """

    def get_rate(self):
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def allow_request(self, request, view) -> bool:
        try:
            return super().allow_request(request, view)
        except CACHE_DOWN as exc:
            logger.warning("throttle %s skipped, the cache is unreachable: %s", self.scope, exc)
            return True


class UserRateThrottle(_RuntimeRateMixin, throttling.UserRateThrottle):
    """THROTTLE_USER_RATE per authenticated user."""


class AnonRateThrottle(_RuntimeRateMixin, throttling.AnonRateThrottle):
    """THROTTLE_ANON_RATE per client address, for the views anonymous clients may use (schema, docs)."""


class _FailureCounting(throttling.SimpleRateThrottle):
    """REST framework's sliding window per client address, except that asking does not
    count: a request is refused once its address has `rate` failures in the window, and
    `record_failure` adds one."""

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def _read_history(self, request, view) -> None:
        self.key = self.get_cache_key(request, view)
        self.now = self.timer()
        self.history = [at for at in self.cache.get(self.key, []) if at > self.now - self.duration]

    def allow_request(self, request, view) -> bool:
        if self.rate is None:
            return True
        self._read_history(request, view)
        if len(self.history) >= self.num_requests:
            return self.throttle_failure()
        return True

    def record_failure(self, request, view) -> None:
        if self.rate is None:
            return
        try:
            self._read_history(request, view)
            self.history.insert(0, self.now)
            self.cache.set(self.key, self.history, self.duration)
        except CACHE_DOWN as exc:
            logger.warning("throttle %s did not count a failure, the cache is unreachable: %s", self.scope, exc)


class CallbackFailureThrottle(_RuntimeRateMixin, _FailureCounting):
    """THROTTLE_CALLBACK_FAILURE_RATE refused callbacks per client address (restapi.callbacks)."""

    scope = "callback_failure"
