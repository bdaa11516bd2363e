"""Slow clients cannot take the web tier down: the production server setup
(gunicorn with gunicorn.conf.py, as the Dockerfile and docker-compose run it,
DEBUG off) keeps answering while 50 connections hold a request head open.

With gunicorn's sync workers, two such connections made the API, the admin and
/healthz unreachable for 23-30 s, repeatable at will (#14).
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing

import pytest

from tests.factories import make_user, token_for
from tests.processes import production_gunicorn

pytestmark = [pytest.mark.process, pytest.mark.django_db(transaction=True)]

SLOW_CLIENTS = 50
ANSWER_WITHIN_SECONDS = 1.0


def get(url: str, *, timeout: float, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Host": "127.0.0.1", **(headers or {})})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


def slow_header_connection(base: str) -> socket.socket:
    """A connection that sends a request line, a Host header and half a header line, and then nothing."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Never-Finished: ")
    return sock


def timed_get(url: str, **kwargs) -> tuple[int, float]:
    started = time.monotonic()
    status, _ = get(url, timeout=ANSWER_WITHIN_SECONDS, **kwargs)
    return status, time.monotonic() - started


def test_slow_header_connections_do_not_hold_the_web_workers(tmp_path):
    token = token_for(make_user(username="root", superuser=True))
    with production_gunicorn(tmp_path) as server, ExitStack() as held:
        base = server.base
        for _ in range(SLOW_CLIENTS):
            held.enter_context(closing(slow_header_connection(base)))
        time.sleep(0.5)  # every worker has taken its share of the slow connections

        for path in ("/healthz", "/readyz"):
            status, took = timed_get(base + path)
            assert status == 200, path
            assert took < ANSWER_WITHIN_SECONDS, (path, took)

        # Requests that use the database still have it (a pool per worker), many at once too.
        api = f"{base}/api/dispatcher/"
        headers = {"Authorization": f"Token {token}"}
        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(lambda _: get_as_a_client_would(api, headers=headers), range(40)))
        assert answers == [200] * 40


def get_as_a_client_would(url: str, *, headers: dict) -> int:
    """GET, asking again after Retry-After on a 503: a burst beyond a worker's pool of connections
    is refused that way when no connection frees up within DATABASE_POOL_TIMEOUT_SECONDS (on a
    loaded machine, 20 at once did not), which is the service's answer to a burst, not an outage."""
    for _ in range(5):
        try:
            return get(url, timeout=10, headers=headers)[0]
        except urllib.error.HTTPError as refused:
            if refused.code != 503 or not refused.headers.get("Retry-After"):
                raise
            time.sleep(min(float(refused.headers["Retry-After"]), 5.0))
    return get(url, timeout=10, headers=headers)[0]
