"""Clients of the Go service send no credentials. With SEED_API_TRUSTED_NETWORKS set,
the seed routes take a request from one of those networks as made by
SEED_API_SERVICE_USER (off by default; see settings)."""

from __future__ import annotations

import logging
from ipaddress import IPv6Address, ip_address

from django.conf import settings
from django.contrib.auth import get_user_model
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

logger = logging.getLogger(__name__)

# What a browser adds to a request (fetch, a form) and the Go service's clients never send.
BROWSER_HEADERS = ("HTTP_ORIGIN", "HTTP_SEC_FETCH_SITE")


def client_address_trusted(address: str) -> bool:
    try:
        parsed = ip_address(address)
    except ValueError:
        return False
    if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped:  # ::ffff:10.0.0.5 on a dual-stack socket
        parsed = parsed.ipv4_mapped
    return any(parsed in network for network in settings.SEED_API_TRUSTED_NETWORKS)


class TrustedNetworkAuthentication(BaseAuthentication):
    """Listed after token and session authentication: a request with credentials is theirs."""

    def authenticate(self, request: Request):
        meta = request._request.META
        if not settings.SEED_API_TRUSTED_NETWORKS or any(header in meta for header in BROWSER_HEADERS):
            return None
        # REMOTE_ADDR, never X-Forwarded-For: a client can write any address there.
        if not client_address_trusted(meta.get("REMOTE_ADDR", "")):
            return None
        user = get_user_model().objects.filter(username=settings.SEED_API_SERVICE_USER, is_active=True).first()
        if user is None:
            logger.warning(
                "SEED_API_SERVICE_USER %r is not an active user: request from trusted %s refused",
                settings.SEED_API_SERVICE_USER,
                meta.get("REMOTE_ADDR"),
            )
            return None
        return (user, None)


class TrustedNetworkScheme(OpenApiAuthenticationExtension):
    """OpenAPI has no security scheme for "by the client's address": the schema keeps
    documenting the token, and the seed operations' descriptions say the rest."""

    target_class = TrustedNetworkAuthentication
    name: list[str] = []

    def get_security_definition(self, auto_schema) -> list:
        return []

    def get_security_requirement(self, auto_schema) -> None:
        return None
