"""GET /api/: what the service is and where its parts are, for a client or a person
arriving at the API (the browsable API shows it as a page)."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.utils.formatting import markup_description
from rest_framework.views import APIView


class ApiRootView(APIView):
    """Lists `endpoints` (name -> URL name) as absolute links after the service's
    description (SPECTACULAR_SETTINGS["DESCRIPTION"], the one the docs show)."""

    endpoints: dict[str, str] = {}

    def get_view_name(self) -> str:
        return settings.SPECTACULAR_SETTINGS["TITLE"]

    def get_view_description(self, html: bool = False) -> str:
        description = settings.SPECTACULAR_SETTINGS["DESCRIPTION"]
        return markup_description(description) if html else description

    @extend_schema(exclude=True)  # a map of the API, not one of its operations
    def get(self, request: Request, format: str | None = None) -> Response:
        links = {name: reverse(url_name, request=request, format=format) for name, url_name in self.endpoints.items()}
        return Response({"description": self.get_view_description(), **links})
