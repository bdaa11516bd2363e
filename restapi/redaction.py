"""What of a URL may be shown or written to a log: never its user info
(`user:password@`), nor the values of its query parameters, which carry secrets (a
provider's `?api_key=`) and personal data (`?recipient_phone_number=`, the admin's
search `?q=`).

One home for the rule: the providers' status (GET /api/providers/, the dashboard,
`manage.py providers status`), the configuration errors that quote a URL, and the
access logs (gunicorn's, gunicorn.conf.py; runserver's, messaging_site/logging_config.py).
Only the standard library here: gunicorn's master imports it before Django is set up.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from urllib.parse import unquote_plus

REDACTED = "REDACTED"

# Query parameters whose values are neither secrets nor about a person: an access
# log keeps them, as they say what was asked for. Any other value is redacted, so a
# parameter added later is safe until it is listed here.
LOGGED_QUERY_PARAMETERS = frozenset(
    {
        "status",  # /api/messages/?status=failed
        "page_size",
        "cursor",  # a position in a list: an id and a time
        "format",  # ?format=json
        # The admin's change list: its filters by status, its page and its ordering.
        "status__exact",
        "delivery_status__exact",
        "priority__exact",
        "p",
        "o",
    }
)

_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# What a parameter's name looks like; anything else (`?+905551112233`) is itself data.
_PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")


def url_redacted(url: str, *, values_kept: Collection[str] = ()) -> str:
    """`url` fit to show or log: without user info, every query value (and any fragment)
    replaced by REDACTED except the values of the parameters named in `values_kept`.

    The rest stays as written, neither decoded nor re-encoded, so the line still
    shows what was asked for: `http://host/send?api_key=REDACTED`.
    """
    rest, hash_sign, fragment = url.partition("#")
    rest, question_mark, query = rest.partition("?")
    if scheme := _ABSOLUTE.match(rest):
        authority, slash, path = rest[scheme.end() :].partition("/")
        rest = f"{scheme.group()}{authority.rpartition('@')[2]}{slash}{path}"
    if question_mark:
        rest += "?" + query_redacted(query, values_kept=values_kept)
    if hash_sign:
        rest += "#" + (REDACTED if fragment else "")
    return rest


def query_redacted(query: str, *, values_kept: Collection[str] = ()) -> str:
    """A query string (without its `?`) with the values redacted as `url_redacted` does."""
    return "&".join(_parameter_redacted(parameter, values_kept) for parameter in query.split("&"))


def _parameter_redacted(parameter: str, values_kept: Collection[str]) -> str:
    name, equals, value = parameter.partition("=")
    if not parameter or unquote_plus(name) in values_kept:
        return parameter
    if not _PARAMETER_NAME.fullmatch(name):
        return REDACTED
    return f"{name}{equals}{REDACTED if value else ''}"


def request_line_redacted(line: str) -> str:
    """An access log's request line (`GET /path?query HTTP/1.1`) with its query's values
    redacted but those of LOGGED_QUERY_PARAMETERS."""
    if " " not in line:  # not a request line: all of it is the target, or garbage
        return url_redacted(line, values_kept=LOGGED_QUERY_PARAMETERS)
    method, space, rest = line.partition(" ")
    target, space_before_protocol, protocol = rest.rpartition(" ") if " " in rest else (rest, "", "")
    target = url_redacted(target, values_kept=LOGGED_QUERY_PARAMETERS)
    return f"{method}{space}{target}{space_before_protocol}{protocol}"
