"""/api/callbacks/endpoints/ and /api/callbacks/events/: users with the callbacks app's model
permissions manage endpoints (register, change, rotate a secret, replay) and resend events,
and read them all; any other API user reads the endpoints it owns and their events. Staff
status grants nothing here, as in the admin (messages_app.permissions). Each view parses,
calls one service, renders."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from audit.services import Via
from callbacks import selectors, services
from callbacks.filters import CallbackEventFilter
from callbacks.models import CallbackEndpoint, CallbackEvent
from callbacks.serializers import (
    CallbackEndpointCreateSerializer,
    CallbackEndpointSecretSerializer,
    CallbackEndpointSerializer,
    CallbackEndpointUpdateSerializer,
    CallbackEventDetailSerializer,
    CallbackEventSerializer,
    ReplayResultSerializer,
    ReplaySerializer,
    RotateSerializer,
)


class ManagersWriteOwnersRead(permissions.BasePermission):
    """Reads for any authenticated user (scoped by the selectors to what it owns unless it
    may view every endpoint); writes need the endpoint model's permission for the method:
    add to register, delete to delete, change for the rest (change, rotate, replay, resend)."""

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        if request.method in permissions.SAFE_METHODS:
            return True
        action = {"POST": "add", "DELETE": "delete"}.get(request.method, "change")
        if getattr(view, "action", None) in {"rotate", "replay", "resend"}:
            action = "change"
        return request.user.has_perm(f"callbacks.{action}_callbackendpoint")


def _service_call(call):
    try:
        return call()
    except DjangoValidationError as exc:
        raise ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages) from None


def _with_secret(registered: services.EndpointWithSecret) -> dict:
    data = CallbackEndpointSecretSerializer(registered.endpoint).data
    data["secret"] = registered.secret
    return data


@extend_schema_view(
    list=extend_schema(summary="List callback endpoints with their health (managers: all; others: their own)"),
    retrieve=extend_schema(summary="One callback endpoint with its health"),
    create=extend_schema(
        summary="Register a callback endpoint (callbacks.add_callbackendpoint); its secret is in this answer only",
        request=CallbackEndpointCreateSerializer,
        responses={201: CallbackEndpointSecretSerializer},
        examples=[
            OpenApiExample(
                "The local receiver (README)",
                value={
                    "name": "local receiver",
                    "url": "http://127.0.0.1:8090/hooks",
                    "event_types": ["message.sent", "message.delivered", "message.failed"],
                },
                request_only=True,
            )
        ],
    ),
    partial_update=extend_schema(
        summary="Change a callback endpoint (callbacks.change_callbackendpoint): name, url, event types, enabled",
        request=CallbackEndpointUpdateSerializer,
        responses=CallbackEndpointSerializer,
        examples=[OpenApiExample("Enable again", value={"enabled": True}, request_only=True)],
    ),
    destroy=extend_schema(summary="Delete a callback endpoint and its events (callbacks.delete_callbackendpoint)"),
)
class CallbackEndpointViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = CallbackEndpointSerializer
    permission_classes = [ManagersWriteOwnersRead]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular reading the types
            return CallbackEndpoint.objects.none()
        return selectors.endpoints_visible(user=self.request.user)

    def create(self, request: Request) -> Response:
        serializer = CallbackEndpointCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        registered = _service_call(
            lambda: services.endpoint_create(**serializer.validated_data, actor=request.user, via=Via.API)
        )
        return Response(_with_secret(registered), status=status.HTTP_201_CREATED)

    def partial_update(self, request: Request, pk=None) -> Response:
        endpoint = self.get_object()
        serializer = CallbackEndpointUpdateSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        updated = _service_call(
            lambda: services.endpoint_update(
                endpoint_id=endpoint.pk, actor=request.user, via=Via.API, **serializer.validated_data
            )
        )
        return Response(CallbackEndpointSerializer(updated).data)

    @extend_schema(
        summary="Rotate an endpoint's secret (callbacks.change_callbackendpoint); the new one is in this answer only",
        request=RotateSerializer,
        responses=CallbackEndpointSecretSerializer,
        examples=[OpenApiExample("A day of overlap", value={"overlap_seconds": 86400}, request_only=True)],
    )
    @action(detail=True, methods=["post"])
    def rotate(self, request: Request, pk=None) -> Response:
        endpoint = self.get_object()
        serializer = RotateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        rotated = _service_call(
            lambda: services.endpoint_rotate_secret(
                endpoint_id=endpoint.pk,
                overlap_seconds=serializer.validated_data["overlap_seconds"],
                actor=request.user,
                via=Via.API,
            )
        )
        return Response(_with_secret(rotated))

    @extend_schema(
        summary="Deliver again every event of the endpoint since a time (callbacks.change_callbackendpoint)",
        request=ReplaySerializer,
        responses=ReplayResultSerializer,
        examples=[OpenApiExample("Since a time", value={"since": "2025-01-31T09:00:00Z"}, request_only=True)],
    )
    @action(detail=True, methods=["post"])
    def replay(self, request: Request, pk=None) -> Response:
        endpoint = self.get_object()
        serializer = ReplaySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        count = services.endpoint_replay(
            endpoint_id=endpoint.pk, since=serializer.validated_data["since"], actor=request.user, via=Via.API
        )
        return Response({"replayed": count})


@extend_schema_view(
    list=extend_schema(summary="List callback events, newest first (managers: all; others: their endpoints')"),
    retrieve=extend_schema(summary="One callback event with every delivery attempt"),
)
class CallbackEventViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = CallbackEventSerializer
    permission_classes = [ManagersWriteOwnersRead]
    filterset_class = CallbackEventFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return CallbackEvent.objects.none()
        return selectors.events_visible(user=self.request.user)

    def get_serializer_class(self):
        return CallbackEventDetailSerializer if self.action == "retrieve" else CallbackEventSerializer

    @extend_schema(
        summary="Deliver this event again (callbacks.change_callbackendpoint)",
        request=None,
        responses=CallbackEventSerializer,
    )
    @action(detail=True, methods=["post"])
    def resend(self, request: Request, pk=None) -> Response:
        event = self.get_object()
        resent = services.event_resend(event_id=event.pk, actor=request.user, via=Via.API)
        return Response(CallbackEventSerializer(resent).data)
