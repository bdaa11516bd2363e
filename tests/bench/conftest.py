from __future__ import annotations

import pytest

from tests.bench import harness


@pytest.fixture
def bench_lock():
    """A benchmarks' database and Redis db (a slot, tests/bench/harness.py) are this test's while
    it runs: a test of another pytest-xdist worker, or of another test run, takes another slot or
    waits for one (the longest takes about a minute)."""
    try:
        with harness.bench_lock(wait=300):
            yield
    except TimeoutError as exc:
        pytest.fail(str(exc))
