"""/api/inbound/: replies from the providers (POST, trusted by their signature) and the
list of those received (GET, consent.api). The replies themselves are the consent
app's (consent.inbound); here they are only read off the providers' callbacks, with
the signature checks the delivery receipts use (dispatcher.engine.receipts)."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpResponse
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import permissions, status
from rest_framework.request import Request
from rest_framework.response import Response

from consent.api import InboundMessageListView
from consent.inbound import InboundIn, InboundResult, inbound_receive, inbound_receive_many
from dispatcher.api import TwilioCallbackView
from dispatcher.conf import dispatcher_settings
from dispatcher.engine.counters import metrics_record_inbound
from dispatcher.engine.receipts import ReceiptRejected, callback_key, signed_callback_verify
from restapi.callbacks import SignedCallbackView
from restapi.schema import callback_throttled_description
from restapi.storable import text_storable_problem, time_in_range
from restapi.throttles import CallbackFailureThrottle

SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
BATCH_TYPE = "message.inbound.batch"
MAX_REPLIES_PER_BATCH = 1000
MAX_ID_LENGTH = 255
MAX_NUMBER_LENGTH = 32
MAX_PROVIDER_LENGTH = 32
# Ten concatenated SMS segments: more than a phone sends as one reply.
MAX_TEXT_LENGTH = 1600
DEFAULT_PROVIDER = "webhook"
# Twilio takes this as "no reply of Twilio's own": ours goes through the pipeline.
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def _text(item: dict, key: str, *, limit: int, required: bool = False) -> str:
    value = item.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > limit:
        raise ReceiptRejected(
            f"{key} must be a {'non-empty ' if required else ''}string of at most {limit} characters",
            unauthorized=False,
        )
    if problem := text_storable_problem(value):
        raise ReceiptRejected(f"{key} {problem}", unauthorized=False)
    return value


def _reply(item: dict, *, inbound_id: str, provider: str) -> InboundIn:
    timestamp = item.get("timestamp")
    received_at = parse_datetime(timestamp) if isinstance(timestamp, str) and timestamp.isascii() else None
    if timestamp is not None and (received_at is None or received_at.tzinfo is None):
        raise ReceiptRejected("timestamp must be an ISO 8601 date-time with an offset", unauthorized=False)
    if received_at is not None:
        try:
            received_at = time_in_range(received_at)
        except DjangoValidationError as exc:
            raise ReceiptRejected(f"timestamp: {exc.messages[0]}", unauthorized=False) from None
    return InboundIn(
        inbound_id=inbound_id,
        provider=_text(item, "provider", limit=MAX_PROVIDER_LENGTH) or provider,
        from_number=_text(item, "from", limit=MAX_NUMBER_LENGTH, required=True),
        to_number=_text(item, "to", limit=MAX_NUMBER_LENGTH),
        text=_text(item, "text", limit=MAX_TEXT_LENGTH),
        provider_message_id=_text(item, "messageId", limit=MAX_ID_LENGTH),
        received_at=received_at,
    )


def inbound_from_callback(*, webhook_id: str, payload: dict) -> tuple[bool, list[InboundIn]]:
    """(is it a batch, its replies) from a verified callback; ReceiptRejected if any reply
    cannot be read (then none is recorded)."""
    provider = _text(payload, "provider", limit=MAX_PROVIDER_LENGTH) or DEFAULT_PROVIDER
    if payload.get("type") != BATCH_TYPE:
        return False, [_reply(payload, inbound_id=callback_key(webhook_id, field="webhook-id"), provider=provider)]
    items = payload.get("messages")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_REPLIES_PER_BATCH:
        raise ReceiptRejected(
            f"a batch's messages must be a list of 1 to {MAX_REPLIES_PER_BATCH} replies", unauthorized=False
        )
    replies = []
    for number, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise ReceiptRejected("must be a JSON object", unauthorized=False)
            replies.append(_reply(item, inbound_id=callback_key(item.get("id"), field="id"), provider=provider))
        except ReceiptRejected as exc:
            raise ReceiptRejected(f"messages[{number}]: {exc.reason}", unauthorized=False) from None
    return True, replies


def _kind(result: InboundResult) -> str:
    return "replayed" if result.outcome == "replayed" else (result.keyword or "reply")


def _result(result: InboundResult) -> dict:
    return {
        "outcome": result.outcome,
        "id": result.inbound_message_id,
        "keyword": result.keyword,
        "reply_message_id": result.reply_message_id,
    }


class InboundView(SignedCallbackView, InboundMessageListView):
    """GET: the replies received (a user with view_inboundmessage). POST: a provider's
    reply, trusted by its Standard Webhooks signature alone (INBOUND_WEBHOOK_SECRET), its
    refusals throttled per address like the receipts' (restapi.callbacks)."""

    parser_classes: list = []  # a POST body is read raw: the signature covers its exact bytes
    signature_headers = SIGNATURE_HEADERS
    throttle_classes = InboundMessageListView.throttle_classes  # GET's; POST's are the callbacks'

    def get_authenticators(self):
        return [] if self._is_callback() else super().get_authenticators()

    def get_permissions(self):
        return [permissions.AllowAny()] if self._is_callback() else super().get_permissions()

    def get_throttles(self):
        return [CallbackFailureThrottle()] if self._is_callback() else super().get_throttles()

    @extend_schema(
        summary="Receive a reply (Standard Webhooks signature)",
        description=(
            'The provider posts `{"from", "to", "text", "messageId", "timestamp", "provider"}` (from required), '
            "signed per Standard Webhooks with INBOUND_WEBHOOK_SECRET; the `webhook-id` identifies the reply, "
            "and a replayed one changes nothing. A batch is "
            f'`{{"type": "{BATCH_TYPE}", "messages": [...]}}` (1 to {MAX_REPLIES_PER_BATCH}, each with an `id`), '
            "all recorded or (400) none. A reply that is an opt-out keyword (STOP...) opts its number out, an "
            "opt-in keyword (START...) back in; either, and HELP, queue one answer to the number."
        ),
        request={"application/json": {"type": "object"}},
        responses={
            200: OpenApiResponse(description="Stored, or a replay ignored; or a batch recorded."),
            400: OpenApiResponse(description="Signed, but not a reply (or a batch) we can read; nothing recorded."),
            401: OpenApiResponse(description="The signature does not check (or replies are not configured)."),
            429: OpenApiResponse(description=callback_throttled_description()),
        },
        auth=[],
    )
    def post(self, request: Request) -> Response:
        headers = {name: request.headers.get(name, "") for name in SIGNATURE_HEADERS}
        try:
            payload = signed_callback_verify(
                body=request.body,
                headers=headers,
                secret=dispatcher_settings().inbound_secret,
                unset="inbound replies",
                setting="INBOUND_WEBHOOK_SECRET",
            )
            batch, replies = inbound_from_callback(webhook_id=headers["webhook-id"], payload=payload)
        except ReceiptRejected as exc:
            code = status.HTTP_401_UNAUTHORIZED if exc.unauthorized else status.HTTP_400_BAD_REQUEST
            return Response({"detail": exc.reason}, status=code)
        results = inbound_receive_many(replies=replies)
        metrics_record_inbound(_kind(result) for result in results)
        if not batch:
            return Response(_result(results[0]))
        return Response(
            {
                "outcome": "batch",
                "stored": sum(r.outcome == "stored" for r in results),
                "replayed": sum(r.outcome == "replayed" for r in results),
            }
        )


class TwilioInboundView(TwilioCallbackView):
    """POST /api/inbound/twilio/<provider>/: Twilio's incoming-message webhook, trusted
    only when its X-Twilio-Signature checks (as its status callbacks are)."""

    @extend_schema(
        summary="Receive a reply through Twilio (X-Twilio-Signature)",
        request={"application/x-www-form-urlencoded": {"type": "object"}},
        responses={
            200: OpenApiResponse(description="Stored (or a replay ignored); an empty TwiML answer."),
            400: OpenApiResponse(description="No From or MessageSid."),
            401: OpenApiResponse(description="The signature does not check."),
            404: OpenApiResponse(description="No Twilio provider of that name."),
            429: OpenApiResponse(description=callback_throttled_description()),
        },
        auth=[],
    )
    def post(self, request: Request, provider: str) -> Response | HttpResponse:
        params = self.verified_params(request, provider)
        sid = params.get("MessageSid") or params.get("SmsSid") or ""
        try:
            reply = _reply(
                {"from": params.get("From"), "to": params.get("To"), "text": params.get("Body"), "messageId": sid},
                inbound_id=callback_key(f"twilio:{provider}:{sid}", field="MessageSid"),
                provider=provider,
            )
            if not sid or len(sid) > 200:
                raise ReceiptRejected("MessageSid is required", unauthorized=False)
        except ReceiptRejected as exc:
            return Response({"detail": exc.reason}, status=status.HTTP_400_BAD_REQUEST)
        result = inbound_receive(reply=reply)
        metrics_record_inbound([_kind(result)])
        return HttpResponse(EMPTY_TWIML, content_type="text/xml")
