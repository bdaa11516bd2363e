"""The admin is branded as this service and lists its apps in the operators' order."""

from __future__ import annotations

import re

import pytest
from django.contrib import admin
from django.test import Client

from messaging_site.admin_site import MessagingAdminSite
from tests.factories import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def client_factory():
    return Client


@pytest.fixture
def superuser_client(client):
    client.force_login(make_user(username="root", superuser=True))
    return client


def test_every_admin_page_names_the_service(superuser_client, client_factory):
    pages = [(superuser_client, "/admin/"), (superuser_client, "/admin/messages_app/message/")]
    for http, url in [*pages, (client_factory(), "/admin/login/")]:
        html = http.get(url).content.decode()
        assert re.search(r"<title>[^<]*\| Message sending service</title>", html), url
        assert '<a href="/admin/">Message sending service</a>' in html, url
        assert "Django administration" not in html and "Django site admin" not in html, url


def test_the_index_is_titled_and_lists_messages_first(superuser_client):
    response = superuser_client.get("/admin/")

    assert "<h1>Operator console</h1>" in response.content.decode()
    labels = [app["app_label"] for app in response.context["app_list"]]
    assert labels[:4] == ["messages_app", "dispatcher", "consent", "audit"]
    rest = [app["name"] for app in response.context["app_list"][3:]]
    assert rest == sorted(rest, key=lambda name: str(name).lower())  # the others as Django orders them
    html = response.content.decode()
    order = [html.index(f'class="app-{label} module') for label in ("messages_app", "dispatcher", "auth")]
    assert order == sorted(order)


def test_one_app_s_page_still_lists_just_that_app(superuser_client):
    response = superuser_client.get("/admin/dispatcher/")

    assert [app["app_label"] for app in response.context["app_list"]] == ["dispatcher"]


def test_admin_site_is_the_service_s_site():
    assert isinstance(admin.site, MessagingAdminSite)


# A change list filters by what its address says; values the database refuses are a bad
# filter (the admin's own "?e=1"), not a 500: an offset PostgreSQL cannot read (beyond
# 15:59) and a NUL, on this service's admins and the others the site shows.
REFUSED_LOOKUPS = {
    "message-send-after-offset-23-59": "/admin/messages_app/message/?send_after__gte=2030-01-01T00:00:00%2B23:59",
    "message-created-at-offset-23-59": "/admin/messages_app/message/?created_at__gte=2030-01-01T00:00:00%2B23:59",
    "message-content-nul": "/admin/messages_app/message/?content=a%00b",
    "audit-created-at-offset-23-59": "/admin/audit/controlaction/?created_at__lt=2030-01-01T00:00:00%2B23:59",
    "schedules-next-run-offset-23-59": "/admin/django_q/schedule/?next_run__gte=2030-01-01T00:00:00%2B23:59",
    "users-username-nul": "/admin/auth/user/?username=a%00b",
}


@pytest.mark.parametrize("url", REFUSED_LOOKUPS.values(), ids=REFUSED_LOOKUPS.keys())
def test_a_lookup_the_database_refuses_is_a_bad_filter_not_a_crash(superuser_client, url):
    response = superuser_client.get(url)

    assert response.status_code == 302, response.status_code
    assert response["Location"].endswith("?e=1")
    assert superuser_client.get(response["Location"]).status_code == 200
