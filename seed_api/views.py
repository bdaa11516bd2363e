"""Routes of the Go service this one replaces, so its clients keep working.

Same paths and envelope: `{"status": <code>, "success": <data>}` or
`{"status": <code>, "fail": {"msg": ..., "reason": ...}}`.
"""

from __future__ import annotations

from http import HTTPStatus

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from audit.models import ControlAction
from dispatcher.permissions import CanControlDispatcher
from dispatcher.serializers import DispatcherStatusSerializer
from dispatcher.state import dispatcher_start, dispatcher_status, dispatcher_stop
from messages_app import selectors, services
from messages_app.api import CREATE_EXAMPLES
from messages_app.models import Message
from messages_app.permissions import ModelPermissionsWithView
from messages_app.serializers import MessageCreateSerializer, MessageSerializer
from restapi.defaults import api_exception_for
from restapi.idempotency import idempotent
from seed_api.authentication import TrustedNetworkAuthentication

# The Go service returned every sent message at once; we cap the answer.
SEED_SENT_LIST_LIMIT = 1000
# Appended to each seed operation's description.
AUTH_NOTE = (
    " Needs a token like the rest of the API, unless the deployment trusts the network of the "
    "Go service's clients (README, *Seed-compatible routes*)."
)


class SeedMessageSerializer(MessageSerializer):
    """A message as the Go service's clients know it: the fields it had, no more."""

    class Meta(MessageSerializer.Meta):
        fields = [
            "id",
            "uuid",
            "recipient_phone_number",
            "content",
            "status",
            "created_at",
            "sent_at",
            "provider_message_id",
            "attempts",
            "last_error",
            "send_after",
            "next_attempt_at",
        ]
        read_only_fields = fields


class SeedMessageCreateSerializer(MessageCreateSerializer):
    """What the Go service took on create (expiry and priority are this API's own)."""

    expires_at = None
    priority = None
    # Templates are this API's own too: the seed route takes finished content.
    template = None
    version = None
    language = None
    personalisation = None


FailSerializer = inline_serializer(
    "SeedFail",
    fields={
        "status": serializers.IntegerField(),
        "fail": inline_serializer(
            "SeedFailDetails", fields={"msg": serializers.CharField(), "reason": serializers.CharField()}
        ),
    },
)


def _success_envelope(name: str, data_field: serializers.Field) -> serializers.Serializer:
    return inline_serializer(name, fields={"status": serializers.IntegerField(), "success": data_field})


def success(data, code: int = status.HTTP_200_OK) -> Response:
    return Response({"status": code, "success": data}, status=code)


def fail(code: int, msg: str, reason: str = "") -> Response:
    return Response(SeedAPIView.error_body(code, msg, reason), status=code)


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase.lower()
    except ValueError:
        return "error"


def _flatten_errors(detail) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{field}: {_flatten_errors(value)}" for field, value in detail.items())
    if isinstance(detail, list):
        return " ".join(_flatten_errors(item) for item in detail)
    return str(detail)


class SeedAPIView(APIView):
    """Answers every error in the Go service's envelope."""

    # A token (or the admin's session) first, as everywhere; then, if configured,
    # the trusted networks of the Go service's clients, which send no credentials.
    authentication_classes = [*api_settings.DEFAULT_AUTHENTICATION_CLASSES, TrustedNetworkAuthentication]

    @staticmethod
    def error_body(code: int, msg: str, reason: str = "") -> dict:
        """The envelope of an error Django answers itself (restapi.defaults: a refused Host, a crash)."""
        return {"status": code, "fail": {"msg": msg, "reason": reason}}

    def handle_exception(self, exc: Exception) -> Response:
        exc = api_exception_for(exc)
        if isinstance(exc, exceptions.ParseError):
            return fail(status.HTTP_422_UNPROCESSABLE_ENTITY, "invalid request body", str(exc.detail))
        if isinstance(exc, exceptions.ValidationError):
            return fail(status.HTTP_400_BAD_REQUEST, "validation error", _flatten_errors(exc.detail))
        if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
            response = super().handle_exception(exc)
            return Response(
                {"status": response.status_code, "fail": {"msg": "unauthorized", "reason": str(exc.detail)}},
                status=response.status_code,
                headers={k: v for k, v in response.items() if k == "WWW-Authenticate"},
            )
        if isinstance(exc, exceptions.APIException):
            response = super().handle_exception(exc)
            # A default_detail with a placeholder ('Method "{method}" not allowed.') is a template,
            # not a message: the status in words stands in for it.
            msg = str(exc.default_detail)
            enveloped = fail(
                response.status_code, _phrase(response.status_code) if "{" in msg else msg, _flatten_errors(exc.detail)
            )
            # A throttled client needs Retry-After in the envelope's answer too.
            for header in ("Retry-After", "WWW-Authenticate"):
                if response.has_header(header):
                    enveloped[header] = response[header]
            return enveloped
        return super().handle_exception(exc)


class SeedMessagesView(SeedAPIView):
    # As /api/messages/: GET needs view_message, POST add_message. The queryset
    # only names the model for the permission check.
    permission_classes = [ModelPermissionsWithView]
    queryset = Message.objects.all()

    @extend_schema(
        tags=["seed-compatible"],
        summary="(Go service) Sent messages, most recently sent first",
        description=f"The {SEED_SENT_LIST_LIMIT} most recently sent messages, in the Go service's envelope."
        + AUTH_NOTE,
        responses={200: _success_envelope("SeedSentMessages", SeedMessageSerializer(many=True))},
    )
    def get(self, request: Request) -> Response:
        messages = selectors.messages_sent().order_by("-sent_at", "-id")[:SEED_SENT_LIST_LIMIT]
        return success(SeedMessageSerializer(messages, many=True).data)

    @extend_schema(
        tags=["seed-compatible"],
        summary="(Go service) Queue a message",
        description="As `POST /api/messages/`, answered 200 in the Go service's envelope." + AUTH_NOTE,
        request=SeedMessageCreateSerializer,
        examples=CREATE_EXAMPLES,
        responses={
            200: _success_envelope("SeedCreatedMessage", SeedMessageSerializer()),
            400: FailSerializer,
            422: FailSerializer,
        },
    )
    def post(self, request: Request) -> Response:
        def queue() -> Response:
            # Read the body only here: idempotent() reads it raw first, for its fingerprint.
            if not isinstance(request.data, dict):
                return fail(status.HTTP_422_UNPROCESSABLE_ENTITY, "invalid request body", "expected a JSON object")
            serializer = SeedMessageCreateSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            message = services.message_create(**serializer.validated_data)
            return success(SeedMessageSerializer(message).data)

        return idempotent(
            request,
            queue,
            mismatch=lambda reason: fail(status.HTTP_422_UNPROCESSABLE_ENTITY, "idempotency key reused", reason),
        )


class SeedWorkerView(SeedAPIView):
    permission_classes = [CanControlDispatcher]

    @extend_schema(
        tags=["seed-compatible"],
        summary="(Go service) Start or stop sending",
        description="`start` or `stop`, as `POST /api/dispatcher/start/` and `stop/`; answers `OK`." + AUTH_NOTE,
        request=None,
        parameters=[OpenApiParameter("action", str, OpenApiParameter.PATH, enum=["start", "stop"])],
        responses={200: _success_envelope("SeedWorkerOK", serializers.CharField()), 400: FailSerializer},
    )
    def post(self, request: Request, action: str) -> Response:
        via = ControlAction.Via.SEED_API
        if action == "start":
            dispatcher_start(actor=request.user, via=via)
        elif action == "stop":
            dispatcher_stop(actor=request.user, via=via)
        else:
            return fail(status.HTTP_400_BAD_REQUEST, "status parameter is missing")
        return success("OK")


class SeedStatusView(SeedAPIView):
    @extend_schema(
        tags=["seed-compatible"],
        summary="(Go service) Service and dispatcher status",
        description="What `GET /api/dispatcher/` answers, in the Go service's envelope." + AUTH_NOTE,
        responses={200: _success_envelope("SeedStatus", DispatcherStatusSerializer())},
    )
    def get(self, request: Request) -> Response:
        return success(DispatcherStatusSerializer(dispatcher_status()).data)
