from django.urls import path

from consent.api import ConsentViewSet

api_urlpatterns = [
    path("consents/", ConsentViewSet.as_view({"get": "list"}), name="consent-list"),
    path(
        "consents/<str:phone_number>/",
        ConsentViewSet.as_view({"get": "retrieve", "put": "update"}),
        name="consent-detail",
    ),
]
