"""The REST API for consent (/api/consents/) and the replies received (/api/inbound/, GET)."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import generics, mixins, viewsets
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from audit.models import ControlAction
from consent import selectors, services
from consent.filters import ConsentFilter, InboundMessageFilter
from consent.models import Consent
from consent.serializers import (
    ConsentDetailSerializer,
    ConsentSerializer,
    ConsentUpdateSerializer,
    InboundMessageSerializer,
)
from messages_app.permissions import ModelPermissionsWithView
from messages_app.validators import normalize_phone_number


def _number(raw: str) -> str:
    try:
        return normalize_phone_number(raw)
    except DjangoValidationError as exc:
        raise ValidationError({"phone_number": exc.messages}) from None


@extend_schema_view(
    list=extend_schema(
        summary="List consent records, most recently changed first",
        description="Filtered by `status`, `method`, `changed_after` and `changed_before` if given.",
    ),
)
class ConsentViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    serializer_class = ConsentSerializer
    filterset_class = ConsentFilter
    permission_classes = [ModelPermissionsWithView]
    lookup_field = "phone_number"
    # "+15551234567", or any format with its country code ("%2B1 555 123 4567").
    lookup_value_regex = "[^/]+"

    def get_queryset(self):
        return selectors.consent_list()

    def get_serializer_class(self):
        if self.action == "update":
            return ConsentUpdateSerializer
        if self.action == "retrieve":
            return ConsentDetailSerializer
        return ConsentSerializer

    def _detail(self, number: str) -> Response:
        consent = selectors.consent_for_number(phone_number=number)
        if consent is None:
            raise NotFound(f"No consent is recorded for {number}: nobody opted it out, messages to it are sent.")
        return Response(ConsentDetailSerializer(consent).data)

    @extend_schema(
        summary="One number's consent and its history",
        responses={
            200: ConsentDetailSerializer,
            400: OpenApiResponse(description="Not a phone number."),
            404: OpenApiResponse(description="No consent recorded for the number: messages to it are sent."),
        },
    )
    def retrieve(self, request: Request, phone_number: str) -> Response:
        return self._detail(_number(phone_number))

    @extend_schema(
        summary="Opt a number in or out",
        description="Sets the number's consent (recorded as changed through the API by you, with the history "
        "and the audit log). Setting the status it already has changes nothing. An opted-out number gets no "
        "message: creating one answers 422, and those already queued end `suppressed`.",
        request=ConsentUpdateSerializer,
        responses={200: ConsentDetailSerializer, 400: OpenApiResponse(description="Not a phone number or a status.")},
        examples=[
            OpenApiExample("Opt out", value={"status": "opted_out", "note": "asked by phone"}, request_only=True)
        ],
    )
    def update(self, request: Request, phone_number: str) -> Response:
        number = _number(phone_number)
        serializer = ConsentUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.consent_set(
            phone_number=number,
            status=serializer.validated_data["status"],
            note=serializer.validated_data["note"],
            method=Consent.Method.API,
            via=ControlAction.Via.API,
            actor=request.user,
        )
        return self._detail(number)


class InboundMessageListView(generics.ListAPIView):
    """GET /api/inbound/: the replies received, newest first (view_inboundmessage). The
    dispatcher serves POST on the same address: the providers' webhook."""

    serializer_class = InboundMessageSerializer
    filterset_class = InboundMessageFilter
    permission_classes = [ModelPermissionsWithView]

    def get_queryset(self):
        return selectors.inbound_list()

    @extend_schema(summary="Replies received, newest first", description="Filtered by keyword, from_number, provider.")
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)
