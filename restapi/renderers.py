"""The browsable API as this site renders it (REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"])."""

from __future__ import annotations

from rest_framework import renderers


class BrowsableAPIRenderer(renderers.BrowsableAPIRenderer):
    """DRF's browsable API with a "Log out" that works under the site's
    Content-Security-Policy: DRF's menu submits its logout form from an inline
    onclick, which the policy (no inline script) blocks, so the link did nothing.
    Its template shows the form itself, with a real button (restapi/browsable_api.html).
    Named here rather than overriding rest_framework/api.html, which DRF's own
    folder would shadow (rest_framework comes before restapi in INSTALLED_APPS)."""

    template = "restapi/browsable_api.html"
