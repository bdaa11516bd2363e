"""Settings for the test suite: real PostgreSQL and Redis on localhost.

Override with the same environment variables as production (DATABASE_URL,
REDIS_URL); processes the tests start inherit these.
"""

import os
import secrets

# Strong enough for the production checks the tests run under (DEBUG is off).
os.environ.setdefault("SECRET_KEY", f"tests-only-{secrets.token_urlsafe(50)}")
# The test client, live_server and the fake provider speak plain http.
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
os.environ.setdefault("SESSION_COOKIE_SECURE", "false")
os.environ.setdefault("CSRF_COOKIE_SECURE", "false")
os.environ.setdefault("WEBHOOK_ALLOW_HTTP", "true")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/messaging")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("DISPATCH_PROVIDER_BACKEND", "locmem")
os.environ.setdefault("LOG_LEVEL", "INFO")
# A test makes many requests in well under a minute; the throttling tests set low
# rates of their own.
os.environ.setdefault("THROTTLE_USER_RATE", "1000000/min")
os.environ.setdefault("THROTTLE_ANON_RATE", "1000000/min")
os.environ.setdefault("THROTTLE_CALLBACK_FAILURE_RATE", "1000000/min")

from messaging_site.settings import *  # noqa: F403

# Hashing passwords slowly protects nothing in tests.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True

# The test client's login() calls authenticate() without a request, which axes
# refuses; the lockout tests switch it back on (tests/messaging_site/test_limits.py).
AXES_ENABLED = False
