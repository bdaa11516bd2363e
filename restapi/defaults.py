"""REST framework plumbing shared by every API view: request throttles, the
exception handler that answers an oversized body with a clear 413, and a JSON
404 for API addresses that match no route."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found
from django_redis.exceptions import ConnectionInterrupted
from redis.exceptions import RedisError
from rest_framework import status, throttling
from rest_framework.exceptions import APIException
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)


class RequestBodyTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "request_too_large"


def request_body_too_large() -> RequestBodyTooLarge:
    """The 413 for a body over DATA_UPLOAD_MAX_MEMORY_SIZE, naming the limit so a client can split its request."""
    return RequestBodyTooLarge(f"Request body too large (limit {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes).")


def exception_handler(exc: Exception, context: dict):
    # Django raises RequestDataTooBig when the view first reads the body; REST
    # framework does not know it, so it would reach Django's HTML "Bad Request".
    if isinstance(exc, RequestDataTooBig):
        exc = request_body_too_large()
    return drf_exception_handler(exc, context)


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
        except (ConnectionInterrupted, RedisError, OSError) as exc:
            logger.warning("throttle %s skipped, the cache is unreachable: %s", self.scope, exc)
            return True


class UserRateThrottle(_RuntimeRateMixin, throttling.UserRateThrottle):
    """THROTTLE_USER_RATE per authenticated user."""


class AnonRateThrottle(_RuntimeRateMixin, throttling.AnonRateThrottle):
    """THROTTLE_ANON_RATE per client address, for the views anonymous clients may use (schema, docs)."""


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's 404 for an address no route matches: JSON under /api/, as every
    other API answer is, and the usual page elsewhere (the admin, the docs)."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
    return page_not_found(request, exception)
