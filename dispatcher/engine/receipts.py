"""Delivery receipts: the provider's word, after it accepted a message, on whether the
phone got it.

A receipt is trusted only when its Standard Webhooks signature checks (HMAC-SHA256
over id, timestamp and body with RECEIPT_WEBHOOK_SECRET, within five minutes; the
`standardwebhooks` package checks it). Each receipt id is kept once, so a replay
changes nothing. The outcome is recorded beside the message's dispatch status,
which stays `sent`. A receipt that arrives before its send is recorded (a fast
provider), or for a messageId we do not know, is kept unmatched and answered 2xx
so the provider stops retrying; the pacing window applies waiting receipts as
their sends are recorded.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import DataError, connection
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.exceptions import ParseError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from twilio.request_validator import RequestValidator

from dispatcher.conf import dispatcher_settings
from dispatcher.engine.counters import metrics_record_receipts
from dispatcher.engine.providers import provider_specs
from messages_app.models import DeliveryReceipt, Message
from messages_app.transitions import ReceiptIn, ReceiptKept, message_record_delivery, messages_record_receipts
from restapi.parsers import json_decode
from restapi.storable import text_storable_problem, time_in_range

logger = logging.getLogger(__name__)

Delivery = Message.Delivery
MAX_ERROR_CODE_LENGTH = 64
MAX_RECEIPT_ID_LENGTH = 255  # the column's width; a longer id is kept as its digest
MAX_PROVIDER_MESSAGE_ID_LENGTH = Message._meta.get_field("provider_message_id").max_length
BATCH_TYPE = "message.status.batch"
# More than any provider puts in one callback; a batch is one statement and one answer.
MAX_RECEIPTS_PER_BATCH = 1000
# How long a receipt waits for its send to be recorded before it counts as unknown.
WAITING_RECEIPT_HOURS = 1


class ReceiptRejected(Exception):
    """The receipt cannot be trusted (`unauthorized`) or read; nothing was recorded."""

    def __init__(self, reason: str, *, unauthorized: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unauthorized = unauthorized


@dataclass(frozen=True)
class ReceiptResult:
    outcome: str  # "applied", "waiting" (no sent message with that id yet) or "replayed"
    message_id: int | None = None


def receipt_verify(*, body: bytes, headers: dict[str, str]) -> dict:
    """The receipt's JSON if its signature checks; ReceiptRejected otherwise."""
    return signed_callback_verify(
        body=body,
        headers=headers,
        secret=dispatcher_settings().receipt_secret,
        unset="receipts",
        setting=RECEIPT_SETTING,
    )


RECEIPT_SETTING = "RECEIPT_WEBHOOK_SECRET"


def signed_callback_verify(*, body: bytes, headers: dict[str, str], secret: str, unset: str, setting: str) -> dict:
    """A Standard Webhooks callback's JSON object if its signature checks with `secret`
    (receipts', replies' (`consent`): each its own secret); ReceiptRejected otherwise."""
    if not secret:
        raise ReceiptRejected(f"{unset} are not configured ({setting} is unset)", unauthorized=True)
    try:
        Webhook(secret).verify(body, headers, json_parse=False)
    except (WebhookVerificationError, ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ReceiptRejected(f"signature check failed: {exc}", unauthorized=True) from None
    try:
        payload = json_decode(body.decode())
    except UnicodeDecodeError:
        raise ReceiptRejected("the body is not JSON: it is not UTF-8 text", unauthorized=False) from None
    except ParseError as exc:  # nesting too deep, a number too long, or just not JSON
        raise ReceiptRejected(f"the body cannot be read: {exc.detail}", unauthorized=False) from None
    if not isinstance(payload, dict):
        raise ReceiptRejected("the body must be a JSON object", unauthorized=False)
    return payload


@dataclass(frozen=True)
class ReceiptIntake:
    """What became of a callback: one result per receipt it carried, in order."""

    batch: bool
    results: list[ReceiptResult]

    def counts(self) -> dict[str, int]:
        found = {"applied": 0, "waiting": 0, "replayed": 0}
        for result in self.results:
            found[result.outcome] += 1
        return found


def receipt_intake(*, webhook_id: str, payload: dict) -> ReceiptIntake:
    """Record a verified callback: one receipt (known by the callback's webhook-id) or a
    batch (each known by its own id). Nothing is recorded if any receipt cannot be read."""
    if payload.get("type") != BATCH_TYPE:
        receipt = _receipt(payload, receipt_id=callback_key(webhook_id, field="webhook-id"))
        return ReceiptIntake(batch=False, results=receipts_record([receipt]))
    items = payload.get("receipts")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_RECEIPTS_PER_BATCH:
        raise ReceiptRejected(
            f"a batch's receipts must be a list of 1 to {MAX_RECEIPTS_PER_BATCH} receipts", unauthorized=False
        )
    receipts = []
    for number, item in enumerate(items):
        if not isinstance(item, dict):
            raise ReceiptRejected(f"receipts[{number}] must be a JSON object", unauthorized=False)
        receipt_id = callback_key(item.get("id"), field=f"receipts[{number}].id")
        try:
            receipts.append(_receipt(item, receipt_id=receipt_id))
        except ReceiptRejected as exc:
            raise ReceiptRejected(f"receipts[{number}]: {exc.reason}", unauthorized=False) from None
    return ReceiptIntake(batch=True, results=receipts_record(receipts))


def twilio_callback_verify(*, provider: str, url: str, params: dict[str, str], signature: str) -> None:
    """Check a Twilio callback (status or inbound) to `url`: LookupError if no Twilio
    provider has that name, ReceiptRejected (unauthorized) if its X-Twilio-Signature
    does not check with the provider's auth token (Twilio's own request validator)."""
    spec = next((s for s in provider_specs() if s.name == provider and "auth_token" in s.options), None)
    if spec is None:
        raise LookupError("No Twilio provider of that name.")
    if not RequestValidator(spec.options["auth_token"]).validate(url, params, signature):
        raise ReceiptRejected("signature check failed", unauthorized=True)


def receipt_record(*, receipt_id: str, payload: dict) -> ReceiptResult:
    """Record one verified receipt (`payload` in our receipt format) under `receipt_id`."""
    return receipts_record([_receipt(payload, receipt_id=callback_key(receipt_id, field="receipt id"))])[0]


def callback_key(receipt_id: object, *, field: str) -> str:
    """The id a receipt (or a reply, consent's) is kept under, by which a replay is known: the provider's own,
    or, if longer than the column, its SHA-256 digest. Cutting it short made two long
    ids that begin alike one, and the second receipt a "replay", lost; refusing it
    would lose the receipt too, and the digest is as unique as the id."""
    if not isinstance(receipt_id, str) or not receipt_id:
        raise ReceiptRejected(f"{field} must be a non-empty string", unauthorized=False)
    if problem := text_storable_problem(receipt_id):
        raise ReceiptRejected(f"{field} {problem}", unauthorized=False)
    if len(receipt_id) > MAX_RECEIPT_ID_LENGTH:
        return "sha256:" + hashlib.sha256(receipt_id.encode()).hexdigest()
    return receipt_id


def _receipt(payload: dict, *, receipt_id: str) -> ReceiptIn:
    provider_message_id, status = payload.get("messageId"), payload.get("status")
    error_code, timestamp = payload.get("errorCode") or "", payload.get("timestamp")
    if not isinstance(provider_message_id, str) or not provider_message_id:
        raise ReceiptRejected("messageId must be a non-empty string", unauthorized=False)
    if len(provider_message_id) > MAX_PROVIDER_MESSAGE_ID_LENGTH:
        raise ReceiptRejected(
            f"messageId must be at most {MAX_PROVIDER_MESSAGE_ID_LENGTH} characters long", unauthorized=False
        )
    if problem := text_storable_problem(provider_message_id):
        raise ReceiptRejected(f"messageId {problem}", unauthorized=False)
    if status not in (Delivery.DELIVERED, Delivery.UNDELIVERED):
        raise ReceiptRejected('status must be "delivered" or "undelivered"', unauthorized=False)
    if not isinstance(error_code, str | int):
        raise ReceiptRejected("errorCode must be a string, a number or null", unauthorized=False)
    if isinstance(error_code, str) and (problem := text_storable_problem(error_code)):
        raise ReceiptRejected(f"errorCode {problem}", unauthorized=False)
    return ReceiptIn(
        receipt_id=receipt_id,
        provider_message_id=provider_message_id,
        status=status,
        error_code=str(error_code)[:MAX_ERROR_CODE_LENGTH],
        occurred_at=_occurred_at(timestamp),
    )


def _occurred_at(timestamp: object) -> datetime:
    """A receipt's time: ISO 8601 in ASCII digits, with an offset, inside the years the
    service takes (a time psycopg could not read back would break every page showing
    its message, and the waiting receipts' upkeep)."""
    try:
        occurred_at = parse_datetime(timestamp) if isinstance(timestamp, str) and timestamp.isascii() else None
    except ValueError:  # well-formed but impossible, e.g. February 30
        occurred_at = None
    if occurred_at is None or occurred_at.tzinfo is None:
        raise ReceiptRejected("timestamp must be an ISO 8601 date-time with an offset", unauthorized=False)
    try:
        return time_in_range(occurred_at)
    except ValidationError as exc:
        raise ReceiptRejected(f"timestamp: {exc.messages[0]}", unauthorized=False) from None


def receipts_record(receipts: list[ReceiptIn]) -> list[ReceiptResult]:
    """Keep each verified receipt once and apply it to its message if that is sent;
    count and log each. Written together with the receipts other requests of this
    process bring meanwhile (_GroupCommit)."""
    return _group_commit.record(receipts)


def _record_now(receipts: list[ReceiptIn]) -> list[ReceiptResult]:
    results, counted = [], []
    for receipt, kept in zip(receipts, messages_record_receipts(receipts), strict=True):
        results.append(_result(receipt, kept, counted))
    metrics_record_receipts(counted)
    return results


class _Waiting:
    """One request's receipts in the queue, and what became of them."""

    def __init__(self, receipts: list[ReceiptIn]) -> None:
        self.receipts = receipts
        self.turn = threading.Event()  # set when written (done) or when it is this one's turn to write
        self.done = False
        self.results: list[ReceiptResult] = []
        self.error: BaseException | None = None


# What a write raises for a value the database refuses, rather than for the database
# itself: psycopg's DataError (a NUL in text, a time out of range), and the
# UnicodeEncodeError of a lone surrogate, which never reaches the server.
REFUSED_DATA = (DataError, ValueError)


class _GroupCommit:
    """Receipts that arrive while another request's are being written wait, and are
    written together next, in one statement.

    A provider like Twilio calls back once per message, so the web takes receipts
    one request each; per receipt, the statement and its commit, the pooled
    connection and the counters' round trip cost more than the rest of the request.
    The first request to come writes at once (alone, if it is alone); those that come
    meanwhile queue, and when that write is done the first of them writes the whole
    queue, and so on: a group forms only when receipts come faster than one
    statement takes. Each write is committed (autocommit) before any of its requests
    answers; a request inside a transaction writes alone, since its commit is not
    this process's to give. A group whose write the database refuses for one
    request's data is written again request by request: one request's bad data
    never fails another's. Greenlets under gunicorn's gevent workers, threads
    elsewhere: `threading` is what both wait on.
    """

    def __init__(self, write) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._queue: list[_Waiting] = []
        self._writing = False

    def record(self, receipts: list[ReceiptIn]) -> list[ReceiptResult]:
        if connection.in_atomic_block:
            return self._write(receipts)
        mine = _Waiting(receipts)
        with self._lock:
            self._queue.append(mine)
            leading = not self._writing
            self._writing = True
        if not leading:
            mine.turn.wait()
            if mine.error is not None:
                raise mine.error
            if mine.done:
                return mine.results
        return self._write_queue(mine)

    def _write_queue(self, mine: _Waiting) -> list[ReceiptResult]:
        with self._lock:
            group, self._queue = self._queue, []
        try:
            self._write_group(group)
        finally:
            self._pass_on()
        if mine.error is not None:
            raise mine.error
        return mine.results

    def _write_group(self, group: list[_Waiting]) -> None:
        """Write `group` in one statement and answer each of its requests."""
        try:
            results = self._write([receipt for waiting in group for receipt in waiting.receipts])
        except BaseException as exc:
            if len(group) > 1 and isinstance(exc, REFUSED_DATA):
                # Something one request brought was refused (intake lets nothing such
                # through; this is the guard behind it): written again one request at a
                # time, so that only that request fails, not the others of its group.
                for waiting in group:
                    self._write_group([waiting])
                return
            for waiting in group:
                waiting.error = exc
                waiting.turn.set()
            return
        start = 0
        for waiting in group:
            waiting.results, waiting.done = results[start : start + len(waiting.receipts)], True
            start += len(waiting.receipts)
            waiting.turn.set()

    def _pass_on(self) -> None:
        with self._lock:
            if self._queue:
                self._queue[0].turn.set()  # not done: its turn to write the queue
            else:
                self._writing = False


_group_commit = _GroupCommit(_record_now)


def _result(receipt: ReceiptIn, kept: ReceiptKept, counted: list[tuple[str, float | None]]) -> ReceiptResult:
    if not kept.kept:  # the unique receipt id: a replay changed nothing
        counted.append(("replayed", None))
        logger.info("receipt %s for messageId=%s replayed; ignored", receipt.receipt_id, receipt.provider_message_id)
        return ReceiptResult(outcome="replayed")
    if kept.message_id is None:
        counted.append(("unmatched", None))
        logger.warning(
            "receipt %s for unknown messageId=%s (%s) kept: applied if that send is recorded later",
            receipt.receipt_id,
            receipt.provider_message_id,
            receipt.status,
        )
        return ReceiptResult(outcome="waiting")
    sent_at = kept.sent_at
    counted.append((receipt.status, (receipt.occurred_at - sent_at).total_seconds() if sent_at else None))
    logger.info(
        "receipt %s: message id=%s messageId=%s %s%s",
        receipt.receipt_id,
        kept.message_id,
        receipt.provider_message_id,
        receipt.status,
        f" (error {receipt.error_code})" if receipt.error_code else "",
        extra={"message_id": kept.message_id},
    )
    return ReceiptResult(outcome="applied", message_id=kept.message_id)


def receipts_apply_for_sent(*, provider_message_ids: list[str]) -> int:
    """Apply the receipts that came before these sends were recorded (a fast provider);
    count them like any receipt. One indexed query when there are none."""
    waiting = list(
        DeliveryReceipt.objects.filter(provider_message_id__in=provider_message_ids, message__isnull=True)
        .order_by("occurred_at", "id")
        .values_list("pk", "provider_message_id", "status", "error_code", "occurred_at")
    )
    return _apply(waiting)


def _apply(waiting: list[tuple]) -> int:
    applied = 0
    counted: list[tuple[str, float | None]] = []
    for pk, provider_message_id, status, error_code, occurred_at in waiting:
        found = message_record_delivery(
            provider_message_id=provider_message_id, status=status, error_code=error_code, occurred_at=occurred_at
        )
        if found is None:
            continue
        message_id, sent_at = found
        DeliveryReceipt.objects.filter(pk=pk).update(message_id=message_id)
        counted.append((status, (occurred_at - sent_at).total_seconds() if sent_at else None))
        applied += 1
    if counted:
        metrics_record_receipts(counted)
    return applied


def receipts_apply_waiting(*, limit: int = 1000) -> int:
    """Apply kept receipts whose send has been recorded since they came; count them.
    (A receipt and its send recorded at the same moment can each miss the other.)"""
    # Only recent ones: a receipt for a messageId we never sent stays unmatched for good.
    since = timezone.now() - timedelta(hours=WAITING_RECEIPT_HOURS)
    waiting = list(
        DeliveryReceipt.objects.filter(message__isnull=True, received_at__gte=since)
        .order_by("received_at")
        .values_list("pk", "provider_message_id", "status", "error_code", "occurred_at")[:limit]
    )
    applied = _apply(waiting)
    if applied:
        logger.info("applied %d delivery receipts that came before their send was recorded", applied)
    return applied
