"""Schemathesis against the service's own OpenAPI schema (/api/schema/), in process.

Every documented operation is called with generated input, valid and invalid
(schemathesis's positive and negative modes), authenticated as a superuser, so
permissions never hide a path. Each answer must not be a 5xx, must have a status
code, content type, headers and body the schema documents, and the same call
without credentials must be refused: 401, or the 404 a URL that matches no route
gives everyone, never the data.

The app is called through WSGI inside the test's transaction (pytest-django's
`db`), so whatever the calls write is rolled back after each operation.
"""

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.factories import make_user, token_for

# Loading the schema needs no database: /api/schema/ is anonymous and reads none.
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", WSGIHandler())

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    # Resends a successful call without credentials, and with made-up ones.
    ignored_auth,
    # Input the schema forbids (an empty `?status=`, a form body where only JSON is
    # documented) must be refused, not quietly taken.
    negative_data_rejection,
]

# About 25 s for all the operations on this 2-core machine.
EXAMPLES_PER_OPERATION = 30


@pytest.fixture
def superuser_token(db):
    """A superuser's API token, and a WSGI handler that keeps the test's connection.

    Django closes the database connection when a request finishes; its test client
    switches that off, and the WSGI handler schemathesis calls must too, or the
    test's transaction would be closed under it.
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield token_for(make_user(username="schemathesis", superuser=True))
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


# Providers' callbacks, receipts and replies (POST), are anonymous by design (their
# signature is the authentication): checked on their own below. GET /api/inbound/ is not.
RECEIPTS = "^/api/receipts/"
REPLIES = "^/api/inbound/"


@schema.exclude(path_regex=RECEIPTS).exclude(path_regex=REPLIES, method="POST").parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_conforms_to_the_schema_and_needs_authentication(case, superuser_token):
    authenticated = case.call_and_validate(headers={"Authorization": f"Token {superuser_token}"}, checks=CHECKS)

    anonymous = case.call()

    if anonymous.status_code == 404:
        # An address no route matches (e.g. /api/messages/0.5/attempts/) is not
        # found for anyone; anything else must not tell an anonymous caller more.
        assert authenticated.status_code == 404, (authenticated.status_code, anonymous.text)
    else:
        assert anonymous.status_code == 401, (anonymous.status_code, anonymous.text)
        assert anonymous.headers.get("www-authenticate", [""])[0].startswith("Token")


@schema.include(path_regex=f"{RECEIPTS}|{REPLIES}", method="POST").parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_receipt_callbacks_refuse_unsigned_requests_as_documented(case, superuser_token):
    response = case.call_and_validate(
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    )
    # Made-up bodies carry no valid signature: no POST is accepted.
    if case.method.upper() == "POST":
        assert response.status_code in (401, 404), (response.status_code, response.text)
