"""Placeholders in a template's body, and filling them in: pure functions, no database.

`((name))` is replaced by the value of `name`; `((name??text))` by `text` when the value
of `name` is true (see `is_true`) and by nothing otherwise. Names are case-insensitive
and their spaces collapsed (`((First  Name))` is `first name`).

No template language on purpose (as GOV.UK Notify's notifications-utils `Field`): a
body is cut into literal text and slots once, by one regular expression over the body
only, and a message is the literals joined with the values as plain text. A value is
never scanned again, so a value holding `((x))`, `{{ settings }}` or HTML stays those
characters; nothing in a value or a body can reach code, settings or other objects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# ((name)) or ((name??text)). A name has no parentheses nor "?"; a conditional's text
# has no parentheses (so "((a??b ((c))))" is not read as nesting: it has no placeholder
# "a", and ((c)) is one). Anything that does not match stays literal text.
PLACEHOLDER = re.compile(r"\(\(([^()?]+?)(?:\?\?([^()]*))?\)\)")

# Values that hide a conditional's text; any other value shows it.
FALSE_VALUES = frozenset({"", "no", "n", "false", "0", "off"})

Value = str | int | float | bool


def placeholder_name(raw: str) -> str:
    """The name a placeholder or a personalisation key stands for: case and runs of
    spaces do not matter."""
    return " ".join(raw.split()).casefold()


class RenderError(ValueError):
    """Personalisation that cannot fill a body: `missing` names every placeholder without a
    value (in the body's order), `invalid` every value that is not text, a number or
    true/false (name -> why)."""

    def __init__(self, *, missing: list[str] | None = None, invalid: dict[str, str] | None = None) -> None:
        self.missing = missing or []
        self.invalid = invalid or {}
        problems = []
        if self.missing:
            problems.append(f"Missing personalisation: {', '.join(self.missing)}.")
        problems.extend(f"{name}: {reason}" for name, reason in self.invalid.items())
        super().__init__(" ".join(problems))


def personalisation_normalised(values: Mapping[str, Any] | None) -> dict[str, Value]:
    """`values` by placeholder name; raise RenderError for keys that collide once
    normalised ("Name" and "name") and for values that are lists, objects or null."""
    normalised: dict[str, Value] = {}
    invalid: dict[str, str] = {}
    for key, value in (values or {}).items():
        if not isinstance(key, str) or not key.strip():
            invalid[str(key)] = "A personalisation key must be a non-blank name."
            continue
        name = placeholder_name(key)
        if name in normalised:
            invalid[key] = f"Given twice (names are case-insensitive: {name!r})."
        elif value is None or not isinstance(value, str | int | float):
            invalid[key] = "A value must be text, a number or true/false."
        else:
            normalised[name] = value
    if invalid:
        raise RenderError(invalid=invalid)
    return normalised


def is_true(value: Value) -> bool:
    """Whether a conditional `((name??text))` shows its text: true, a number other than 0,
    or text other than "", "no", "n", "false", "0", "off" (in any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    return value.strip().casefold() not in FALSE_VALUES


def value_text(value: Value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


@dataclass(frozen=True)
class Slot:
    name: str
    conditional_text: str | None  # None: the value itself


class TemplateBody:
    """A body cut into literal text and slots once; `render` fills it as often as asked
    (a bulk request renders each message without parsing the body again)."""

    def __init__(self, body: str) -> None:
        self.body = body
        parts: list[str | Slot] = []
        at = 0
        for found in PLACEHOLDER.finditer(body):
            parts.append(body[at : found.start()])
            parts.append(Slot(name=placeholder_name(found.group(1)), conditional_text=found.group(2)))
            at = found.end()
        parts.append(body[at:])
        self.parts = tuple(parts)
        self.placeholders = tuple(dict.fromkeys(part.name for part in parts if isinstance(part, Slot)))

    def render(self, values: Mapping[str, Value]) -> str:
        """The text with every slot filled from `values` (normalised names, as
        `personalisation_normalised` gives them); RenderError naming every missing one."""
        missing = [name for name in self.placeholders if name not in values]
        if missing:
            raise RenderError(missing=missing)
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            elif part.conditional_text is None:
                out.append(value_text(values[part.name]))
            elif is_true(values[part.name]):
                out.append(part.conditional_text)
        return "".join(out)


def render(body: str, personalisation: Mapping[str, Any] | None) -> str:
    """`body` filled from `personalisation` (any key case); RenderError otherwise."""
    return TemplateBody(body).render(personalisation_normalised(personalisation))
