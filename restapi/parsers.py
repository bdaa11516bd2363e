"""Request body parsers for every API view (REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"]),
and `json_decode`, which they and the views that read their body raw (the signed
receipts) decode JSON with.

Python's JSON decoder recurses once per nested array or object, so a body of a
few thousand `[` raises RecursionError, which would surface as a 500. No body
this API takes nests deeper than three levels, so bodies nested deeper than
JSON_MAX_DEPTH are refused as a parse error (400; 422 on the seed routes)
before they are decoded.

An integer of more than 4,300 digits makes Python's int() refuse it with advice
about the interpreter's own settings (sys.set_int_max_str_digits()), which is no
answer for a client; none of this API's numbers needs more than 19 digits, so a
longer one is refused in plain words.
"""

from __future__ import annotations

import codecs
import re
from typing import Any

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.utils import json

# The deepest any request body may nest arrays and objects; the API needs 3
# ({"messages": [{...}]}), the rest is room for clients that wrap things.
JSON_MAX_DEPTH = 32

# A JSON string, escapes included (the unrolled form, linear on long strings).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
# The most digits a JSON integer may have: far more than any field takes (a bigint
# has 19), far less than the 4,300 Python's int() reads, and cheap to convert.
JSON_MAX_INTEGER_DIGITS = 100


def json_nesting_exceeds(text: str, *, limit: int) -> bool:
    """Whether `text` opens more than `limit` arrays or objects inside each other.

    Brackets inside strings do not count. Malformed text is not judged here
    (the decoder says what is wrong with it); only its depth is.
    """
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub('""', text)):
        if match.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


class _IntegerTooLong(ValueError):
    pass


def _integer(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > JSON_MAX_INTEGER_DIGITS:
        raise _IntegerTooLong(
            f"a number of {digits} digits; numbers of at most {JSON_MAX_INTEGER_DIGITS} digits are read."
        )
    return int(text)


def json_decode(text: str, *, strict: bool = True) -> Any:
    """`text` decoded as JSON; ParseError (a 400) saying what is wrong with it, also for
    nesting deeper than JSON_MAX_DEPTH and integers longer than JSON_MAX_INTEGER_DIGITS.
    `strict` refuses NaN and Infinity, which are not JSON."""
    if json_nesting_exceeds(text, limit=JSON_MAX_DEPTH):
        raise ParseError(f"JSON parse error - arrays and objects nested deeper than {JSON_MAX_DEPTH} levels.")
    try:
        return json.loads(text, parse_int=_integer, parse_constant=json.strict_constant if strict else None)
    except RecursionError:  # not reached below the limit; kept so that nesting is never a 500
        raise ParseError("JSON parse error - nested too deeply.") from None
    except ValueError as exc:
        raise ParseError(f"JSON parse error - {exc}") from None


class JSONParser(parsers.JSONParser):
    """REST framework's JSON parser, decoding with `json_decode`."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = codecs.getreader(encoding)(stream).read()
        except UnicodeDecodeError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        return json_decode(text, strict=self.strict)
