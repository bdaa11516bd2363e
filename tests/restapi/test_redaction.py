"""What of a URL may be shown or logged (restapi/redaction.py), as a table of cases."""

from __future__ import annotations

import pytest

from restapi.redaction import LOGGED_QUERY_PARAMETERS, request_line_redacted, url_redacted


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:hunter2@host/send?api_key=SECRETQ", "http://host/send?api_key=REDACTED"),
        ("https://user@host:8443/a/b", "https://host:8443/a/b"),
        ("https://host", "https://host"),
        ("https://host/?a=1&b&&c=", "https://host/?a=REDACTED&b&&c="),
        ("https://host/p#token=x", "https://host/p#REDACTED"),
        ("redis://:pw@cache:6379/0", "redis://cache:6379/0"),
        # Not user info: an @ in the path or the query.
        ("https://host/a@b?to=x@y", "https://host/a@b?to=REDACTED"),
        # A name that is not one is data too; so is a name written in percent escapes.
        ("/x?+905551112233", "/x?REDACTED"),
        ("/x?recipient%5Fphone_number=%2B905551112233", "/x?REDACTED"),
        ("", ""),
    ],
)
def test_a_url_is_shown_without_user_info_and_query_values(url, shown):
    assert url_redacted(url) == shown


def test_the_values_of_parameters_named_harmless_are_kept():
    target = "/api/messages/?status=failed&recipient_phone_number=%2B905551112233&page_size=5&q=Ay%C5%9Fe"

    assert url_redacted(target, values_kept=LOGGED_QUERY_PARAMETERS) == (
        "/api/messages/?status=failed&recipient_phone_number=REDACTED&page_size=5&q=REDACTED"
    )


@pytest.mark.parametrize(
    ("line", "logged"),
    [
        (
            "GET /api/messages/?recipient_phone_number=%2B905551112233&status=sent HTTP/1.1",
            "GET /api/messages/?recipient_phone_number=REDACTED&status=sent HTTP/1.1",
        ),
        ("GET /healthz HTTP/1.1", "GET /healthz HTTP/1.1"),
        ("GET /?q=905551112233", "GET /?q=REDACTED"),  # HTTP/0.9: no protocol
        ("/?q=905551112233", "/?q=REDACTED"),  # not a request line at all
        ("GET /?q=a b HTTP/1.1", "GET /?q=REDACTED HTTP/1.1"),
    ],
)
def test_a_request_line_is_logged_without_personal_data(line, logged):
    assert request_line_redacted(line) == logged
