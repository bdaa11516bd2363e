from __future__ import annotations

import threading

import pytest

from devtools.callback_receiver import receiver_server


@pytest.fixture
def receiver():
    """The tests' own callback endpoint (devtools.callback_receiver) on a free port of
    127.0.0.1, checking signatures with the `standardwebhooks` package; secrets are set
    once the endpoint is registered (`receiver.state.secrets`)."""
    server = receiver_server(port=0, secrets=[], quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
