"""When the database cannot serve a request, every route answers 503 with Retry-After in its
own shape (`{"detail"}` under /api/, the seed envelope on the Go service's routes, text on
the admin's pages), never a 500; while the pool knows PostgreSQL is unreachable, requests are
refused before their views, one a second going on to find out, and the probes still answer
(restapi.defaults, restapi.database_outage; #20, items 6 and 12).

The real thing, under gunicorn with its pool, is in tests/messaging_site/test_database_unavailable.py.
"""

from __future__ import annotations

import json
import time

import psycopg
import pytest
from django.db import OperationalError, connection
from django.test import Client

from restapi import database_outage
from restapi.database_outage import PROBE_EVERY_SECONDS, DatabaseReachability
from restapi.defaults import DATABASE_UNAVAILABLE_DETAIL, DATABASE_UNAVAILABLE_RETRY_AFTER_SECONDS, server_error
from tests.factories import make_user, token_for
from tests.processes import free_port

RETRY_AFTER = str(DATABASE_UNAVAILABLE_RETRY_AFTER_SECONDS)


@pytest.fixture(autouse=True)
def reachability(monkeypatch) -> DatabaseReachability:
    """This process's own record, fresh for each test."""
    fresh = DatabaseReachability()
    monkeypatch.setattr(database_outage, "reachability", fresh)
    return fresh


@pytest.fixture
def token(db) -> str:
    return token_for(make_user(username="root", superuser=True))


def assert_api_503(response) -> None:
    assert response.status_code == 503, response.content[:300]
    assert response["Retry-After"] == RETRY_AFTER
    assert json.loads(response.content) == {"detail": DATABASE_UNAVAILABLE_DETAIL}


def assert_seed_503(response) -> None:
    assert response.status_code == 503, response.content[:300]
    assert response["Retry-After"] == RETRY_AFTER
    body = response.json()
    assert body["status"] == 503
    assert body["fail"]["msg"] == DATABASE_UNAVAILABLE_DETAIL


def assert_page_503(response) -> None:
    assert response.status_code == 503, response.content[:300]
    assert response["Retry-After"] == RETRY_AFTER
    assert response["Content-Type"].startswith("text/plain")
    assert response.content.decode() == DATABASE_UNAVAILABLE_DETAIL


def test_while_postgresql_is_known_unreachable_requests_are_refused_before_their_views(monkeypatch, token):
    # No probe within the test, however slowly a loaded machine runs it.
    reachability = DatabaseReachability(probe_every_seconds=3600)
    monkeypatch.setattr(database_outage, "reachability", reachability)
    reachability.connect_failed(psycopg.OperationalError("connection refused"))
    client = Client(headers={"Authorization": f"Token {token}"})

    assert_api_503(client.get("/api/messages/"))
    assert_api_503(client.post("/api/messages/", {"recipient_phone_number": "+905551112233", "content": "hi"}))
    assert_seed_503(client.get("/status"))
    assert_page_503(client.get("/admin/"))
    # The probes are served: /healthz needs no database, /readyz finds out for itself.
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200  # the test's database is there all along


def test_one_request_a_second_goes_on_to_find_out_and_a_connection_ends_the_outage(reachability, token):
    reachability.connect_failed(psycopg.OperationalError("connection refused"))
    client = Client(headers={"Authorization": f"Token {token}"})
    assert_api_503(client.get("/api/messages/"))

    time.sleep(PROBE_EVERY_SECONDS)
    # The one let through. It runs on the test's connection, open all along, so it is given
    # no new one and the outage stands: the next request waits for the next second.
    assert client.get("/api/messages/").status_code == 200
    assert_api_503(client.get("/api/messages/"))

    reachability.connected()  # what the pool's next connection reports
    assert [client.get("/api/messages/").status_code for _ in range(3)] == [200] * 3


@pytest.mark.django_db(transaction=True)
def test_a_failed_attempt_while_connections_are_given_out_is_no_outage(reachability, token):
    # The pool growing while PostgreSQL refuses more clients: its connections still serve.
    connection.close()
    client = Client(headers={"Authorization": f"Token {token}"})
    assert client.get("/api/messages/").status_code == 200  # given a connection

    reachability.connect_failed(psycopg.OperationalError("sorry, too many clients already"))

    assert not reachability.down
    assert client.get("/api/messages/").status_code == 200
    # Once no connection has been given out for a while, a failed attempt is an outage.
    time.sleep(PROBE_EVERY_SECONDS)
    reachability.connect_failed(psycopg.OperationalError("connection refused"))
    assert_api_503(client.get("/api/messages/"))


@pytest.mark.django_db(transaction=True)
def test_a_request_given_a_connection_ends_the_outage(reachability, token):
    reachability.connect_failed(psycopg.OperationalError("connection refused"))
    connection.close()  # the next query connects: Django's connection_created
    time.sleep(PROBE_EVERY_SECONDS)

    client = Client(headers={"Authorization": f"Token {token}"})
    assert client.get("/api/messages/").status_code == 200  # the probe, given a connection

    assert not reachability.down
    assert [client.get("/api/messages/").status_code for _ in range(3)] == [200] * 3


def test_handler500_answers_503_for_a_database_error_raised_outside_any_view(rf):
    # Django calls handler500 while it handles the exception (one raised in a middleware:
    # a session saved, say), so the exception is sys.exc_info()'s.
    request = rf.get("/api/messages/")
    try:
        raise OperationalError("connection refused")
    except OperationalError:
        response = server_error(request)
    assert_api_503(response)


@pytest.fixture
def database_unreachable():
    """The test's connection closed and pointed at a port where nothing listens: the next
    query reconnects and gets psycopg's real OperationalError (connection refused)."""
    port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = free_port()
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port


@pytest.mark.django_db(transaction=True)
def test_an_operational_error_is_a_503_in_each_routes_shape_never_a_500(database_unreachable_after_login):
    api_client, page_client = database_unreachable_after_login

    assert_api_503(api_client.get("/api/messages/"))
    assert_api_503(api_client.post("/api/messages/bulk/", {"messages": []}, content_type="application/json"))
    assert_seed_503(api_client.get("/status"))
    # A staff member's admin page: the session is read from the database in the view.
    assert_page_503(page_client.get("/admin/messages_app/message/"))
    assert page_client.get("/healthz").status_code == 200
    assert page_client.get("/readyz").status_code == 503


@pytest.fixture
def database_unreachable_after_login(request, db):
    """A token client and a logged-in staff browser, then the database goes away."""
    user = make_user(username="staff-root", superuser=True)
    api_client = Client(raise_request_exception=False, headers={"Authorization": f"Token {token_for(user)}"})
    page_client = Client(raise_request_exception=False)
    page_client.force_login(user)
    request.getfixturevalue("database_unreachable")
    return api_client, page_client
