"""What each pytest-xdist worker of `make test` keeps to itself.

pytest-django gives each worker a test database of its own (`test_messaging_gw0`, ...).
Redis is ours to split: every test empties its Redis db, so each worker gets its own,
counted down from the one the run was given (15 by default: gw0 15, gw1 14). The
processes a test starts inherit both variables and land on the same db.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"


def redis_url_for_this_worker() -> str:
    current = os.environ.get("REDIS_URL")
    # Kept aside once, by the first process to read it (pytest's controller), since
    # REDIS_URL itself is rewritten below and inherited by the workers.
    base = os.environ.setdefault("TESTS_REDIS_URL", current or DEFAULT_REDIS_URL)
    if current and current != base:
        return current  # already this worker's, or a test's own server for the process it starts
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    url = urlsplit(base)
    return url._replace(path=f"/{int(url.path.strip('/') or 0) - worker}").geturl()
