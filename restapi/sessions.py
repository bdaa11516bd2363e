"""Django's database session store (SESSION_ENGINE), refusing keys no session can have.

The session cookie is looked up in the database as sent; one with a NUL in it
made PostgreSQL's driver raise, a 500 on every page and API call that reads the
session. Django makes keys of 32 lowercase letters and digits, so any other
cookie is treated as no session at all, as an unknown key is.
"""

from __future__ import annotations

from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore


class SessionStore(DatabaseSessionStore):
    def _validate_session_key(self, key: str | None) -> bool:
        return bool(super()._validate_session_key(key) and key.isascii() and key.isalnum())
