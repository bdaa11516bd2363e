"""Request body parsers for every API view (REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"]).

Python's JSON decoder recurses once per nested array or object, so a body of a
few thousand `[` raises RecursionError, which would surface as a 500. No body
this API takes nests deeper than three levels, so bodies nested deeper than
JSON_MAX_DEPTH are refused as a parse error (400; 422 on the seed routes)
before they are decoded.
"""

from __future__ import annotations

import codecs
import re

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


class JSONParser(parsers.JSONParser):
    """REST framework's JSON parser, refusing bodies nested deeper than JSON_MAX_DEPTH."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = codecs.getreader(encoding)(stream).read()
        except UnicodeDecodeError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        if json_nesting_exceeds(text, limit=JSON_MAX_DEPTH):
            raise ParseError(f"JSON parse error - arrays and objects nested deeper than {JSON_MAX_DEPTH} levels.")
        try:
            return json.loads(text, parse_constant=json.strict_constant if self.strict else None)
        except RecursionError:  # not reached below the limit; kept so that nesting is never a 500
            raise ParseError("JSON parse error - nested too deeply.") from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
