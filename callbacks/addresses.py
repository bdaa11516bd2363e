"""Where a callback may go: server-side request forgery checks.

A callback URL is https (plain http only where CALLBACK_ALLOW_HTTP says so), has no
user info, and its host resolves only to public addresses: no private, loopback,
link-local (the cloud metadata service at 169.254.169.254 among them), multicast,
reserved or unspecified address, unless CALLBACK_ALLOWED_NETWORKS holds it. The check
runs at registration and again at every send, on the addresses the name resolves to
then; the request goes to the address checked (callbacks.transport), never to a second
resolution of the name, so a DNS answer that changes in between cannot slip through.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from urllib.parse import urlsplit

from callbacks.conf import callback_settings


class UnsafeCallbackURL(ValueError):
    """A URL no callback may be sent to; the message says why (without the URL's query)."""


@dataclass(frozen=True)
class CheckedTarget:
    scheme: str
    host: str  # as written in the URL (the Host header, the TLS server name)
    port: int
    address: str  # the resolved address checked, which the request connects to
    path: str  # path and query

    @property
    def origin(self) -> str:
        return url_origin(f"{self.scheme}://{self.host}:{self.port}")


def url_origin(url: str) -> str:
    """scheme://host[:port] of `url`, lower case, the default port left out."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    port = parts.port
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"


def url_checked(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of a callback URL, or UnsafeCallbackURL: the checks that
    need no DNS."""
    conf = callback_settings()
    if len(url) > 2000:
        raise UnsafeCallbackURL("the URL is longer than 2000 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeCallbackURL(f"not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeCallbackURL("the URL must be https")
    if scheme == "http" and not conf.allow_http:
        raise UnsafeCallbackURL("the URL must be https (plain http is refused here: CALLBACK_ALLOW_HTTP)")
    if parts.username or parts.password:
        raise UnsafeCallbackURL("the URL must not hold a user name or password")
    if not parts.hostname:
        raise UnsafeCallbackURL("the URL has no host")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise UnsafeCallbackURL("the URL holds spaces or control characters")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80), path


def address_allowed(address: IPv4Address | IPv6Address) -> bool:
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in callback_settings().allowed_networks):
        return True
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def target_resolved(url: str) -> CheckedTarget:
    """The checked target of `url`: every address its host resolves to now must be allowed
    (one that is not refuses the URL), and the request goes to the first of them."""
    scheme, host, port, path = url_checked(url)
    try:
        literal = ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise CallbackHostUnresolved(f"{host} does not resolve: {exc}") from None
        addresses = [ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise CallbackHostUnresolved(f"{host} resolves to no address")
    for address in addresses:
        if not address_allowed(address):
            raise UnsafeCallbackURL(
                f"{host} resolves to {address}, a private, loopback, link-local or reserved address "
                "(CALLBACK_ALLOWED_NETWORKS does not allow it)"
            )
    return CheckedTarget(scheme=scheme, host=host, port=port, address=str(addresses[0]), path=path)


class CallbackHostUnresolved(OSError):
    """The host does not resolve now: a connection error, retried like one."""
