from __future__ import annotations

from rest_framework import serializers

from consent.models import Consent, ConsentChange, InboundMessage
from messages_app.serializers import RejectUnknownFieldsMixin, StrictCharField


class ConsentChangeSerializer(serializers.ModelSerializer):
    class Meta:
        model = ConsentChange
        fields = ["status", "method", "changed_at", "changed_by", "inbound_message", "note"]
        read_only_fields = fields


class ConsentSerializer(serializers.ModelSerializer):
    """A number's consent as the list shows it."""

    class Meta:
        model = Consent
        fields = ["phone_number", "status", "changed_at", "method", "changed_by", "inbound_message", "note"]
        read_only_fields = fields


class ConsentDetailSerializer(ConsentSerializer):
    """One number's consent with every change, newest first."""

    history = ConsentChangeSerializer(many=True, read_only=True)

    class Meta(ConsentSerializer.Meta):
        fields = [*ConsentSerializer.Meta.fields, "history"]
        read_only_fields = fields


class ConsentUpdateSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    status = serializers.ChoiceField(choices=Consent.Status.choices, help_text="opted_in or opted_out.")
    note = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=500,
        default="",
        help_text="Optional: why, or the proof's reference.",
    )


class InboundMessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = InboundMessage
        fields = [
            "id",
            "provider",
            "provider_message_id",
            "from_number",
            "to_number",
            "text",
            "received_at",
            "keyword",
            "reply_message",
        ]
        read_only_fields = fields
