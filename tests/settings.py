"""Settings for the test suite: real PostgreSQL and Redis on localhost.

Override with the same environment variables as production (DATABASE_URL,
REDIS_URL); processes the tests start inherit these.
"""

import os
import secrets
from urllib.parse import urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured

# Strong enough for the production checks the tests run under (DEBUG is off).
os.environ.setdefault("SECRET_KEY", f"tests-only-{secrets.token_urlsafe(50)}")
# The test client, live_server and the fake provider speak plain http.
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
os.environ.setdefault("SESSION_COOKIE_SECURE", "false")
os.environ.setdefault("CSRF_COOKIE_SECURE", "false")
os.environ.setdefault("WEBHOOK_ALLOW_HTTP", "true")
# Status callbacks go to the tests' own receiver, plain http on this host (tests/callbacks).
os.environ.setdefault("CALLBACK_ALLOW_HTTP", "true")
os.environ.setdefault("CALLBACK_ALLOWED_NETWORKS", "127.0.0.1")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/messaging")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")


def _redis_url_of_xdist_worker() -> None:
    """pytest-xdist's worker gwN takes the Redis db 2N below REDIS_URL's (15, 13, 11, 9, 7, 5 by
    default, never the benchmarks' 12 and 14), since tests flush theirs. Done once, in the
    worker: the processes a test starts inherit the worker's REDIS_URL (or the one the test
    gives them) and must not move it again."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker or os.environ.get("TESTS_REDIS_URL_OF_WORKER") == worker:
        return
    base = urlsplit(os.environ["REDIS_URL"])
    number = int(worker.removeprefix("gw"))
    db = int(base.path.strip("/") or 0) - 2 * number
    if db < 0:
        raise ImproperlyConfigured(f"REDIS_URL {base.path!r} leaves no Redis db for pytest-xdist worker {worker}")
    os.environ["REDIS_URL"] = urlunsplit(base._replace(path=f"/{db}"))
    os.environ["TESTS_REDIS_URL_OF_WORKER"] = worker


_redis_url_of_xdist_worker()
os.environ.setdefault("DISPATCH_PROVIDER_BACKEND", "locmem")
os.environ.setdefault("LOG_LEVEL", "INFO")
# A test makes many requests in well under a minute; the throttling tests set low
# rates of their own.
os.environ.setdefault("THROTTLE_USER_RATE", "1000000/min")
os.environ.setdefault("THROTTLE_ANON_RATE", "1000000/min")
os.environ.setdefault("THROTTLE_CALLBACK_FAILURE_RATE", "1000000/min")

from messaging_site.settings import *  # noqa: E402, F403 (after the environment above is set)

# Hashing passwords slowly protects nothing in tests.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True

# The test client's login() calls authenticate() without a request, which axes
# refuses; the lockout tests switch it back on (tests/messaging_site/test_limits.py).
AXES_ENABLED = False
