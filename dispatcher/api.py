"""The REST API for the dispatcher (/api/dispatcher/)."""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.models import ControlAction
from dispatcher.engine.providers.status import provider_statuses
from dispatcher.engine.receipts import (
    MAX_RECEIPTS_PER_BATCH,
    ReceiptRejected,
    receipt_intake,
    receipt_record,
    receipt_verify,
    twilio_callback_verify,
)
from dispatcher.errors import DispatcherConfigError
from dispatcher.models import MAX_BATCH_SIZE, MAX_INTERVAL_SECONDS
from dispatcher.permissions import CanControlDispatcher
from dispatcher.serializers import DispatcherConfigSerializer, DispatcherStatusSerializer, ProviderStatusSerializer
from dispatcher.state import (
    dispatcher_configure,
    dispatcher_start,
    dispatcher_state_read,
    dispatcher_status,
    dispatcher_stop,
)
from messages_app.models import Message
from restapi.callbacks import SignatureRejected, SignedCallbackView
from restapi.schema import callback_throttled_description
from restapi.storable import text_storable_problem

VIA = ControlAction.Via.API
RECEIPT_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
Delivery = Message.Delivery


class DispatcherViewSet(viewsets.GenericViewSet):
    """The cluster-wide dispatcher: read by any user, controlled by holders of
    dispatcher.control_dispatcher (every control is audited)."""

    serializer_class = DispatcherStatusSerializer
    pagination_class = None
    filter_backends: list = []

    def get_permissions(self):
        if self.action == "retrieve":
            return [permissions.IsAuthenticated()]
        return [CanControlDispatcher()]

    def get_serializer_class(self):
        # The browsable API fills its PATCH form from this: the fields PATCH sets, not the whole state.
        if self.action == "partial_update":
            return DispatcherConfigSerializer
        return DispatcherStatusSerializer

    def _status_response(self) -> Response:
        return Response(DispatcherStatusSerializer(dispatcher_status()).data)

    @extend_schema(
        summary="Dispatcher state and message counts",
        description="Whether the dispatcher runs, its pace (`batch_size` messages every `interval_seconds`), "
        "the last and next tick, whether the cluster keeps up with the pace, and how many messages are in "
        "each status. Any logged-in user.",
        responses=DispatcherStatusSerializer,
    )
    def retrieve(self, request: Request) -> Response:
        return self._status_response()

    @extend_schema(
        summary="Change batch size and/or interval (control permission)",
        description=f"The new pace is kept in the database and obeyed by every worker: `batch_size` from 1 to "
        f"{MAX_BATCH_SIZE} messages per tick, `interval_seconds` from 1 to {MAX_INTERVAL_SECONDS} between ticks "
        "(counted from the last tick). The body of `GET /api/dispatcher/` may be sent back with them changed: "
        "`running` must be the current state (start and stop are calls of their own) and the readings are "
        "ignored. Recorded in the audit log.",
        request=DispatcherConfigSerializer,
        responses=DispatcherStatusSerializer,
        examples=[
            OpenApiExample(
                "Ten messages every 30 seconds",
                value={"batch_size": 10, "interval_seconds": 30},
                request_only=True,
            ),
            OpenApiExample("Only the batch size", value={"batch_size": 5}, request_only=True),
        ],
    )
    def partial_update(self, request: Request) -> Response:
        serializer = DispatcherConfigSerializer(data=request.data, context={"running": dispatcher_state_read().running})
        serializer.is_valid(raise_exception=True)
        try:
            dispatcher_configure(**serializer.validated_data, actor=request.user, via=VIA)
        except DispatcherConfigError as exc:
            raise ValidationError({exc.field: [exc.message]}) from None
        return self._status_response()

    @extend_schema(
        summary="Start sending, cluster-wide (control permission)",
        description="Every worker of every qcluster starts claiming again: the first tick is due at once and a "
        "dispatch window opens without waiting for the schedule. Starting a running dispatcher changes "
        "nothing. Answers the state, as `GET`. Recorded in the audit log, with whether it changed anything.",
        request=None,
        responses=DispatcherStatusSerializer,
    )
    @action(detail=False, methods=["post"])
    def start(self, request: Request) -> Response:
        dispatcher_start(actor=request.user, via=VIA)
        return self._status_response()

    @extend_schema(
        summary="Stop sending, cluster-wide (control permission)",
        description="No message is claimed any more once this answers, on any worker: it waits for a claim in "
        "progress. Messages already claimed are still sent (a stopping worker gives back those it has not "
        "started). The pace is kept for the next start. Stopping a stopped dispatcher changes nothing. "
        "Answers the state, as `GET`. Recorded in the audit log.",
        request=None,
        responses=DispatcherStatusSerializer,
    )
    @action(detail=False, methods=["post"])
    def stop(self, request: Request) -> Response:
        dispatcher_stop(actor=request.user, via=VIA)
        return self._status_response()


class DeliveryReceiptView(SignedCallbackView):
    """POST /api/receipts/: a provider's delivery receipt, trusted by its signature alone."""

    # The signature is the authentication: no session, token or CSRF applies. The
    # throttle counts refused callbacks per address (restapi.callbacks), never signed ones.
    authentication_classes: list = []
    permission_classes = [permissions.AllowAny]
    signature_headers = RECEIPT_HEADERS
    parser_classes = []  # the body is read raw: the signature covers its exact bytes

    @extend_schema(
        summary="Receive a delivery receipt (Standard Webhooks signature)",
        description=(
            'The provider calls back with `{"messageId", "status": "delivered"|"undelivered", '
            '"errorCode", "timestamp"}`, signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`, '
            "`webhook-signature`: HMAC-SHA256 with RECEIPT_WEBHOOK_SECRET). A bad or stale signature is 401 and "
            "changes nothing; a replayed receipt id is ignored; a receipt for a messageId not (yet) sent is kept "
            "and answered 202. The message's dispatch status stays `sent`.\n\n"
            'A provider that reports in batches sends `{"type": "message.status.batch", "receipts": [...]}` '
            f"(1 to {MAX_RECEIPTS_PER_BATCH}), each receipt with an `id` of its own by which a replay is known; "
            "the batch is signed as one and recorded as one (a receipt that cannot be read refuses the whole "
            'batch with 400), and answered 200 with `{"outcome": "batch", "applied", "waiting", "replayed"}`.'
        ),
        request={"application/json": {"type": "object"}},
        responses={
            200: OpenApiResponse(description="Applied, or a replay ignored; or a batch recorded."),
            202: OpenApiResponse(description="Kept: no sent message has that messageId yet."),
            400: OpenApiResponse(description="Signed, but not a receipt (or a batch) we can read; nothing recorded."),
            401: OpenApiResponse(description="The signature does not check (or receipts are not configured)."),
            429: OpenApiResponse(description=callback_throttled_description()),
        },
        auth=[],
    )
    def post(self, request: Request) -> Response:
        headers = {name: request.headers.get(name, "") for name in RECEIPT_HEADERS}
        try:
            payload = receipt_verify(body=request.body, headers=headers)
            intake = receipt_intake(webhook_id=headers["webhook-id"], payload=payload)
        except ReceiptRejected as exc:
            code = status.HTTP_401_UNAUTHORIZED if exc.unauthorized else status.HTTP_400_BAD_REQUEST
            return Response({"detail": exc.reason}, status=code)
        if intake.batch:
            return Response({"outcome": "batch", **intake.counts()})
        result = intake.results[0]
        code = status.HTTP_202_ACCEPTED if result.outcome == "waiting" else status.HTTP_200_OK
        return Response({"outcome": result.outcome, "message_id": result.message_id}, status=code)


class ProviderListView(APIView):
    """GET /api/providers/: each configured provider, its circuit, its pause and its last hour."""

    @extend_schema(
        summary="Providers: routing order, circuit state, pause after a 429 and the last hour",
        responses=ProviderStatusSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        return Response(ProviderStatusSerializer(provider_statuses(), many=True).data)


TWILIO_STATUS = {"delivered": Delivery.DELIVERED, "undelivered": Delivery.UNDELIVERED, "failed": Delivery.UNDELIVERED}


class TwilioCallbackView(SignedCallbackView):
    """A Twilio webhook (a status callback, an incoming message), trusted only when its
    X-Twilio-Signature checks (Twilio's request validator, the provider's auth token)."""

    authentication_classes: list = []
    permission_classes = [permissions.AllowAny]
    signature_headers = ("x-twilio-signature",)

    def verified_params(self, request: Request, provider: str) -> dict[str, str]:
        """The callback's form fields once its signature checks: 404 for a provider this
        service does not have, 401 for a signature that does not check."""
        params = {key: request.POST.get(key) for key in request.POST}
        try:
            twilio_callback_verify(
                provider=provider,
                url=request.build_absolute_uri(),
                params=params,
                signature=request.headers.get("X-Twilio-Signature", ""),
            )
        except LookupError as exc:
            raise NotFound(str(exc)) from None
        except ReceiptRejected as exc:
            raise SignatureRejected(exc.reason) from None
        return params


class TwilioReceiptView(TwilioCallbackView):
    """POST /api/receipts/twilio/<provider>/: Twilio's status callback."""

    @extend_schema(
        summary="Receive a Twilio status callback (X-Twilio-Signature)",
        request={"application/x-www-form-urlencoded": {"type": "object"}},
        responses={
            200: OpenApiResponse(description="Applied, replayed, or a status that is not an outcome."),
            202: OpenApiResponse(description="Kept: no sent message has that MessageSid yet."),
            400: OpenApiResponse(description="Signed, but holding what cannot be stored (a NUL); nothing recorded."),
            401: OpenApiResponse(description="The signature does not check."),
            404: OpenApiResponse(description="No Twilio provider of that name."),
            429: OpenApiResponse(description=callback_throttled_description()),
        },
        auth=[],
    )
    def post(self, request: Request, provider: str) -> Response:
        params = self.verified_params(request, provider)
        sid, twilio_status = params.get("MessageSid") or "", params.get("MessageStatus") or ""
        outcome = TWILIO_STATUS.get(twilio_status)
        if not sid or outcome is None:
            return Response({"outcome": "ignored", "status": twilio_status})
        for name in ("MessageSid", "ErrorCode"):
            if problem := text_storable_problem(params.get(name) or ""):
                return Response({"detail": f"{name} {problem}"}, status=status.HTTP_400_BAD_REQUEST)
        try:
            result = receipt_record(
                receipt_id=f"twilio:{sid}:{twilio_status}",
                payload={
                    "messageId": sid,
                    "status": outcome,
                    "errorCode": params.get("ErrorCode") or None,
                    "timestamp": timezone.now().isoformat(),
                },
            )
        except ReceiptRejected as exc:
            return Response({"detail": exc.reason}, status=status.HTTP_400_BAD_REQUEST)
        code = status.HTTP_202_ACCEPTED if result.outcome == "waiting" else status.HTTP_200_OK
        return Response({"outcome": result.outcome, "message_id": result.message_id}, status=code)
