"""Sending claimed messages and recording the outcome."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.utils import timezone

from dispatcher.delivery_cache import delivery_cache_record
from dispatcher.providers import BaseProvider, ProviderError
from messages_app.models import Message
from messages_app.services import messages_transition

logger = logging.getLogger(__name__)

Status = Message.Status
MAX_ERROR_LENGTH = 2000


@dataclass(frozen=True)
class DeliveryOutcome:
    message_id: int
    message_uuid: str
    sent: bool
    provider_message_id: str = ""
    error: str = ""
    cached: bool = False


def deliver_message(*, message: Message, provider: BaseProvider) -> DeliveryOutcome:
    """Send one claimed (`processing`) message and mark it `sent` or `failed`."""
    started = time.monotonic()
    try:
        result = provider.send(message)
    except ProviderError as exc:
        error = exc.reason
    except Exception as exc:  # a bug in a backend must not leave the message in processing
        logger.exception("provider backend crashed on message id=%s uuid=%s", message.pk, message.uuid)
        error = f"unexpected error in provider backend: {type(exc).__name__}: {exc}"
    else:
        sent_at = timezone.now()
        # Cache first, then mark sent: a reader that sees `sent` finds the record.
        # A cache failure is logged and never turns a delivery into a failure.
        cached = delivery_cache_record(provider_message_id=result.message_id, sent_at=sent_at)
        messages_transition(
            message_ids=[message.pk],
            from_status=Status.PROCESSING,
            to_status=Status.SENT,
            increment_attempts=True,
            sent_at=sent_at,
            provider_message_id=result.message_id,
            last_error="",
        )
        logger.info(
            "sent message id=%s uuid=%s messageId=%s in %.0f ms",
            message.pk,
            message.uuid,
            result.message_id,
            (time.monotonic() - started) * 1000,
        )
        return DeliveryOutcome(
            message_id=message.pk,
            message_uuid=str(message.uuid),
            sent=True,
            provider_message_id=result.message_id,
            cached=cached,
        )

    messages_transition(
        message_ids=[message.pk],
        from_status=Status.PROCESSING,
        to_status=Status.FAILED,
        increment_attempts=True,
        last_error=error[:MAX_ERROR_LENGTH],
    )
    logger.warning("failed message id=%s uuid=%s: %s", message.pk, message.uuid, error)
    return DeliveryOutcome(message_id=message.pk, message_uuid=str(message.uuid), sent=False, error=error)
