from __future__ import annotations

from django.contrib.auth import get_user_model
from rest_framework import serializers

from callbacks.models import CallbackAttempt, CallbackEndpoint, CallbackEvent, EventType
from messages_app.serializers import StrictCharField
from restapi.fields import AsciiDateTimeField, AsciiIntegerField


class StrictBooleanField(serializers.BooleanField):
    """true or false as JSON has them: not 0, 1, "yes" or "on", which DRF's BooleanField also takes."""

    def to_internal_value(self, data):
        if isinstance(data, bool):
            return data
        self.fail("invalid", input=data)


class CallbackEndpointSerializer(serializers.ModelSerializer):
    """An endpoint with its health; never its secret."""

    class Meta:
        model = CallbackEndpoint
        fields = [
            "id",
            "name",
            "url",
            "event_types",
            "owner",
            "enabled",
            "disabled_reason",
            "created_at",
            "last_success_at",
            "last_failure_at",
            "failing_since",
            "failures_in_row",
            "last_latency_ms",
            "last_error",
            "previous_secret_expires_at",
        ]
        read_only_fields = fields


class CallbackEndpointCreateSerializer(serializers.Serializer):
    name = StrictCharField(max_length=100)
    url = StrictCharField(
        max_length=2000, help_text="https (plain http only where CALLBACK_ALLOW_HTTP allows it); no private address."
    )
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=EventType.choices),
        required=False,
        default=list,
        help_text="The event types it gets; empty or left out: all.",
    )
    owner = serializers.PrimaryKeyRelatedField(
        queryset=get_user_model().objects.all(),
        required=False,
        allow_null=True,
        help_text="A user's id: the endpoint then gets only events about that user's messages.",
    )
    enabled = StrictBooleanField(required=False, default=True)


class CallbackEndpointUpdateSerializer(serializers.Serializer):
    name = StrictCharField(max_length=100, required=False)
    url = StrictCharField(max_length=2000, required=False)
    event_types = serializers.ListField(child=serializers.ChoiceField(choices=EventType.choices), required=False)
    enabled = StrictBooleanField(required=False)


class CallbackEndpointSecretSerializer(CallbackEndpointSerializer):
    secret = serializers.CharField(read_only=True, help_text="whsec_...: shown this once; keep it.")

    class Meta(CallbackEndpointSerializer.Meta):
        fields = [*CallbackEndpointSerializer.Meta.fields, "secret"]
        read_only_fields = fields


class RotateSerializer(serializers.Serializer):
    overlap_seconds = AsciiIntegerField(
        required=False,
        default=86_400,
        min_value=0,
        max_value=30 * 86_400,
        help_text="How long the previous secret still signs too (both signatures sent). Default a day.",
    )


class ReplaySerializer(serializers.Serializer):
    since = AsciiDateTimeField(help_text="Every event of the endpoint created since this time is delivered again.")


class ReplayResultSerializer(serializers.Serializer):
    replayed = serializers.IntegerField()


class CallbackAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = CallbackAttempt
        fields = ["number", "started_at", "duration_ms", "http_status", "outcome", "error"]
        read_only_fields = fields


class CallbackEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = CallbackEvent
        fields = [
            "id",
            "event_id",
            "endpoint",
            "target_url",
            "event_type",
            "message_id",
            "message_uuid",
            "client_reference",
            "status",
            "error_code",
            "detail",
            "sequence",
            "occurred_at",
            "data",
            "state",
            "attempts",
            "next_attempt_at",
            "delivered_at",
            "last_http_status",
            "last_error",
        ]
        read_only_fields = fields


class CallbackEventDetailSerializer(CallbackEventSerializer):
    attempts_made = CallbackAttemptSerializer(many=True, read_only=True)

    class Meta(CallbackEventSerializer.Meta):
        fields = [*CallbackEventSerializer.Meta.fields, "attempts_made"]
        read_only_fields = fields
