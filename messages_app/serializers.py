from __future__ import annotations

from collections.abc import Mapping

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from messages_app.callback_policy import callback_url_checked
from messages_app.models import DeliveryAttempt, Message
from messages_app.template_source import TemplateLookup
from messages_app.validators import normalize_phone_number, validate_content, validate_expiry
from restapi.fields import AsciiDateTimeField, AsciiIntegerField
from restapi.schema import text_with_settings


def _as_drf_error(exc: DjangoValidationError) -> serializers.ValidationError:
    return serializers.ValidationError(exc.messages)


class StrictCharField(serializers.CharField):
    """A CharField that takes only strings: DRF's turns JSON numbers into text ("123")."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class RejectUnknownFieldsMixin:
    """Answer 400 naming every key the serializer does not know, next to any other error.

    DRF drops unknown keys silently, so a typo ("recipient_phone") or a field that
    cannot be set ("status") would look accepted while doing nothing.
    """

    # What Django's own forms add to a form-encoded body (the browsable API's forms).
    IGNORED_KEYS = frozenset({"csrfmiddlewaretoken"})

    def to_internal_value(self, data):
        unknown = sorted(set(data) - set(self.fields) - self.IGNORED_KEYS, key=str) if isinstance(data, Mapping) else []
        errors: dict = {}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if not unknown or not isinstance(exc.detail, dict):
                raise
            errors = dict(exc.detail)
        if unknown:
            errors.update({str(name): ["Unknown field."] for name in unknown})
            raise serializers.ValidationError(errors)
        return value


class MessageSerializer(serializers.ModelSerializer):
    """How a message is shown everywhere in the API."""

    class Meta:
        model = Message
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
            "expires_at",
            "priority",
            "segments",
            "delivery_status",
            "delivery_error_code",
            "delivery_status_at",
            "category",
            "status_reason",
            # Made from a template: which, its version and language, and the values it was given.
            "template_id",
            "template_version",
            "template_language",
            "personalisation",
            # The client's: echoed in its status callbacks; where they go, if not its endpoints.
            "client_reference",
            "callback_url",
        ]
        read_only_fields = fields


class MessageActionResultSerializer(serializers.ModelSerializer):
    """What a requeue or a cancel answers a caller who may not read messages: what they
    acted on and what it became, never its number or content."""

    class Meta:
        model = Message
        fields = ["id", "status"]
        read_only_fields = fields


class DeliveryAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeliveryAttempt
        fields = [
            "number",
            "provider",
            "started_at",
            "duration_ms",
            "http_status",
            "outcome",
            "error",
            "provider_message_id",
        ]
        read_only_fields = fields


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "integer"}]})
class TemplateRefField(serializers.Field):
    """A template by its name (text) or its id (a number)."""

    default_error_messages = {"invalid": "A template's name (text) or id (a number)."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, str | int) or (isinstance(data, str) and not data.strip()):
            self.fail("invalid")
        if isinstance(data, str) and len(data) > 100:
            self.fail("invalid")
        return data

    def to_representation(self, value):
        return value


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]},
    }
)
class PersonalisationField(serializers.Field):
    """An object of values by placeholder name, taken as it is: the renderer checks each value
    (text, a number or true/false) and names the wrong ones, once, without a field per value."""

    # Doubled braces: DRF formats its error messages.
    default_error_messages = {"invalid": 'An object of values by placeholder name: {{"name": "Ada"}}.'}

    def to_internal_value(self, data):
        if not isinstance(data, Mapping):
            self.fail("invalid")
        return dict(data)

    def to_representation(self, value):
        return value


class MessageCreateSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    recipient_phone_number = StrictCharField(
        max_length=64, help_text="International format with country code; stored in E.164, e.g. +905551112233."
    )
    content = StrictCharField(
        trim_whitespace=False,
        required=False,
        help_text=text_with_settings(
            "1 to {MESSAGE_MAX_LENGTH} characters (an emoji counts as one). Required unless `template` is given."
        ),
    )
    template = TemplateRefField(
        required=False,
        help_text="Instead of `content`: the template (its name or id) whose text, filled from "
        "`personalisation`, is the message's content.",
    )
    version = AsciiIntegerField(
        required=False,
        min_value=1,
        max_value=2**31 - 1,
        help_text="With `template`: the version to use (default: its current one).",
    )
    language = StrictCharField(
        required=False,
        max_length=16,
        help_text="With `template`: the language wanted (e.g. tr, pt-br); a template without it uses its base "
        "language (pt), else its default language. The message records the language used.",
    )
    personalisation = PersonalisationField(
        required=False,
        help_text="With `template`: a value (text, number or true/false) for each ((placeholder)), names in any "
        "case. A missing one is a 400 naming every missing placeholder; extra ones are ignored.",
    )
    send_after = AsciiDateTimeField(
        required=False,
        allow_null=True,
        help_text="Optional: do not send before this time (ISO 8601, from 2000-01-01 to 2100-01-01 UTC).",
    )
    expires_at = AsciiDateTimeField(
        required=False,
        allow_null=True,
        help_text="Optional: never send after this time (ISO 8601, before 2100-01-01 UTC); then the message "
        "becomes `expired`.",
    )
    priority = serializers.ChoiceField(
        choices=Message.Priority.choices,
        default=Message.Priority.NORMAL,
        help_text="high, normal (default) or low: higher goes first, lower keeps a share of every tick.",
    )
    category = serializers.ChoiceField(
        choices=Message.Category.choices,
        required=False,
        help_text=text_with_settings(
            "transactional (codes, alerts: never held) or marketing (held outside quiet hours in the "
            "recipient's local time). Default: {MESSAGE_DEFAULT_CATEGORY}."
        ),
    )

    client_reference = StrictCharField(
        required=False,
        max_length=255,
        help_text="Optional: your own reference for the message, echoed in its status callbacks.",
    )
    callback_url = StrictCharField(
        required=False,
        max_length=2000,
        help_text="Optional: where this message's status callbacks go, on the origin (scheme, host, port) of a "
        "registered callback endpoint, which signs them; any other URL is a 400.",
    )

    def to_internal_value(self, data):
        # content is required unless the item names a template. The fields are the
        # serializer's (one instance for every item of a bulk), set before each item.
        if "content" in self.fields:
            self.fields["content"].required = not (
                "template" in self.fields and isinstance(data, Mapping) and "template" in data
            )
        return super().to_internal_value(data)

    def validate(self, attrs: dict) -> dict:
        try:
            validate_expiry(expires_at=attrs.get("expires_at"), send_after=attrs.get("send_after"))
        except DjangoValidationError as exc:
            raise serializers.ValidationError({"expires_at": exc.messages}) from None
        template = attrs.pop("template", None)
        if template is None:
            stray = [name for name in ("version", "language", "personalisation") if name in attrs]
            if stray:
                raise serializers.ValidationError({name: ["Only with a template."] for name in stray})
            return attrs
        if "content" in attrs:
            raise serializers.ValidationError({"content": ["Give content or a template, not both."]})
        # One lookup for a whole request (the bulk view passes it): its template is read once.
        lookup = self.context.get("template_lookup") or TemplateLookup()
        try:
            attrs.update(
                lookup.message_fields(
                    template=template,
                    version=attrs.pop("version", None),
                    language=attrs.pop("language", None),
                    personalisation=attrs.pop("personalisation", None),
                    category=attrs.get("category"),
                )
            )
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None
        return attrs

    def validate_recipient_phone_number(self, value: str) -> str:
        try:
            return normalize_phone_number(value)
        except DjangoValidationError as exc:
            raise _as_drf_error(exc) from None

    def validate_callback_url(self, value: str) -> str:
        try:
            return callback_url_checked(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict.get("callback_url", exc.messages)) from None

    def validate_content(self, value: str) -> str:
        try:
            return validate_content(value)
        except DjangoValidationError as exc:
            raise _as_drf_error(exc) from None


class MessageBulkCreateSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    messages = MessageCreateSerializer(many=True, allow_empty=False)

    def get_fields(self):
        fields = super().get_fields()
        # ListSerializer checks max_length before validating any item, so an
        # oversized request is refused without parsing its phone numbers.
        fields["messages"].max_length = settings.MESSAGE_BULK_MAX_ITEMS
        fields["messages"].error_messages["max_length"] = "At most {max_length} messages per request."
        return fields


class RefusedItemSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="The item's position in the request, from 0.")
    recipient_phone_number = serializers.CharField()
    reason = serializers.CharField()


class MessageBulkResultSerializer(serializers.Serializer):
    messages = MessageSerializer(many=True)
    refused = RefusedItemSerializer(many=True, help_text="The items not stored: their recipient opted out.")


class MessageBulkDryRunSerializer(serializers.Serializer):
    messages = serializers.IntegerField(help_text="How many messages the request would queue.")
    segments = serializers.IntegerField(help_text="Their SMS segments in all (what sending them costs).")
    refused = RefusedItemSerializer(many=True, help_text="The items that would not be stored: opted out.")
