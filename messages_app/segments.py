"""How many SMS segments a text takes.

GSM-7 (GSM 03.38, with its extension table) when every character is in it: 160
septets in one message, 153 per part of a longer one, an extension character
(`{`, `€`, ...) taking two, never split across parts. Anything else makes the
whole message UCS-2: 70 UTF-16 code units in one, 67 per part, a character
outside the Basic Multilingual Plane (most emoji) taking two, a surrogate pair
never split. The alphabet comes from the `gsm0338` codec rather than a table of
our own.
"""

from __future__ import annotations

import codecs

import gsm0338  # noqa: F401 - registers the "gsm03.38" codec

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67


def _gsm7_septets(text: str) -> list[int] | None:
    """Septets per character, or None if some character is not in GSM-7."""
    encode = codecs.getencoder("gsm03.38")
    try:
        return [len(encode(char)[0]) for char in text]
    except UnicodeEncodeError:
        return None


def _parts(sizes: list[int], *, single: int, part: int) -> int:
    if sum(sizes) <= single:
        return 1
    parts, used = 1, 0
    for size in sizes:
        if used + size > part:  # a character that does not fit starts the next part whole
            parts, used = parts + 1, 0
        used += size
    return parts


def sms_segments(text: str) -> int:
    septets = _gsm7_septets(text)
    if septets is not None:
        return _parts(septets, single=GSM7_SINGLE, part=GSM7_PART)
    units = [2 if ord(char) > 0xFFFF else 1 for char in text]
    return _parts(units, single=UCS2_SINGLE, part=UCS2_PART)


def sms_encoding(text: str) -> str:
    return "GSM-7" if _gsm7_septets(text) is not None else "UCS-2"


def sms_ucs2_characters(text: str) -> list[tuple[int, str]]:
    """The characters that make `text` UCS-2 (none if it is GSM-7), each with its position
    (1 for the first character, counted in characters as the length limit is)."""
    encode = codecs.getencoder("gsm03.38")
    found = []
    for position, char in enumerate(text, start=1):
        try:
            encode(char)
        except UnicodeEncodeError:
            found.append((position, char))
    return found
