from __future__ import annotations

from rest_framework import status
from rest_framework.exceptions import APIException


class MessageStateError(Exception):
    """A message is not in the status an operation needs (e.g. requeue of a sent one)."""


class MessageImportError(Exception):
    """A file of messages cannot be imported at all: unreadable, not UTF-8, malformed CSV or
    without a required column. (A bad row is not this: it is reported and skipped.)"""


class RecipientRefused(APIException):
    """A message may not be queued for its recipient (who opted out): a 422 naming the
    reason wherever it is raised from (the API, the seed route). An APIException so that
    every REST view answers it alike; the admin and the CSV import report `reason`."""

    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "The recipient may not be sent messages."
    default_code = "recipient_refused"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__({"recipient_phone_number": [reason]})
