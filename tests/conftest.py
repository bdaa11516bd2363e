from __future__ import annotations

import pytest
from django.conf import settings
from django.core.cache import caches
from rest_framework.test import APIClient

from callbacks.outbox import endpoint_cache
from dispatcher.engine.providers import gate, locmem
from dispatcher.permissions import CONTROL_DISPATCHER
from messages_app.permissions import CANCEL_MESSAGE, REQUEUE_MESSAGE
from tests.factories import MESSAGE_CLIENT_PERMS, make_user, token_for


@pytest.fixture(autouse=True)
def _clean_caches_and_outbox(monkeypatch):
    locmem.reset()
    # Whether this process saw the gates' Redis fail is per process: each test starts unaware.
    monkeypatch.setattr(gate, "_shared", gate._SharedStateDown())
    for alias in settings.CACHES:
        caches[alias].clear()
    # The callback endpoints this process knows of belong to the test that made them.
    endpoint_cache.clear()
    yield
    locmem.reset()


@pytest.fixture
def user(db):
    """A client of the API: may read and queue messages, nothing more (not staff)."""
    return make_user(username="alice", perms=MESSAGE_CLIENT_PERMS)


@pytest.fixture
def no_perms_user(db):
    """Logged in, and allowed nothing that needs a permission."""
    return make_user(username="nobody")


@pytest.fixture
def operator_user(db):
    """Not staff, but holds the dedicated permissions to control the dispatcher and requeue."""
    return make_user(username="olga", perms=[*MESSAGE_CLIENT_PERMS, CONTROL_DISPATCHER, REQUEUE_MESSAGE])


@pytest.fixture
def staff_user(db):
    """A staff operator as the upgrade left them (dispatcher migration 0005): staff status
    grants nothing by itself, so they hold the control, requeue and cancel permissions."""
    return make_user(username="sam", staff=True, perms=[CONTROL_DISPATCHER, REQUEUE_MESSAGE, CANCEL_MESSAGE])


@pytest.fixture
def bare_staff_user(db):
    """Staff, without any permission: may log in to the admin, and control nothing."""
    return make_user(username="stan", staff=True)


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


@pytest.fixture
def operator_client(operator_user, client_for) -> APIClient:
    return client_for(operator_user)


@pytest.fixture
def tasks_run_inline(monkeypatch):
    """django-q2 runs each task the moment it is queued, in this process (its sync
    mode), so the chunk tasks a tick hands out are sent before hand_out_tick returns."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", True)


# The modules that took longest in `make test` (315, 198, 175, 151 and 139 s of a 661 s run on a
# quiet machine, 2026-12-07), handed out first, longest first; then the other modules of tests
# that start processes; then the rest. Only the order changes: a module missing here runs anyway.
LONGEST_MODULES = (
    "tests/dispatcher/test_faults.py",
    "tests/bench/test_chaos.py",
    "tests/test_readme_commands.py",
    "tests/dispatcher/test_provider_faults.py",
    "tests/bench/test_history.py",
)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs it with `--dist loadfile --no-loadscope-reorder`) each
    test module runs whole on one worker, so a module of tests that start real processes runs them
    one at a time, as the time bounds they assert expect. Modules are handed out in the order
    sorted here: the longest first, so that none of them starts last and ends the run alone
    (xdist's own order, by number of tests, started the 198 s chaos module, one test, last)."""
    rank = {module: index for index, module in enumerate(LONGEST_MODULES)}

    def order(item) -> tuple[int, bool]:
        module = item.nodeid.split("::", 1)[0]
        return rank.get(module, len(rank)), item.get_closest_marker("process") is None

    items.sort(key=order)
