"""The REST API for templates (/api/templates/): list, create, edit (a new version),
versions, restore, a language's variant, preview with the SMS cost."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from audit.models import ControlAction
from message_templates import selectors, services
from message_templates.models import Template, TemplateVersion
from message_templates.permissions import CanChangeTemplates, CanViewTemplates
from message_templates.preview import template_preview
from message_templates.serializers import (
    TemplateCreateSerializer,
    TemplatePreviewResultSerializer,
    TemplatePreviewSerializer,
    TemplateRestoreSerializer,
    TemplateSerializer,
    TemplateVariantSerializer,
    TemplateVersionSerializer,
    TemplateWriteSerializer,
)
from messages_app.permissions import ModelPermissionsWithView
from restapi.parsers import JSONParser

VIA = ControlAction.Via.API


def _call(service: Callable[..., Any], **kwargs: Any) -> Any:
    """A service's ValidationError as the API's 400, keyed by field."""
    try:
        return service(**kwargs)
    except DjangoValidationError as exc:
        raise ValidationError(exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}) from None


def _bodies(data: dict, default_language: str | None) -> dict[str, str] | None:
    if "body" in data:
        return {(default_language or "en").strip().lower(): data["body"]}
    return data.get("bodies")


PREVIEW_RESPONSES = {
    200: TemplatePreviewResultSerializer,
    400: OpenApiResponse(
        description="A placeholder without a value (all named), a value of the wrong kind, or a "
        "text too long: what sending it would answer."
    ),
}


@extend_schema_view(
    list=extend_schema(summary="List templates, by name, each with its current version"),
    retrieve=extend_schema(summary="Get one template with its current version"),
)
class TemplateViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = TemplateSerializer
    lookup_value_regex = "[0-9]+"
    permission_classes = [ModelPermissionsWithView]
    parser_classes = [JSONParser]

    def get_queryset(self):
        return selectors.template_list()

    def get_serializer_context(self) -> dict:
        return {**super().get_serializer_context(), "current_versions": {}}

    def get_serializer(self, *args, **kwargs):
        # Each template is shown with its current version: a page's versions read in one
        # query and handed to TemplateSerializer through its context, not one per template.
        serializer = super().get_serializer(*args, **kwargs)
        if args and isinstance(serializer.context.get("current_versions"), dict):
            templates = args[0] if isinstance(args[0], list | tuple) else [args[0]]
            serializer.context["current_versions"].update(selectors.templates_current_versions(templates=templates))
        return serializer

    def _template(self, template: Template, code: int = status.HTTP_200_OK) -> Response:
        template.refresh_from_db()
        return Response(self.get_serializer(template).data, status=code)

    @extend_schema(
        summary="Create a template (its version 1)",
        description="`body` (the default language's) or `bodies` (by language); placeholders are ((name)) and "
        "((name??text when name is true)). Recorded in the audit log.",
        request=TemplateCreateSerializer,
        responses={201: TemplateSerializer, 400: OpenApiResponse(description="A bad or taken name, a bad body.")},
        examples=[
            OpenApiExample(
                "Appointment reminder",
                value={"name": "appointment", "body": "Hi ((name)), see you at ((time)).((vip?? Free parking.))"},
                request_only=True,
            )
        ],
    )
    def create(self, request: Request) -> Response:
        serializer = TemplateCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        language = data.get("default_language") or "en"
        template = _call(
            services.template_create,
            name=data["name"],
            bodies=_bodies(data, language),
            default_language=language,
            category=data.get("category", ""),
            actor=request.user,
            via=VIA,
        )
        return self._template(template, status.HTTP_201_CREATED)

    @extend_schema(
        summary="Edit a template: a new version",
        description="What is given replaces the current version's (`bodies` replaces every language; `body` only "
        "the default language's); the rest is copied. Earlier versions stay as they were. PUT and PATCH alike.",
        request=TemplateWriteSerializer,
        responses={200: TemplateSerializer},
        examples=[OpenApiExample("A new text", value={"body": "Hi ((name)), see you at ((time))."}, request_only=True)],
    )
    def update(self, request: Request, pk: str | None = None) -> Response:
        template = self.get_object()
        serializer = TemplateWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        bodies = data.get("bodies")
        if "body" in data:
            current = selectors.template_version_get(template=template)
            bodies = {**current.bodies, current.default_language: data["body"]}
        _call(
            services.template_edit,
            template_id=template.pk,
            bodies=bodies,
            default_language=data.get("default_language"),
            category=data.get("category"),
            actor=request.user,
            via=VIA,
        )
        return self._template(template)

    @extend_schema(exclude=True)
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        return self.update(request, pk)

    @extend_schema(
        summary="A template's versions, newest first",
        responses={200: TemplateVersionSerializer(many=True)},
    )
    @action(detail=True, methods=["get"], pagination_class=None)
    def versions(self, request: Request, pk: str | None = None) -> Response:
        template = self.get_object()
        return Response(TemplateVersionSerializer(selectors.template_versions(template_id=template.pk), many=True).data)

    @extend_schema(
        summary="Restore a version: a new version copying it (change_template)",
        request=TemplateRestoreSerializer,
        responses={201: TemplateVersionSerializer, 400: OpenApiResponse(description="No such version.")},
        examples=[OpenApiExample("Back to version 1", value={"version": 1}, request_only=True)],
    )
    @action(detail=True, methods=["post"], permission_classes=[CanChangeTemplates])
    def restore(self, request: Request, pk: str | None = None) -> Response:
        template = self.get_object()
        serializer = TemplateRestoreSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version: TemplateVersion = _call(
            services.template_restore,
            template_id=template.pk,
            version=serializer.validated_data["version"],
            actor=request.user,
            via=VIA,
        )
        return Response(TemplateVersionSerializer(version).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        methods=["PUT"],
        summary="Set a language's variant: a new version (change_template)",
        description="Adds or replaces the body in `language` (e.g. tr, pt-br).",
        request=TemplateVariantSerializer,
        responses={200: TemplateVersionSerializer},
        examples=[
            OpenApiExample(
                "Turkish", value={"body": "Merhaba ((name)), saat ((time)) için görüşürüz."}, request_only=True
            )
        ],
    )
    @extend_schema(
        methods=["DELETE"],
        summary="Remove a language's variant: a new version (change_template)",
        description="Not the default language: it is every other language's fallback.",
        request=None,
        responses={200: TemplateVersionSerializer},
    )
    @action(
        detail=True,
        methods=["put", "delete"],
        url_path=r"variants/(?P<language>[A-Za-z0-9-]{2,16})",
        permission_classes=[CanChangeTemplates],
    )
    def variant(self, request: Request, pk: str | None = None, language: str = "") -> Response:
        template = self.get_object()
        if request.method == "DELETE":
            version = _call(
                services.template_variant_remove,
                template_id=template.pk,
                language=language,
                actor=request.user,
                via=VIA,
            )
            return Response(TemplateVersionSerializer(version).data)
        serializer = TemplateVariantSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = _call(
            services.template_variant_set,
            template_id=template.pk,
            language=language,
            body=serializer.validated_data["body"],
            actor=request.user,
            via=VIA,
        )
        return Response(TemplateVersionSerializer(version).data)

    @extend_schema(
        summary="Preview a message from this template, with its SMS cost (view_template)",
        description="The text `personalisation` makes of the template (its `version`, in `language`; or of an "
        "unsaved `body`), its encoding (GSM-7 or UCS-2), its segments, and the characters that make it UCS-2 "
        "with their positions. Nothing is stored. For the total of a bulk request, see "
        "`POST /api/messages/bulk/?dry_run=true`.",
        request=TemplatePreviewSerializer,
        responses=PREVIEW_RESPONSES,
        examples=[
            OpenApiExample(
                "Sample data",
                value={"personalisation": {"name": "Şule", "time": "10:00", "vip": "yes"}},
                request_only=True,
            )
        ],
    )
    @action(detail=True, methods=["post"], permission_classes=[CanViewTemplates])
    def preview(self, request: Request, pk: str | None = None) -> Response:
        template = self.get_object()
        return self._preview(request, template_id=template.pk)

    @extend_schema(
        summary="Preview a body not saved yet, with its SMS cost (view_template)",
        operation_id="api_templates_body_preview",
        request=TemplatePreviewSerializer,
        responses=PREVIEW_RESPONSES,
        examples=[
            OpenApiExample(
                "A draft",
                value={"body": "Your code is ((code)) 🔑", "personalisation": {"code": "4821"}},
                request_only=True,
            )
        ],
    )
    @action(detail=False, methods=["post"], url_path="preview", permission_classes=[CanViewTemplates])
    def preview_body(self, request: Request) -> Response:
        return self._preview(request, template_id=None)

    def _preview(self, request: Request, *, template_id: int | None) -> Response:
        serializer = TemplatePreviewSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if template_id is None and "body" not in data:
            raise ValidationError({"body": ["The body to preview (or preview a saved template at its address)."]})
        preview = _call(
            template_preview,
            template_id=template_id,
            personalisation=data.get("personalisation"),
            version=data.get("version"),
            language=data.get("language"),
            body=data.get("body"),
        )
        cost = preview.cost
        return Response(
            TemplatePreviewResultSerializer(
                {
                    "text": cost.text,
                    "length": cost.length,
                    "encoding": cost.encoding,
                    "segments": cost.segments,
                    "ucs2_characters": cost.ucs2_characters,
                    "version": preview.version,
                    "language": preview.language,
                }
            ).data
        )
