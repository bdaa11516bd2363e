"""Settings for the test suite: real PostgreSQL and Redis on localhost.

Override with the same environment variables as production (DATABASE_URL,
REDIS_URL); processes the tests start inherit these.
"""

import os
import secrets

os.environ.setdefault("SECRET_KEY", f"tests-only-{secrets.token_hex(16)}")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/messaging")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("DISPATCH_PROVIDER_BACKEND", "locmem")
os.environ.setdefault("LOG_LEVEL", "INFO")

from messaging_site.settings import *  # noqa: F403

# Hashing passwords slowly protects nothing in tests.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
