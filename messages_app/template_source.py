"""Messages made from a template: messages_app sits below the app that keeps templates
(import-linter's layers), so it asks through the function named by
settings.MESSAGE_TEMPLATE_SOURCE (a dotted path, as MESSAGE_RECIPIENT_POLICY):
`source(template=, version=, language=) -> found`, where `found` has `template_id`,
`version`, `language`, `category` and `render(personalisation) -> content`; both raise
Django's ValidationError keyed by the request's field. Unset: no message can name a template.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, Protocol

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.module_loading import import_string

TEMPLATE_FIELDS = ("template", "version", "language", "personalisation")


class FoundTemplate(Protocol):
    template_id: int
    version: int
    language: str
    category: str

    def render(self, personalisation: Mapping[str, Any] | None) -> str: ...


@cache
def _source(path: str) -> Callable[..., FoundTemplate] | None:
    return import_string(path) if path else None


class TemplateLookup:
    """The templates of one request or import, each (template, version, language) looked
    up once, its answer or its error kept: a bulk of 1,000 messages from one template
    reads it once, and renders each message in Python."""

    def __init__(self) -> None:
        self._found: dict[tuple, FoundTemplate | ValidationError] = {}

    def get(self, *, template: str | int, version: int | None, language: str | None) -> FoundTemplate:
        key = (type(template), template, version, language)
        if key not in self._found:
            source = _source(getattr(settings, "MESSAGE_TEMPLATE_SOURCE", ""))
            if source is None:
                raise ValidationError({"template": ["Templates are not available in this service."]})
            try:
                self._found[key] = source(template=template, version=version, language=language)
            except ValidationError as exc:
                self._found[key] = exc
        found = self._found[key]
        if isinstance(found, ValidationError):
            raise found
        return found

    def message_fields(
        self,
        *,
        template: str | int,
        version: int | None = None,
        language: str | None = None,
        personalisation: Mapping[str, Any] | None = None,
        category: str | None = None,
    ) -> dict[str, Any]:
        """message_new's fields for a message made from `template`: its content rendered,
        what it was made from, and the template's category unless the caller gave one."""
        found = self.get(template=template, version=version, language=language)
        return {
            "content": found.render(personalisation),
            "template_id": found.template_id,
            "template_version": found.version,
            "template_language": found.language,
            "personalisation": dict(personalisation or {}),
            "category": category or found.category or None,
        }
