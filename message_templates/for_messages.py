"""What messages_app asks of this app (settings.MESSAGE_TEMPLATE_SOURCE): the template a
message is made from, found once, and its text for one message's personalisation.

Errors are Django ValidationErrors keyed by the request's field (template, version,
language, personalisation), which every way in answers as a 400 (or a rejected row)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError

from message_templates.rendering import RenderError, TemplateBody, personalisation_normalised
from message_templates.selectors import template_find, template_version_get, version_language
from message_templates.services import language_normalised
from messages_app.validators import validate_content
from restapi.storable import text_storable_problem


@dataclass(frozen=True)
class TemplateForMessage:
    template_id: int
    version: int
    language: str  # the language whose body is used (after the fallback)
    category: str  # blank: the message's own default
    body: TemplateBody

    def render(self, personalisation: Mapping[str, Any] | None) -> str:
        """The message's content; ValidationError({"personalisation": ...}) naming every
        missing placeholder, a value of the wrong kind, or a text too long."""
        try:
            text = self.body.render(personalisation_normalised(personalisation))
        except RenderError as exc:
            raise ValidationError({"personalisation": [str(exc)]}) from None
        problem = text_storable_problem(text)
        if problem:
            raise ValidationError({"personalisation": [f"The text made from the template {problem}."]})
        try:
            return validate_content(text)
        except ValidationError as exc:
            raise ValidationError(
                {"personalisation": [f"The text made from the template: {' '.join(exc.messages)}"]}
            ) from None


def template_for_message(
    *, template: str | int, version: int | None = None, language: str | None = None
) -> TemplateForMessage:
    found = template_find(ref=template)
    if language is not None:
        language = language_normalised(language)
    chosen = template_version_get(template=found, number=version)
    used = version_language(version=chosen, language=language)
    return TemplateForMessage(
        template_id=found.pk,
        version=chosen.number,
        language=used,
        category=chosen.category,
        body=TemplateBody(chosen.bodies[used]),
    )
