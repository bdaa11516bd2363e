from django.urls import re_path
from django.views.generic import RedirectView

from seed_api.views import SeedMessagesView, SeedStatusView, SeedWorkerView

# The Go service's routes, with or without a trailing slash as it accepted them.
urlpatterns = [
    re_path(r"^messages/?$", SeedMessagesView.as_view(), name="seed-messages"),
    re_path(r"^messages/worker/(?P<action>[^/]+)/?$", SeedWorkerView.as_view(), name="seed-worker"),
    re_path(r"^status/?$", SeedStatusView.as_view(), name="seed-status"),
    re_path(r"^swagger/?$", RedirectView.as_view(pattern_name="swagger-ui"), name="seed-swagger"),
]
