from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from callbacks.urls import api_urlpatterns as callbacks_api_urlpatterns
from consent.urls import api_urlpatterns as consent_api_urlpatterns
from dispatcher.monitoring.health import healthz, readyz
from dispatcher.monitoring.metrics import metrics_view
from dispatcher.urls import urlpatterns as dispatcher_api_urlpatterns
from message_templates.urls import api_urlpatterns as templates_api_urlpatterns
from messages_app.urls import api_urlpatterns as messages_api_urlpatterns
from restapi.docs import redoc_bundle_view
from restapi.root import ApiRootView
from seed_api.urls import urlpatterns as seed_urlpatterns

api_urlpatterns = [
    path(
        "",
        ApiRootView.as_view(
            endpoints={
                "messages": "message-list",
                "sent_messages": "message-sent",
                "bulk": "message-bulk",
                "dispatcher": "dispatcher",
                "providers": "providers",
                "consents": "consent-list",
                "inbound": "inbound",
                "templates": "template-list",
                "callback_endpoints": "callback-endpoint-list",
                "callback_events": "callback-event-list",
                "docs": "swagger-ui",
                "redoc": "redoc",
                "schema": "schema",
            }
        ),
        name="api-root",
    ),
    *messages_api_urlpatterns,
    *dispatcher_api_urlpatterns,
    *consent_api_urlpatterns,
    *templates_api_urlpatterns,
    *callbacks_api_urlpatterns,
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI's start-up script served as a file (docs/?script), not inline: the CSP allows no inline script.
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="swagger-ui"),
    # Redoc from the sidecar's bundle less Redocly's logo, which it would ask cdn.redoc.ly for
    # (restapi/docs.py); the service's own logo shows.
    path("redoc/", SpectacularRedocView.as_view(url_name="schema", template_name="api_docs/redoc.html"), name="redoc"),
    path("redoc/redoc.standalone.js", redoc_bundle_view, name="redoc-bundle"),
]

urlpatterns = [
    path("", RedirectView.as_view(url="/api/docs/", permanent=False)),
    # A short address for the operators' dashboard, which lives under the dispatcher's admin.
    path("admin/dashboard/", RedirectView.as_view(pattern_name="admin:dispatcher_dashboard"), name="dashboard"),
    path("admin/", admin.site.urls),
    path("api/", include(api_urlpatterns)),
    path("api-auth/", include("rest_framework.urls")),
    *seed_urlpatterns,
    # Monitoring: /healthz and /readyz's status anonymous, /metrics and /readyz's checks
    # for METRICS_TOKEN or staff; no trailing slash, as probes and Prometheus expect.
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
]

# Errors Django answers itself are JSON on the API's addresses, like the rest of the API:
# unknown addresses under /api/ (e.g. /api/messages/1.5/attempts/), a refused Host, a crash.
handler400 = "restapi.defaults.bad_request"
handler404 = "restapi.defaults.not_found"
handler500 = "restapi.defaults.server_error"
