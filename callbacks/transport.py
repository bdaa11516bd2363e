"""POSTing one signed event to a checked target (callbacks.addresses): connected to the
address that was checked (the name goes in the Host header and TLS's server name, never
resolved again), redirects not followed, the answer read up to a bound, a short timeout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import urllib3
from django.utils import timezone
from urllib3.exceptions import HTTPError as Urllib3Error

from callbacks.addresses import CheckedTarget

MAX_RETRY_AFTER_SECONDS = 86_400


@dataclass(frozen=True)
class PostResult:
    http_status: int | None  # None: no answer (connection error, timeout)
    duration_ms: int
    error: str = ""
    retry_after_seconds: float | None = None


def pool_for(target: CheckedTarget, *, timeout: float, maxsize: int) -> urllib3.HTTPConnectionPool:
    """A connection pool to the target's checked address (kept for one task's batch)."""
    timeouts = urllib3.Timeout(connect=min(timeout, 3.0), read=timeout)
    if target.scheme == "https":
        return urllib3.HTTPSConnectionPool(
            target.address,
            target.port,
            timeout=timeouts,
            maxsize=maxsize,
            retries=False,
            server_hostname=target.host,
            assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED",
        )
    return urllib3.HTTPConnectionPool(target.address, target.port, timeout=timeouts, maxsize=maxsize, retries=False)


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (a number, or an HTTP date), within a day; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value) if value.isdigit() else (parsedate_to_datetime(value) - timezone.now()).total_seconds()
    except (TypeError, ValueError, OverflowError):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def post(
    pool: urllib3.HTTPConnectionPool,
    target: CheckedTarget,
    *,
    body: bytes,
    headers: dict[str, str],
    max_response_bytes: int,
) -> PostResult:
    host_header = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
    started = time.monotonic()
    try:
        response = pool.urlopen(
            "POST",
            target.path,
            body=body,
            headers={
                **headers,
                "Host": host_header,
                "Content-Type": "application/json",
                "User-Agent": "messaging-callbacks/1",
            },
            redirect=False,
            retries=False,
            preload_content=False,
            assert_same_host=False,
        )
        try:
            # Bounded: an endpoint that answers a huge body is not read past the bound.
            taken = response.read(max_response_bytes + 1)
        finally:
            if len(taken) > max_response_bytes:
                response.close()  # the rest is dropped with the connection
            else:
                response.release_conn()
    except (Urllib3Error, OSError) as exc:
        return PostResult(
            http_status=None,
            duration_ms=int((time.monotonic() - started) * 1000),
            error=f"{type(exc).__name__}: {exc}"[:500],
        )
    duration_ms = int((time.monotonic() - started) * 1000)
    status = response.status
    if 200 <= status < 300:
        return PostResult(http_status=status, duration_ms=duration_ms)
    error = f"HTTP {status}"
    if 300 <= status < 400:
        error += " (a redirect: not followed)"
    return PostResult(
        http_status=status,
        duration_ms=duration_ms,
        error=error,
        retry_after_seconds=retry_after_seconds(response.headers.get("Retry-After")) if status in (429, 503) else None,
    )
