"""REST framework's token authentication, refusing keys no token can have.

A key is looked up in the database as given; one with a NUL in it (the header
`Authorization: Token abc\\x00def`) made PostgreSQL's driver raise, a 500. Keys
are 40 hexadecimal characters (REST framework makes them), so anything that is
not printable ASCII is answered like any wrong key: 401.
"""

from __future__ import annotations

from rest_framework import authentication
from rest_framework.exceptions import AuthenticationFailed


class TokenAuthentication(authentication.TokenAuthentication):
    def authenticate_credentials(self, key: str):
        if not (key.isascii() and key.isprintable()):
            raise AuthenticationFailed("Invalid token.")
        return super().authenticate_credentials(key)
