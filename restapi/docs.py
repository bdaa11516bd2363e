"""Redoc's code as the API docs serve it: drf-spectacular-sidecar's bundle, less
Redocly's logo.

The bundle draws Redocly's logo beside its "API docs by Redocly" credit from
cdn.redoc.ly, with no option to turn it off; under the site's Content-Security-Policy
(images from this site only) every visit of /api/redoc/ made a request the browser
had to refuse, and a policy violation in its console. Here the logo's element is
taken out of the bundle once per process (the credit stays, as text); a sidecar
upgrade that moves it fails loudly instead of bringing the request back.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

from django.contrib.staticfiles import finders
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import condition, require_safe

REDOC_BUNDLE = "drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js"
# React's createElement("img", {alt: "redocly logo", ..., src: "https://cdn.redoc.ly/..."})
REDOCLY_LOGO = re.compile(
    r'\w+\.createElement\("img",\{alt:"redocly logo",[^{}]*?src:"https://cdn\.redoc\.ly/[^"]*"\}\)'
)
# The browser keeps it a day; a new bundle (a sidecar upgrade) has a new ETag.
MAX_AGE_SECONDS = 86_400


@functools.cache
def redoc_bundle() -> bytes:
    """The sidecar's Redoc bundle, with null where it drew Redocly's logo."""
    path = finders.find(REDOC_BUNDLE)
    if path is None:
        raise ImproperlyConfigured(f"{REDOC_BUNDLE} not found: is drf_spectacular_sidecar in INSTALLED_APPS?")
    source = Path(path).read_text(encoding="utf-8")
    patched, found = REDOCLY_LOGO.subn("null", source)
    if found != 1 or "cdn.redoc.ly" in patched:
        raise ImproperlyConfigured(
            f"{REDOC_BUNDLE}: Redocly's logo was found {found} time(s), not once; "
            "restapi/docs.py needs updating for this drf-spectacular-sidecar"
        )
    return patched.encode("utf-8")


def _bundle_etag(request: HttpRequest) -> str:
    return hashlib.sha256(redoc_bundle()).hexdigest()[:32]


@require_safe
@condition(etag_func=_bundle_etag)
def redoc_bundle_view(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(redoc_bundle(), content_type="text/javascript; charset=utf-8")
    response["Cache-Control"] = f"public, max-age={MAX_AGE_SECONDS}"
    return response
