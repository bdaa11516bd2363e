from __future__ import annotations

from rest_framework import serializers

from message_templates.models import Template, TemplateVersion
from message_templates.rendering import TemplateBody
from messages_app.models import Message
from messages_app.serializers import RejectUnknownFieldsMixin, StrictCharField

BODIES_HELP = 'The body in each language: {"en": "Hello ((name))", "tr": "Merhaba ((name))"}.'


class TemplateVersionSerializer(serializers.ModelSerializer):
    placeholders = serializers.SerializerMethodField(help_text="The placeholders of its bodies, names in lower case.")

    class Meta:
        model = TemplateVersion
        fields = [
            "number",
            "bodies",
            "default_language",
            "category",
            "placeholders",
            "created_at",
            "created_by",
            "restored_from",
        ]
        read_only_fields = fields

    def get_placeholders(self, version: TemplateVersion) -> list[str]:
        names: dict[str, None] = {}
        for body in version.bodies.values():
            names.update(dict.fromkeys(TemplateBody(body).placeholders))
        return list(names)


class TemplateSerializer(serializers.ModelSerializer):
    """A template with its current version."""

    current = serializers.SerializerMethodField()

    class Meta:
        model = Template
        fields = ["id", "name", "current_version", "created_at", "updated_at", "current"]
        read_only_fields = fields

    def get_current(self, template: Template) -> dict:
        version = self.context["current_versions"].get(template.pk)
        return TemplateVersionSerializer(version).data if version is not None else None


class TemplateWriteSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """What a create or an edit takes: `body` (the default language's) or `bodies` (all of them)."""

    body = StrictCharField(required=False, trim_whitespace=False, help_text="The default language's body.")
    bodies = serializers.DictField(child=StrictCharField(trim_whitespace=False), required=False, help_text=BODIES_HELP)
    default_language = StrictCharField(required=False, max_length=16, help_text="Default: en (on create).")
    category = serializers.ChoiceField(
        choices=[("", "None"), *Message.Category.choices],
        required=False,
        help_text="transactional or marketing: the category of messages made from it (unless they give one).",
    )

    def validate(self, attrs: dict) -> dict:
        if "body" in attrs and "bodies" in attrs:
            raise serializers.ValidationError({"body": ["Give body or bodies, not both."]})
        return attrs


class TemplateCreateSerializer(TemplateWriteSerializer):
    name = StrictCharField(max_length=100, help_text="Unique; how messages and the CSV import name it.")

    def validate(self, attrs: dict) -> dict:
        attrs = super().validate(attrs)
        if "body" not in attrs and "bodies" not in attrs:
            raise serializers.ValidationError({"body": ["A template needs a body (or bodies)."]})
        return attrs


class TemplateRestoreSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    version = serializers.IntegerField(min_value=1, max_value=2**31 - 1, help_text="The version to copy.")


class TemplateVariantSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    body = StrictCharField(trim_whitespace=False, help_text="The body in this language.")


class TemplatePreviewSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    personalisation = serializers.DictField(required=False, help_text="Sample values, as a message would give them.")
    version = serializers.IntegerField(required=False, min_value=1, max_value=2**31 - 1)
    language = StrictCharField(required=False, max_length=16)
    body = StrictCharField(
        required=False,
        trim_whitespace=False,
        help_text="A body not saved yet, previewed instead of the template's (the admin's live preview).",
    )


class Ucs2CharacterSerializer(serializers.Serializer):
    character = serializers.CharField()
    position = serializers.IntegerField(help_text="1 for the text's first character.")
    code_point = serializers.CharField(help_text="e.g. U+015F")
    name = serializers.CharField(help_text="Its Unicode name.")


class TemplatePreviewResultSerializer(serializers.Serializer):
    text = serializers.CharField(help_text="The message's content as it would be sent.")
    length = serializers.IntegerField(help_text="In characters, as the length limit counts.")
    encoding = serializers.ChoiceField(choices=["GSM-7", "UCS-2"])
    segments = serializers.IntegerField(help_text="SMS segments it takes (what it costs).")
    ucs2_characters = Ucs2CharacterSerializer(many=True, help_text="The characters that make it UCS-2.")
    version = serializers.IntegerField(allow_null=True, help_text="The version used (null for a body not saved).")
    language = serializers.CharField(help_text="The language used (after the fallback).")
