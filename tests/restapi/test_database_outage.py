"""When the database cannot serve a request, every route answers 503 with Retry-After in its
own shape (`{"detail"}` under /api/, the seed envelope on the Go service's routes, text on
the admin's pages), never a 500; while the pool knows PostgreSQL is unreachable, requests are
refused before their views, one a second going on to find out, and the probes still answer
(restapi.defaults, restapi.database_outage; #20, items 6 and 12).

The real thing, under gunicorn with its pool, is in tests/messaging_site/test_database_unavailable.py.
"""

from __future__ import annotations

import time

import psycopg
import pytest
from django.db import connection
from django.test import Client

from restapi import database_outage
from restapi.database_outage import PROBE_EVERY_SECONDS, DatabaseReachability
from restapi.defaults import DATABASE_UNAVAILABLE_DETAIL, DATABASE_UNAVAILABLE_RETRY_AFTER_SECONDS
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
    assert response.json() == {"detail": DATABASE_UNAVAILABLE_DETAIL}


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


def test_while_postgresql_is_known_unreachable_requests_are_refused_before_their_views(reachability, token):
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
    assert client.get("/api/messages/").status_code == 200  # the one let through
    assert_api_503(client.get("/api/messages/"))  # the next waits for the next second

    reachability.connected()  # what the pool's next connection reports
    assert [client.get("/api/messages/").status_code for _ in range(3)] == [200] * 3


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
