"""Writes to templates: create, edit (a new version), a language's variant set or removed,
restore. Each change is a new immutable version and one audit row, in one transaction.

Two edits at once must become two versions, never one overwriting the other: each locks
the template's row (SELECT ... FOR UPDATE) before it reads the latest version, so the
second waits for the first to commit and numbers its version after it; the unique
(template, number) constraint backs that up.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from audit.services import Action, Via, control_action_record
from message_templates.models import Template, TemplateVersion
from messages_app.models import Message
from messages_app.validators import validate_content
from restapi.storable import text_storable_problem

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

# A BCP 47-like tag as people write them: "en", "pt-BR", "zh-Hant"; stored in lower case.
LANGUAGE_TAG = re.compile(r"^[a-z]{2,3}(?:-[a-z0-9]{2,8}){0,2}$")
NAME_MAX_LENGTH = 100


def language_normalised(value: Any, *, field: str = "language") -> str:
    if not isinstance(value, str) or not LANGUAGE_TAG.match(value.strip().lower()):
        raise ValidationError({field: [f"{value!r} is not a language tag such as en, tr or pt-br."]})
    return value.strip().lower()


def template_name_checked(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValidationError({"name": ["A template needs a name."]})
    name = name.strip()
    problem = text_storable_problem(name)
    if problem or len(name) > NAME_MAX_LENGTH or any(not char.isprintable() for char in name):
        raise ValidationError({"name": [f"A name is 1 to {NAME_MAX_LENGTH} printable characters."]})
    if name.isascii() and name.isdigit():
        # A client may give a template by name or by id: a name of digits would be ambiguous.
        raise ValidationError({"name": ["A name cannot be only digits (those are ids)."]})
    return name


def template_bodies_checked(bodies: Any, default_language: str) -> dict[str, str]:
    """{language: body}, each body a message's content as it may be written (placeholders
    included), the default language among them; ValidationError naming each problem."""
    if not isinstance(bodies, Mapping) or not bodies:
        raise ValidationError({"bodies": ['At least one body, by language: {"en": "Hello ((name))"}.']})
    checked: dict[str, str] = {}
    problems: list[str] = []
    for language, body in bodies.items():
        try:
            tag = language_normalised(language, field="bodies")
        except ValidationError as exc:
            problems.extend(exc.message_dict["bodies"])
            continue
        if tag in checked:
            problems.append(f"{tag}: given twice.")
            continue
        try:
            if not isinstance(body, str):
                raise ValidationError("A body is text.")
            problem = text_storable_problem(body)
            if problem:
                raise ValidationError(f"The body {problem}.")
            checked[tag] = validate_content(body)
        except ValidationError as exc:
            problems.append(f"{tag}: {' '.join(exc.messages)}")
    if problems:
        raise ValidationError({"bodies": problems})
    if default_language not in checked:
        raise ValidationError({"default_language": [f"The default language {default_language} has no body."]})
    return checked


def template_category_checked(category: Any) -> str:
    if category in (None, ""):
        return ""
    if category not in Message.Category.values:
        raise ValidationError({"category": [f"{category!r} is not one of {', '.join(Message.Category.values)}."]})
    return category


def _label(actor: AbstractBaseUser | None, via: str) -> str:
    if actor is not None and actor.is_authenticated:
        return actor.get_username()
    return "manage.py" if via == Via.COMMAND else ""


def _audit(*, template: Template, version: TemplateVersion, change: str, actor, via: str) -> None:
    control_action_record(
        action=Action.TEMPLATE,
        actor=actor,
        via=via,
        detail={
            "template_id": template.pk,
            "name": template.name,
            "version": version.number,
            "change": change,
            "languages": sorted(version.bodies),
            **({"restored_from": version.restored_from} if version.restored_from else {}),
        },
    )


def template_create(
    *,
    name: str,
    bodies: Mapping[str, str],
    default_language: str,
    category: str = "",
    actor: AbstractBaseUser | None = None,
    via: str = Via.COMMAND,
) -> Template:
    """A new template with its version 1; ValidationError for a bad or taken name, a bad body."""
    name = template_name_checked(name)
    default_language = language_normalised(default_language, field="default_language")
    checked = template_bodies_checked(bodies, default_language)
    category = template_category_checked(category)
    try:
        with transaction.atomic():
            template = Template.objects.create(name=name, current_version=1)
            version = TemplateVersion.objects.create(
                template=template,
                number=1,
                bodies=checked,
                default_language=default_language,
                category=category,
                created_by=_label(actor, via),
            )
            _audit(template=template, version=version, change="create", actor=actor, via=via)
    except IntegrityError:
        raise ValidationError({"name": [f"A template named {name!r} exists already."]}) from None
    logger.info("template id=%s created (version 1, languages %s)", template.pk, ",".join(sorted(checked))[:100])
    return template


def _new_version(
    *,
    template_id: int,
    change: str,
    edit: Any,
    actor: AbstractBaseUser | None,
    via: str,
) -> TemplateVersion:
    """Lock the template, read its latest version, and store `edit(latest)`'s fields
    (bodies, default_language, category, restored_from) as the next version."""
    with transaction.atomic():
        template = Template.objects.select_for_update().get(pk=template_id)
        latest = TemplateVersion.objects.get(template=template, number=template.current_version)
        fields = edit(latest)
        version = TemplateVersion.objects.create(
            template=template, number=latest.number + 1, created_by=_label(actor, via), **fields
        )
        template.current_version = version.number
        template.save(update_fields=["current_version", "updated_at"])
        _audit(template=template, version=version, change=change, actor=actor, via=via)
    logger.info("template id=%s now at version %s (%s)", template.pk, version.number, change)
    return version


def template_edit(
    *,
    template_id: int,
    bodies: Mapping[str, str] | None = None,
    default_language: str | None = None,
    category: str | None = None,
    actor: AbstractBaseUser | None = None,
    via: str = Via.COMMAND,
) -> TemplateVersion:
    """The next version: what is given replaces the latest version's, the rest is kept.
    `bodies` replaces every language's body (languages left out are removed)."""

    def edit(latest: TemplateVersion) -> dict[str, Any]:
        language = (
            latest.default_language
            if default_language is None
            else language_normalised(default_language, field="default_language")
        )
        return {
            "bodies": template_bodies_checked(latest.bodies if bodies is None else bodies, language),
            "default_language": language,
            "category": latest.category if category is None else template_category_checked(category),
        }

    return _new_version(template_id=template_id, change="edit", edit=edit, actor=actor, via=via)


def template_variant_set(
    *, template_id: int, language: str, body: str, actor: AbstractBaseUser | None = None, via: str = Via.COMMAND
) -> TemplateVersion:
    """The next version, with `language`'s body added or replaced."""
    tag = language_normalised(language)

    def edit(latest: TemplateVersion) -> dict[str, Any]:
        return {
            "bodies": template_bodies_checked({**latest.bodies, tag: body}, latest.default_language),
            "default_language": latest.default_language,
            "category": latest.category,
        }

    return _new_version(template_id=template_id, change=f"variant {tag}", edit=edit, actor=actor, via=via)


def template_variant_remove(
    *, template_id: int, language: str, actor: AbstractBaseUser | None = None, via: str = Via.COMMAND
) -> TemplateVersion:
    """The next version, without `language` (not the default language: it is the fallback)."""
    tag = language_normalised(language)

    def edit(latest: TemplateVersion) -> dict[str, Any]:
        if tag not in latest.bodies:
            raise ValidationError({"language": [f"The template has no {tag} variant."]})
        if tag == latest.default_language:
            raise ValidationError({"language": [f"{tag} is the default language; make another the default first."]})
        return {
            "bodies": {lang: text for lang, text in latest.bodies.items() if lang != tag},
            "default_language": latest.default_language,
            "category": latest.category,
        }

    return _new_version(template_id=template_id, change=f"variant {tag} removed", edit=edit, actor=actor, via=via)


def template_restore(
    *, template_id: int, version: int, actor: AbstractBaseUser | None = None, via: str = Via.COMMAND
) -> TemplateVersion:
    """The next version, a copy of `version` (which stays as it was, as every version)."""

    def edit(latest: TemplateVersion) -> dict[str, Any]:
        old = TemplateVersion.objects.filter(template_id=template_id, number=version).first()
        if old is None:
            raise ValidationError({"version": [f"The template has no version {version}."]})
        return {
            "bodies": old.bodies,
            "default_language": old.default_language,
            "category": old.category,
            "restored_from": old.number,
        }

    return _new_version(template_id=template_id, change="restore", edit=edit, actor=actor, via=via)
