"""REST framework plumbing shared by every API view (its throttles are in
restapi.throttles): the exception handler that answers what Django refuses in a
body (too large: 413; too many fields or files: 400) in JSON, and Django's error
handlers (400, 404, 500), which answer JSON for the API's addresses: `{"detail": ...}`
under /api/, the Go service's envelope on its routes (their views give `error_body`).

When the database cannot serve a request (every pooled connection busy for longer
than DATABASE_POOL_TIMEOUT_SECONDS, or PostgreSQL unreachable: an OperationalError
wherever it surfaces), the answer is 503 with Retry-After in the same shapes, never
a 500: REST framework's views through `exception_handler`, Django's own through
`DatabaseUnavailableMiddleware`, which also refuses requests at once while the pool
knows PostgreSQL is unreachable (restapi.database_outage).

Everything the application itself answers under /api/ and on the seed routes is
therefore JSON in its documented shape; what the server refuses before Django
sees the request (an over-long request line, gunicorn's 414) is not ours."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import (
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, resolve
from django.views.defaults import bad_request as django_bad_request
from django.views.defaults import page_not_found
from django.views.defaults import server_error as django_server_error
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.views import exception_handler as drf_exception_handler

from restapi import database_outage

logger = logging.getLogger(__name__)


class RequestBodyTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "request_too_large"


def request_body_too_large() -> RequestBodyTooLarge:
    """The 413 for a body over DATA_UPLOAD_MAX_MEMORY_SIZE, naming the limit so a client can split its request."""
    return RequestBodyTooLarge(f"Request body too large (limit {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes).")


# What a client refused for want of a database connection is told to wait: long enough
# for a burst to drain or a failover to finish, short enough not to lose it.
DATABASE_UNAVAILABLE_RETRY_AFTER_SECONDS = 5
DATABASE_UNAVAILABLE_DETAIL = "The database is busy or unavailable; retry later."


class DatabaseUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = DATABASE_UNAVAILABLE_DETAIL
    default_code = "database_unavailable"

    def __init__(self) -> None:
        super().__init__()
        self.wait = DATABASE_UNAVAILABLE_RETRY_AFTER_SECONDS  # REST framework's Retry-After, as for a 429


def is_database_unavailable(exc: BaseException | None) -> bool:
    """Whether `exc` says the database could not serve the request now, rather than that the
    request or the code is wrong: no pooled connection in time (psycopg_pool's PoolTimeout),
    a refused, dropped or timed-out connection, a cancelled statement. Django raises them as
    its OperationalError (or InterfaceError, for a connection already closed)."""
    return isinstance(exc, (OperationalError, InterfaceError))


def _log_database_unavailable(exc: BaseException) -> None:
    cause = exc.__cause__ or exc
    logger.warning("database unavailable, answered 503: %s: %s", type(cause).__name__, str(cause).strip()[:200])


def api_exception_for(exc: Exception) -> Exception:
    """The REST framework exception for what Django raises when a view reads the
    body (REST framework knows none of them, so they would reach Django's HTML
    "Bad Request") or when the database cannot serve it (503); any other
    exception as it is."""
    if is_database_unavailable(exc):
        _log_database_unavailable(exc)
        return DatabaseUnavailable()
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


def database_unavailable_response(request: HttpRequest) -> HttpResponse:
    """503 with Retry-After: JSON on the API's addresses (the seed routes' envelope on theirs), text elsewhere."""
    code = status.HTTP_503_SERVICE_UNAVAILABLE
    response = _json_error(request, code, DATABASE_UNAVAILABLE_DETAIL) or HttpResponse(
        DATABASE_UNAVAILABLE_DETAIL, status=code, content_type="text/plain; charset=utf-8"
    )
    response["Retry-After"] = str(DATABASE_UNAVAILABLE_RETRY_AFTER_SECONDS)
    return response


def answers_without_database(view: Callable) -> Callable:
    """Mark a view that needs no database connection (the health probes), so it is served
    while PostgreSQL is known to be unreachable rather than refused."""
    view.answers_without_database = True
    return view


class DatabaseUnavailableMiddleware:
    """503 with Retry-After when the database cannot serve a request, for every view.

    While the pool's last attempt to connect failed (restapi.database_outage), a request
    is refused before its view runs, instead of waiting the pool's timeout to fail; one
    a second goes on to find out. An OperationalError from one of Django's own views (the
    admin, the dashboard) is answered here; REST framework's views answer theirs in
    `exception_handler`, in their own shapes."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view_func: Callable, view_args, view_kwargs) -> HttpResponse | None:
        if getattr(view_func, "answers_without_database", False) or not database_outage.reachability.refuse_request():
            return None
        return database_unavailable_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_database_unavailable(exception):
            return None
        _log_database_unavailable(exception)
        return database_unavailable_response(request)


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
    """Django's 500. The error itself is in the log (django.request), never in the answer.

    Django calls it while handling the exception, so sys.exc_info() is that exception: one
    that says the database is unavailable, raised where no view's handler saw it (in a
    middleware: a session saved, a user looked up), is a 503 with Retry-After too."""
    if is_database_unavailable(sys.exc_info()[1]):
        return database_unavailable_response(request)
    response = _json_error(request, status.HTTP_500_INTERNAL_SERVER_ERROR, "Server error.")
    return response or django_server_error(request)
