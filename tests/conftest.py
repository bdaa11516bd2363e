from __future__ import annotations

import pytest
from django.conf import settings
from django.core.cache import caches
from rest_framework.test import APIClient

from dispatcher.providers import locmem
from tests.factories import make_user, token_for


@pytest.fixture(autouse=True)
def _clean_caches_and_outbox():
    locmem.reset()
    for alias in settings.CACHES:
        caches[alias].clear()
    yield
    locmem.reset()


@pytest.fixture
def user(db):
    return make_user(username="alice")


@pytest.fixture
def staff_user(db):
    return make_user(username="sam", staff=True)


@pytest.fixture
def anon_client() -> APIClient:
    return APIClient()


@pytest.fixture
def client_for():
    """client_for(user) -> an APIClient authenticated with that user's token."""

    def make(user) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(user)}")
        return client

    return make


@pytest.fixture
def api_client(user, client_for) -> APIClient:
    return client_for(user)


@pytest.fixture
def staff_client(staff_user, client_for) -> APIClient:
    return client_for(staff_user)
