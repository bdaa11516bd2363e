"""REST framework plumbing shared by every API view: request throttles, the
exception handler that answers what Django refuses in a body (too large: 413;
too many fields or files: 400) in JSON, and Django's error handlers (400, 404,
500), which answer JSON for the API's addresses: `{"detail": ...}` under /api/,
the Go service's envelope on its routes (their views give `error_body`).

Everything the application itself answers under /api/ and on the seed routes is
therefore JSON in its documented shape; what the server refuses before Django
sees the request (an over-long request line, gunicorn's 414) is not ours."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import (
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, resolve
from django.views.defaults import bad_request as django_bad_request
from django.views.defaults import page_not_found
from django.views.defaults import server_error as django_server_error
from django_redis.exceptions import ConnectionInterrupted
from redis.exceptions import RedisError
from rest_framework import status, throttling
from rest_framework.exceptions import APIException, ParseError
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


def api_exception_for(exc: Exception) -> Exception:
    """The REST framework exception for what Django raises when a view reads the
    body (REST framework knows none of them, so they would reach Django's HTML
    "Bad Request"); any other exception as it is."""
    if isinstance(exc, RequestDataTooBig):
        return request_body_too_large()
    if isinstance(exc, TooManyFieldsSent):
        return ParseError(f"Too many fields in the body (limit {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS}).")
    if isinstance(exc, TooManyFilesSent):
        return ParseError(f"Too many files in the body (limit {settings.DATA_UPLOAD_MAX_NUMBER_FILES}).")
    if isinstance(exc, SuspiciousOperation):
        return ParseError("The request could not be read.")
    return exc


def exception_handler(exc: Exception, context: dict):
    return drf_exception_handler(api_exception_for(exc), context)


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


def _json_error(request: HttpRequest, code: int, detail: str) -> JsonResponse | None:
    """The JSON answer for an error on one of the API's addresses, or None elsewhere."""
    try:
        view_class = getattr(resolve(request.path_info).func, "view_class", None)
    except Resolver404:
        view_class = None
    error_body = getattr(view_class, "error_body", None)
    if error_body is not None:  # the seed routes' envelope
        return JsonResponse(error_body(code, detail), status=code)
    if request.path_info.startswith("/api/"):
        return JsonResponse({"detail": detail}, status=code)
    return None


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's 400 for what it refuses before any view (a Host not in ALLOWED_HOSTS, say)."""
    response = _json_error(request, status.HTTP_400_BAD_REQUEST, "Bad request.")
    return response or django_bad_request(request, exception)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's 404 for an address no route matches: JSON under /api/, as every
    other API answer is, and the usual page elsewhere (the admin, the docs)."""
    if request.path_info.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
    return page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """Django's 500. The error itself is in the log (django.request), never in the answer."""
    response = _json_error(request, status.HTTP_500_INTERNAL_SERVER_ERROR, "Server error.")
    return response or django_server_error(request)
