"""The web tier, as deployed (gunicorn with gunicorn.conf.py, gevent workers, a database pool
per worker), when the database cannot serve a request: 503 with Retry-After, never a 500
or a wait of the pool's whole timeout, and the health checks keep answering.

- Overload (#20, item 6): 200 concurrent `POST /api/messages/bulk/` of 1,000 messages each
  got 146 answers 500 (psycopg_pool's PoolTimeout), and some /healthz probes failed.
- PostgreSQL unreachable (#20, item 12): /readyz and the API took 10 s (the pool's timeout)
  to answer.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from messages_app.models import Message
from tests.factories import MESSAGE_CLIENT_PERMS, make_user, phone_number, token_for
from tests.processes import free_port, production_gunicorn, wait_for, wait_for_log
from tests.processes import test_database_url as database_url_of_tests

pytestmark = [pytest.mark.process, pytest.mark.django_db(transaction=True)]

CLIENTS = 16
LOAD_SECONDS = 4.0
MESSAGES_PER_BULK = 1000
# A probe (docker-compose's, a load balancer's) gives up after a few seconds.
PROBE_TIMEOUT_SECONDS = 3.0


def call(method: str, url: str, *, body: object | None = None, headers: dict | None = None, timeout: float = 60):
    """(status, headers, parsed JSON body or None) of one request; an HTTP error is an answer too."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Host": "127.0.0.1", "Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, answer_headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        status, answer_headers, raw = exc.code, exc.headers, exc.read()
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw[:200]
    return status, answer_headers, parsed


class Prober:
    """GET /healthz every 0.2 s in a thread of its own until stopped: each probe's status (or the
    error that ended it) and how long it took."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.results: list[tuple[object, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz-prober", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status, _, _ = call("GET", f"{self.base}/healthz", timeout=PROBE_TIMEOUT_SECONDS)
            except OSError as exc:
                status = type(exc).__name__
            self.results.append((status, time.monotonic() - started))
            self._stop.wait(0.2)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(PROBE_TIMEOUT_SECONDS + 5)


def test_bulk_requests_beyond_the_pool_are_answered_503_with_retry_after_and_healthz_keeps_answering(tmp_path):
    token = token_for(make_user(username="bulk-client", perms=MESSAGE_CLIENT_PERMS))
    headers = {"Authorization": f"Token {token}"}
    body = {"messages": [{"recipient_phone_number": phone_number(), "content": "hi"} for _ in range(MESSAGES_PER_BULK)]}

    # One worker with one pooled connection that it waits at most 0.5 s for, and 16 clients
    # sending bulk requests for 4 s, each as soon as it has the last one's answer: more than
    # the pool can serve (a bulk request holds the connection for a few tenths of a second).
    with production_gunicorn(
        tmp_path, WEB_WORKERS="1", DATABASE_POOL_MAX_SIZE="1", DATABASE_POOL_TIMEOUT_SECONDS="0.5"
    ) as server:
        bulk = f"{server.base}/api/messages/bulk/"
        deadline = time.monotonic() + LOAD_SECONDS

        def client(_) -> list:
            answers = []
            while time.monotonic() < deadline:
                answers.append(call("POST", bulk, body=body, headers=headers))
            return answers

        with Prober(server.base) as prober, ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            answers = [answer for answers in pool.map(client, range(CLIENTS)) for answer in answers]
        log = server.log()

    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {201, 503}, (statuses, log[-3000:])
    refused = [(answer_headers, parsed) for status, answer_headers, parsed in answers if status == 503]
    assert refused, f"the pool was never exhausted, so this proves nothing: {statuses}"
    assert 201 in statuses, statuses
    for answer_headers, parsed in refused:
        assert 1 <= int(answer_headers["Retry-After"]) <= 60
        assert answer_headers["Content-Type"] == "application/json"
        assert "detail" in parsed
    # What was refused wrote nothing; what was accepted was written whole.
    assert Message.objects.count() == statuses.count(201) * MESSAGES_PER_BULK

    assert prober.results, "no probe ran"
    assert all(status == 200 for status, _ in prober.results), prober.results
    assert max(took for _, took in prober.results) < PROBE_TIMEOUT_SECONDS
    assert "Traceback" not in log, log[-3000:]


# --- PostgreSQL unreachable (#20, item 12) ---------------------------------------------------------


@pytest.fixture(params=["refused", "silent"])
def unreachable_database_url(request):
    """A DATABASE_URL nobody can serve: a port where nothing listens (connections refused), or
    one that takes connections and never answers (a partition or a hung server, where only
    connect_timeout ends the wait)."""
    if request.param == "refused":
        yield f"postgres://postgres@127.0.0.1:{free_port()}/messaging"
        return
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)  # connections wait in the backlog, never accepted
        yield f"postgres://postgres@127.0.0.1:{listener.getsockname()[1]}/messaging"


def timed(method: str, url: str, **kwargs) -> tuple[int, object, object, float]:
    started = time.monotonic()
    status, answer_headers, parsed = call(method, url, **kwargs)
    return status, answer_headers, parsed, time.monotonic() - started


def test_with_postgresql_unreachable_readyz_and_the_api_answer_503_within_seconds(tmp_path, unreachable_database_url):
    # A request waits up to 5 s for a pooled connection: the probe and the API must not.
    with production_gunicorn(
        tmp_path,
        DATABASE_URL=unreachable_database_url,
        WEB_WORKERS="1",
        DATABASE_POOL_MAX_SIZE="2",
        DATABASE_POOL_TIMEOUT_SECONDS="5",
        DATABASE_CONNECT_TIMEOUT_SECONDS="2",
    ) as server:
        for _ in range(3):
            status, _, parsed, took = timed("GET", f"{server.base}/readyz", timeout=10)
            assert (status, parsed) == (503, {"status": "not ready"})
            assert took < 2.0, took

        # Once the pool has found PostgreSQL unreachable, the API refuses at once; one request
        # a second goes on to the pool to find out whether it is back, and waits its timeout.
        wait_for_log(server, "PostgreSQL unreachable", timeout=10)
        api = f"{server.base}/api/messages/"
        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(
                pool.map(lambda _: timed("GET", api, headers={"Authorization": "Token x"}, timeout=10), range(20))
            )
        for status, answer_headers, parsed, _ in answers:
            assert status == 503, (status, parsed)
            assert answer_headers["Retry-After"] == "5"
            assert parsed == {"detail": "The database is busy or unavailable; retry later."}
        quick = [took for *_, took in answers if took < 1.0]
        assert len(quick) >= 18, sorted(took for *_, took in answers)

        status, _, _, took = timed("GET", f"{server.base}/healthz", timeout=5)
        assert status == 200
        assert took < 1.0
        log = server.log()
    assert "Traceback" not in log, log[-3000:]


class Forwarder:
    """A TCP port that forwards each connection to the test's PostgreSQL while `up`, and
    refuses connections while down: PostgreSQL going away and coming back, as the web
    tier sees it, without stopping the shared server."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None

    def up(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def down(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def test_once_postgresql_is_back_the_api_and_readyz_serve_again_within_seconds(tmp_path):
    token = token_for(make_user(username="reader", perms=MESSAGE_CLIENT_PERMS))
    settings_dict = connection.settings_dict
    forwarder = Forwarder((settings_dict["HOST"] or "127.0.0.1", int(settings_dict["PORT"] or 5432)))
    database_url = database_url_of_tests().replace(f":{settings_dict['PORT'] or 5432}/", f":{forwarder.port}/")
    api, headers = "/api/messages/", {"Authorization": f"Token {token}"}
    try:
        with production_gunicorn(
            tmp_path,
            DATABASE_URL=database_url,
            WEB_WORKERS="1",
            DATABASE_POOL_MAX_SIZE="2",
            DATABASE_POOL_TIMEOUT_SECONDS="2",
        ) as server:
            assert call("GET", f"{server.base}/readyz", timeout=10)[0] == 503
            wait_for_log(server, "PostgreSQL unreachable", timeout=10)
            assert call("GET", server.base + api, headers=headers, timeout=10)[0] == 503

            forwarder.up()
            back = time.monotonic()
            wait_for(
                lambda: call("GET", server.base + api, headers=headers, timeout=10)[0] == 200,
                timeout=20,
                interval=0.2,
                what="the API to serve again",
            )
            print(f"served again {time.monotonic() - back:.1f} s after PostgreSQL came back")
            assert call("GET", f"{server.base}/readyz", timeout=10)[0] == 200
            # And it stays served: nothing refused once a connection succeeded.
            assert [call("GET", server.base + api, headers=headers)[0] for _ in range(10)] == [200] * 10
            assert "PostgreSQL reachable again" in server.log()
    finally:
        forwarder.down()
