"""Reads of templates: by id or name, a version, the body for a language."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet

from message_templates.models import Template, TemplateVersion


def template_list() -> QuerySet[Template]:
    return Template.objects.order_by("name")


def template_versions(*, template_id: int) -> QuerySet[TemplateVersion]:
    return TemplateVersion.objects.filter(template_id=template_id).order_by("-number")


def template_find(*, ref: str | int) -> Template:
    """A template by id (a number, or text of ASCII digits: names cannot be only digits)
    or by name; ValidationError({"template": ...}) when there is none."""
    if isinstance(ref, bool) or not isinstance(ref, str | int):
        raise ValidationError({"template": ["A template is given by its name or its id."]})
    if isinstance(ref, int) or (ref.isascii() and ref.strip().isdigit()):
        template = Template.objects.filter(pk=int(ref)).first() if 0 < int(ref) < 2**63 else None
    else:
        template = Template.objects.filter(name=ref.strip()).first()
    if template is None:
        raise ValidationError({"template": [f"No template {ref!r}."]})
    return template


def template_version_get(*, template: Template, number: int | None = None) -> TemplateVersion:
    """The template's version `number` (its current one if None); ValidationError otherwise."""
    number = template.current_version if number is None else number
    version = TemplateVersion.objects.filter(template=template, number=number).first()
    if version is None:
        raise ValidationError({"version": [f"Template {template.name!r} has no version {number}."]})
    return version


def version_language(*, version: TemplateVersion, language: str | None) -> str:
    """The language whose body a message in `language` gets: that one, else its base
    language ("pt" for "pt-br"), else the version's default language."""
    if language:
        tag = language.strip().lower()
        for candidate in (tag, tag.split("-")[0]):
            if candidate in version.bodies:
                return candidate
    return version.default_language


def templates_current_versions(*, templates) -> dict[int, TemplateVersion]:
    """Each template's current version, by template id, in one query (a page of the list)."""
    templates = [t for t in templates if isinstance(t, Template)]
    if not templates:
        return {}
    wanted = Q()
    for template in templates:
        wanted |= Q(template_id=template.pk, number=template.current_version)
    return {version.template_id: version for version in TemplateVersion.objects.filter(wanted)}


def template_placeholders(*, template: Template) -> list[str]:
    """The placeholders of the template's current version, in every language."""
    from message_templates.rendering import TemplateBody

    version = template_version_get(template=template)
    names: dict[str, None] = {}
    for body in version.bodies.values():
        names.update(dict.fromkeys(TemplateBody(body).placeholders))
    return list(names)
