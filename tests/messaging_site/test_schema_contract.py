"""Where Schemathesis, run from outside against /api/schema/, found the server and
its schema disagreeing; each case both ways: what the schema says, and what the
server does with it."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from dispatcher.models import DispatcherState
from messages_app.models import Message
from tests.factories import make_message, make_user, token_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema() -> dict:
    return APIClient().get("/api/schema/", {"format": "json"}).json()


@pytest.fixture
def client() -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(make_user(username='root', superuser=True))}")
    return client


def component(schema: dict, ref: str) -> dict:
    return schema["components"]["schemas"][ref.rpartition("/")[2]]


def test_an_empty_status_filter_is_refused_as_the_schema_lists_no_empty_status(schema, client):
    [status] = [p for p in schema["paths"]["/api/messages/"]["get"]["parameters"] if p["name"] == "status"]
    assert "" not in status["schema"]["enum"]
    make_message()

    response = client.get("/api/messages/?status=")

    assert response.status_code == 400
    assert "status" in response.json()
    assert client.get("/api/messages/?status=unsent").json()["results"]  # a real status still filters


def test_a_patch_body_must_name_a_field_in_the_schema_as_on_the_server(schema, client):
    body = schema["paths"]["/api/dispatcher/"]["patch"]["requestBody"]
    for media in body["content"].values():
        assert component(schema, media["schema"]["$ref"])["minProperties"] == 1

    before = DispatcherState.objects.values().first()
    response = client.patch("/api/dispatcher/", {}, format="json")

    assert response.status_code == 400
    assert DispatcherState.objects.values().first() == before


def test_bulk_documents_and_accepts_json_only(schema, client):
    assert set(schema["paths"]["/api/messages/bulk/"]["post"]["requestBody"]["content"]) == {"application/json"}

    form = client.post("/api/messages/bulk/", {"messages": "x"}, format="multipart")
    urlencoded = client.post("/api/messages/bulk/", "messages=x", content_type="application/x-www-form-urlencoded")

    assert form.status_code == urlencoded.status_code == 415
    assert not Message.objects.exists()
