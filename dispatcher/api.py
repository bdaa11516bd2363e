"""The REST API for the dispatcher (/api/dispatcher/)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import permissions, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from audit.models import ControlAction
from dispatcher.errors import DispatcherConfigError
from dispatcher.models import MAX_BATCH_SIZE, MAX_INTERVAL_SECONDS
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
        summary="Change batch size and/or interval (staff or control permission)",
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
        summary="Start sending, cluster-wide (staff or control permission)",
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
        summary="Stop sending, cluster-wide (staff or control permission)",
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
