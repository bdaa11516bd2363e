"""Safe client retries: an `Idempotency-Key` header on a POST that creates something.

The same key with the same request answers the first response again and does
nothing more; the same key with a different request is refused (422); two
requests with one key at the same moment do the work once (a unique constraint,
not a check-then-insert). Keys are per user and kept IDEMPOTENCY_KEY_TTL_HOURS
(24 by default), then pruned. A request that fails (4xx) keeps no key, so the
client can correct it and retry with the same key.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from restapi.models import IdempotencyKey

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# Visible ASCII, as header values should be; long enough for any UUID or hash.
KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")
MISMATCH = "This Idempotency-Key was used with a different request; use a new key for a new request."


def _ttl() -> timedelta:
    return timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)


def _fingerprint(request: Request) -> str:
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.path.encode(), request.body):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def idempotent(
    request: Request,
    handle: Callable[[], Response],
    *,
    mismatch: Callable[[str], Response] | None = None,
) -> Response:
    """Answer `handle()`, or, for a key already used, the answer it got then.

    `mismatch(reason)` makes the 422 for a key reused with another request (the
    seed routes answer in their own envelope); by default DRF's error shape.
    """
    key = request.headers.get(HEADER)
    if key is None:
        return handle()
    if not KEY_PATTERN.fullmatch(key):
        raise ValidationError({HEADER: ["Must be 1 to 255 visible ASCII characters."]})
    fingerprint = _fingerprint(request)
    with transaction.atomic():
        IdempotencyKey.objects.filter(user=request.user, key=key, created_at__lt=timezone.now() - _ttl()).delete()
        try:
            with transaction.atomic():
                record = IdempotencyKey.objects.create(user=request.user, key=key, fingerprint=fingerprint)
        except IntegrityError:
            first = IdempotencyKey.objects.get(user=request.user, key=key)
            if first.fingerprint != fingerprint:
                if mismatch is not None:
                    return mismatch(MISMATCH)
                return Response({"detail": MISMATCH}, status=status.HTTP_422_UNPROCESSABLE_ENTITY)
            logger.info("Idempotency-Key %r of user %s replayed: answered as the first time", key, request.user.pk)
            return Response(first.response_body, status=first.status_code, headers={REPLAYED_HEADER: "true"})
        response = handle()
        if response.status_code >= 400:
            transaction.set_rollback(True)  # nothing was done: the key stays free
            return response
        record.status_code, record.response_body = response.status_code, response.data
        record.save(update_fields=["status_code", "response_body"])
    return response


def idempotency_keys_prune(*, created_before: datetime | None = None) -> int:
    """Delete keys older than IDEMPOTENCY_KEY_TTL_HOURS (a django-q2 schedule runs this
    hourly), or created before `created_before` when that cutoff is the later one: the
    retention schedule passes its own, so no key outlives the messages its answer names."""
    cutoff = timezone.now() - _ttl()
    if created_before is not None:
        cutoff = max(cutoff, created_before)
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()
    if deleted:
        logger.info("pruned %d idempotency keys created before %s", deleted, cutoff.isoformat())
    return deleted
