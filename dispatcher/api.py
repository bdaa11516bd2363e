"""The REST API for the dispatcher (/api/dispatcher/)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import permissions, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from audit.models import ControlAction
from dispatcher.errors import DispatcherConfigError
from dispatcher.permissions import CanControlDispatcher
from dispatcher.serializers import DispatcherConfigSerializer, DispatcherStatusSerializer
from dispatcher.state import (
    dispatcher_configure,
    dispatcher_start,
    dispatcher_state_read,
    dispatcher_status,
    dispatcher_stop,
)

VIA = ControlAction.Via.API


class DispatcherViewSet(viewsets.GenericViewSet):
    """The cluster-wide dispatcher: read by any user, controlled by staff or
    holders of dispatcher.control_dispatcher (every control is audited)."""

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

    @extend_schema(summary="Dispatcher state and message counts", responses=DispatcherStatusSerializer)
    def retrieve(self, request: Request) -> Response:
        return self._status_response()

    @extend_schema(
        summary="Change batch size and/or interval (staff or control permission)",
        request=DispatcherConfigSerializer,
        responses=DispatcherStatusSerializer,
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
        summary="Start sending, cluster-wide (staff or control permission)",
        request=None,
        responses=DispatcherStatusSerializer,
    )
    @action(detail=False, methods=["post"])
    def start(self, request: Request) -> Response:
        dispatcher_start(actor=request.user, via=VIA)
        return self._status_response()

    @extend_schema(
        summary="Stop sending, cluster-wide (staff or control permission)",
        request=None,
        responses=DispatcherStatusSerializer,
    )
    @action(detail=False, methods=["post"])
    def stop(self, request: Request) -> Response:
        dispatcher_stop(actor=request.user, via=VIA)
        return self._status_response()
