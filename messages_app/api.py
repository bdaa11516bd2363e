"""The REST API for messages (/api/messages/)."""

from __future__ import annotations

from collections.abc import Callable

from django.db import transaction
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from audit.models import ControlAction
from messages_app import selectors, services
from messages_app.errors import MessageStateError
from messages_app.filters import MessageFilter
from messages_app.models import Message
from messages_app.permissions import (
    CanCancelMessages,
    CanRequeueMessages,
    ModelPermissionsWithView,
    may_view_messages,
)
from messages_app.serializers import (
    DeliveryAttemptSerializer,
    MessageActionResultSerializer,
    MessageBulkCreateSerializer,
    MessageBulkDryRunSerializer,
    MessageBulkResultSerializer,
    MessageCreateSerializer,
    MessageSerializer,
)
from messages_app.template_source import TemplateLookup
from restapi.idempotency import idempotent
from restapi.pagination import SentMessageCursorPagination
from restapi.parsers import JSONParser
from restapi.schema import text_with_settings


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The message is not in a state that allows this."
    default_code = "conflict"


# Request bodies that succeed as they stand in Swagger UI's "Try it out".
CREATE_EXAMPLES = [
    OpenApiExample(
        "One message",
        value={"recipient_phone_number": "+905551112233", "content": "Your code is 4821."},
        request_only=True,
    ),
    OpenApiExample(
        "Scheduled, in any number format",
        value={
            "recipient_phone_number": "+90 555 111 22 33",
            "content": "Your appointment is tomorrow at 10:00.",
            "send_after": "2030-01-31T09:00:00+03:00",
        },
        request_only=True,
    ),
]
BULK_EXAMPLES = [
    OpenApiExample(
        "Two messages",
        value={
            "messages": [
                {"recipient_phone_number": "+905551112233", "content": "Your order has shipped."},
                {"recipient_phone_number": "+442079460000", "content": "Your order has shipped."},
            ]
        },
        request_only=True,
    ),
]


def _dry_run(request: Request) -> bool:
    """?dry_run=true or false, once, as the schema documents it; anything else is a 400
    (a typo must not queue what its sender meant to check)."""
    given = request.query_params.getlist("dry_run")
    if not given:
        return False
    if len(given) > 1 or given[0] not in ("true", "false"):
        raise ValidationError({"dry_run": ["true or false, once."]})
    return given[0] == "true"


# What a requeue or a cancel answers: the message to a caller who may read messages, only its
# id and new status to one who may not (MessageActionResultSerializer). anyOf, not oneOf: the
# whole message has an id and a status too.
ACTION_RESULT_SCHEMA = {
    "anyOf": [
        {"$ref": "#/components/schemas/Message"},
        {
            "type": "object",
            "properties": {
                "id": {"type": "integer", "readOnly": True},
                "status": {"$ref": "#/components/schemas/MessageStatusEnum"},
            },
            "required": ["id", "status"],
        },
    ]
}
ACTION_RESULT = OpenApiResponse(
    ACTION_RESULT_SCHEMA,
    description="The message; only its `id` and `status` for a caller without the view permission.",
)
# The messages each action applies to, all a caller finds who may act but not read.
ACTIONABLE = {"requeue": selectors.messages_requeueable, "cancel": selectors.messages_cancellable}


@extend_schema_view(
    list=extend_schema(
        summary="List messages, newest first",
        description="Every message, filtered by `status` and `recipient_phone_number` if given, in cursor pages "
        "of 50 (`page_size` up to 500; follow `next`).",
    ),
    retrieve=extend_schema(summary="Get one message"),
    create=extend_schema(
        summary="Queue a message",
        description=text_with_settings(
            "Stores the message as `unsent`; the dispatcher sends it at its pace. The phone number may be "
            "written in any format with its country code and is stored in E.164; the content is 1 to "
            "{MESSAGE_MAX_LENGTH} characters. With `send_after`, it is not sent before then. A recipient who "
            "opted out (STOP) gets no message: 422, naming the reason."
        ),
        request=MessageCreateSerializer,
        responses={
            201: MessageSerializer,
            422: OpenApiResponse(description="The recipient opted out; nothing stored."),
        },
        examples=CREATE_EXAMPLES,
    ),
)
class MessageViewSet(
    mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    serializer_class = MessageSerializer
    filterset_class = MessageFilter
    # ASCII digits only: int() would read /api/messages/<ARABIC-INDIC DIGIT ONE>/ as message 1.
    lookup_value_regex = "[0-9]+"
    # Reads need view_message, create and bulk add_message; requeue has its own (below).
    permission_classes = [ModelPermissionsWithView]

    def get_queryset(self):
        if self.action == "sent":
            return selectors.messages_sent()
        if self.action in ACTIONABLE and not may_view_messages(self.request.user):
            # Acting is not reading: any other id, existing or not, is the same 404.
            return ACTIONABLE[self.action]()
        return selectors.message_list()

    def get_serializer_class(self):
        if self.action == "create":
            return MessageCreateSerializer
        if self.action == "bulk":
            return MessageBulkCreateSerializer
        return MessageSerializer

    def create(self, request: Request, *args, **kwargs) -> Response:
        def queue() -> Response:
            serializer = MessageCreateSerializer(data=request.data, context={"template_lookup": TemplateLookup()})
            serializer.is_valid(raise_exception=True)
            message = services.message_create(**serializer.validated_data, created_by=request.user)
            return Response(MessageSerializer(message).data, status=status.HTTP_201_CREATED)

        return idempotent(request, queue)

    @extend_schema(
        summary=text_with_settings("Queue up to {MESSAGE_BULK_MAX_ITEMS} messages, all or nothing"),
        description=text_with_settings(
            "Up to {MESSAGE_BULK_MAX_ITEMS} messages, each checked as `POST /api/messages/` checks one: "
            "either all are stored, in order, or none is, and the 400 names each invalid item by its index. "
            "An item to a recipient who opted out is not stored and is listed in `refused` (its index and why), "
            "the others are; if none can be, the answer is 422 with the same body."
        ),
        request=MessageBulkCreateSerializer,
        parameters=[
            OpenApiParameter(
                "dry_run",
                bool,
                description="true: check and render every item (templates too) and answer 200 with how many "
                "messages would be queued and their total SMS segments; nothing is stored.",
            )
        ],
        responses={
            201: MessageBulkResultSerializer,
            200: OpenApiResponse(MessageBulkDryRunSerializer, description="A dry run: nothing stored."),
            422: MessageBulkResultSerializer,
        },
        examples=BULK_EXAMPLES,
    )
    # JSON only: a list of objects has no form encoding, and the schema says so.
    @action(detail=False, methods=["post"], parser_classes=[JSONParser])
    def bulk(self, request: Request) -> Response:
        dry_run = _dry_run(request)

        def queue() -> Response:
            # One lookup for the request: each template named is read once, not once per item.
            serializer = MessageBulkCreateSerializer(data=request.data, context={"template_lookup": TemplateLookup()})
            serializer.is_valid(raise_exception=True)
            if dry_run:
                return self._bulk_dry_run(serializer.validated_data["messages"])
            refused: list[dict] = []
            with transaction.atomic():
                messages = services.messages_bulk_create(
                    items=[{**item, "created_by": request.user} for item in serializer.validated_data["messages"]],
                    on_refused=lambda index, number, reason: refused.append(
                        {"index": index, "recipient_phone_number": number, "reason": reason}
                    ),
                )
            # Some queued: 201, the refused listed; none could be: 422, the same body.
            code = status.HTTP_201_CREATED if messages else status.HTTP_422_UNPROCESSABLE_ENTITY
            return Response({"messages": MessageSerializer(messages, many=True).data, "refused": refused}, status=code)

        # A dry run stores nothing, so it is not remembered under an Idempotency-Key either:
        # the real request with the same key must still queue.
        return queue() if dry_run else idempotent(request, queue)

    @staticmethod
    def _bulk_dry_run(items: list[dict]) -> Response:
        refused: list[dict] = []
        messages = services.messages_bulk_checked(
            items=items,
            on_refused=lambda index, number, reason: refused.append(
                {"index": index, "recipient_phone_number": number, "reason": reason}
            ),
        )
        return Response(
            {
                "messages": len(messages),
                "segments": sum(message.segments for message in messages),
                "refused": refused,
            }
        )

    @extend_schema(
        summary="Sent messages, most recently sent first",
        # many=True: documented as a cursor page like the list, not as one message.
        responses=MessageSerializer(many=True),
        filters=False,
    )
    @action(detail=False, methods=["get"], pagination_class=SentMessageCursorPagination, filterset_class=None)
    def sent(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(MessageSerializer(page, many=True).data)

    @extend_schema(
        summary="The delivery attempts of a message, oldest first",
        responses={200: DeliveryAttemptSerializer(many=True)},
        filters=False,
    )
    @action(detail=True, methods=["get"], pagination_class=None, filterset_class=None)
    def attempts(self, request: Request, pk: str | None = None) -> Response:
        message = self.get_object()
        return Response(DeliveryAttemptSerializer(selectors.message_attempts(message_id=message.pk), many=True).data)

    @extend_schema(
        summary="Put a failed message back in the queue (the requeue permission)",
        description="A `failed` message becomes `unsent` again with a fresh budget of attempts, and is sent "
        "at the dispatcher's pace. Any other status answers 409 and changes nothing (404 to a caller without "
        "the view permission). Recorded in the audit log.",
        request=None,
        responses={
            200: ACTION_RESULT,
            409: OpenApiResponse(description="The message is not failed (told to callers who may read it)."),
        },
    )
    # An operator's action, not a model write: POST here is not "add a message".
    @action(detail=True, methods=["post"], permission_classes=[CanRequeueMessages])
    def requeue(self, request: Request, pk: str | None = None) -> Response:
        return self._act(request, services.message_requeue)

    @extend_schema(
        summary="Cancel an unsent or scheduled message (the cancel permission)",
        description="Moves an unsent message (also one scheduled with send_after) to `cancelled`: it is never "
        "sent. A message being sent, sent, failed, expired or already cancelled answers 409 (404 to a caller "
        "without the view permission).",
        request=None,
        responses={
            200: ACTION_RESULT,
            409: OpenApiResponse(description="The message is not unsent (told to callers who may read it)."),
        },
    )
    @action(detail=True, methods=["post"], permission_classes=[CanCancelMessages])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        return self._act(request, services.message_cancel_queued)

    def _act(self, request: Request, act: Callable[..., Message]) -> Response:
        """Requeue or cancel the message, and answer with as much of it as the caller may read."""
        may_view = may_view_messages(request.user)
        message = self.get_object()
        try:
            message = act(message_id=message.pk, actor=request.user, via=ControlAction.Via.API)
        except MessageStateError as exc:
            if not may_view:
                # It changed since get_object(): answered as any id the action does not apply to is.
                self.get_object()
            raise Conflict(str(exc)) from None
        serializer = MessageSerializer if may_view else MessageActionResultSerializer
        return Response(serializer(message).data)
