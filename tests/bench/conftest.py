from __future__ import annotations

import pytest

from tests.bench import harness


@pytest.fixture
def bench_lock():
    """The benchmarks' database and Redis db are this test's while it runs: a test of another
    pytest-xdist worker, or of another test run, waits for it (the longest takes about a minute)."""
    try:
        with harness.bench_lock(wait=300):
            yield
    except TimeoutError as exc:
        pytest.fail(str(exc))
