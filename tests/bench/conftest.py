from __future__ import annotations

import pytest

from tests.bench import harness


@pytest.fixture(scope="session")
def bench_lock():
    """The benchmarks' database and Redis db are this test run's for the whole session."""
    try:
        with harness.bench_lock():
            yield
    except TimeoutError as exc:
        pytest.fail(str(exc))
