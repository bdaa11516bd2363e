"""What a text costs as an SMS: its encoding, its segments and the characters that make it
UCS-2 (each one halves what a segment holds), as the preview endpoints and the admin show it."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from message_templates.for_messages import TemplateForMessage, template_for_message
from message_templates.rendering import TemplateBody
from message_templates.services import language_normalised
from messages_app.segments import sms_encoding, sms_segments, sms_ucs2_characters


@dataclass(frozen=True)
class Ucs2Character:
    character: str
    position: int  # 1 for the text's first character
    code_point: str  # "U+015F"
    name: str  # "LATIN SMALL LETTER S WITH CEDILLA"


@dataclass(frozen=True)
class TextCost:
    text: str
    length: int
    encoding: str
    segments: int
    ucs2_characters: list[Ucs2Character] = field(default_factory=list)


def text_cost(text: str) -> TextCost:
    return TextCost(
        text=text,
        length=len(text),
        encoding=sms_encoding(text),
        segments=sms_segments(text),
        ucs2_characters=[
            Ucs2Character(
                character=char,
                position=position,
                code_point=f"U+{ord(char):04X}",
                name=unicodedata.name(char, ""),
            )
            for position, char in sms_ucs2_characters(text)
        ],
    )


@dataclass(frozen=True)
class TemplatePreview:
    cost: TextCost
    version: int | None
    language: str


def template_preview(
    *,
    template_id: int | None,
    personalisation: Mapping[str, Any] | None,
    version: int | None = None,
    language: str | None = None,
    body: str | None = None,
) -> TemplatePreview:
    """The message `template_id` (its `version`, in `language`) would be with
    `personalisation`, and its cost; with `body`, that unsaved body instead (the admin's
    live preview). ValidationError keyed by field, as sending it would answer."""
    if body is None:
        found = template_for_message(template=template_id, version=version, language=language)
        return TemplatePreview(
            cost=text_cost(found.render(personalisation)), version=found.version, language=found.language
        )
    tag = language_normalised(language) if language else ""
    unsaved = TemplateForMessage(
        template_id=template_id or 0, version=0, language=tag, category="", body=TemplateBody(body)
    )
    return TemplatePreview(cost=text_cost(unsaved.render(personalisation)), version=None, language=tag)
