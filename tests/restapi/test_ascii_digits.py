"""Ids and integers are read in ASCII digits only: int() takes any Unicode decimal
digit, so /api/messages/\u0661/ (ARABIC-INDIC DIGIT ONE) was message 1 and
{"interval_seconds": "\u0665"} saved 5. The request-body cases are rows of
tests/messages_app/test_bad_input.py; these are the addresses."""

from __future__ import annotations

import base64

import pytest

from messages_app.models import Message
from tests.factories import make_message, make_user

pytestmark = pytest.mark.django_db

ONE = {
    "arabic-indic": "\u0661",
    "extended-arabic-indic": "\u06f1",
    "devanagari": "\u0967",
    "fullwidth": "\uff11",
    "mathematical-bold": "\U0001d7cf",
}


@pytest.fixture
def client(client_for):
    return client_for(make_user(username="root", superuser=True))


@pytest.fixture
def message_one():
    message = make_message(status=Message.Status.FAILED, attempts=5)
    Message.objects.filter(pk=message.pk).update(id=1)
    return Message.objects.get(pk=1)


@pytest.mark.parametrize("one", list(ONE.values()), ids=list(ONE))
@pytest.mark.parametrize("suffix", ["", "attempts/"])
def test_a_message_id_in_other_digits_is_not_found(client, message_one, one, suffix):
    assert client.get(f"/api/messages/1/{suffix}").status_code == 200

    response = client.get(f"/api/messages/{one}/{suffix}")

    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


@pytest.mark.parametrize("one", list(ONE.values()), ids=list(ONE))
def test_requeue_by_an_id_in_other_digits_changes_nothing(client, message_one, one):
    assert client.post(f"/api/messages/{one}/requeue/").status_code == 404
    assert Message.objects.get(pk=1).status == Message.Status.FAILED


@pytest.mark.parametrize("one", list(ONE.values()), ids=list(ONE))
def test_the_admin_does_not_open_message_one_for_other_digits(message_one, one, django_user_model):
    from django.test import Client

    admin = Client()
    admin.force_login(make_user(username="admin", superuser=True))
    assert admin.get("/admin/messages_app/message/1/change/").status_code == 200

    response = admin.get(f"/admin/messages_app/message/{one}/change/")

    assert response.status_code == 302  # "doesn't exist", back to the list
    assert response["Location"] == "/admin/"


def test_a_cursor_position_in_other_digits_is_an_invalid_cursor(client, message_one):
    cursor = base64.b64encode(f"p={ONE['arabic-indic']}".encode()).decode()
    response = client.get("/api/messages/", {"cursor": cursor})
    assert response.status_code == 404
    assert response.json() == {"detail": "Invalid cursor"}
