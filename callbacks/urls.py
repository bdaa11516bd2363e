from rest_framework.routers import SimpleRouter

from callbacks.api import CallbackEndpointViewSet, CallbackEventViewSet

router = SimpleRouter()
router.register("callbacks/endpoints", CallbackEndpointViewSet, basename="callback-endpoint")
router.register("callbacks/events", CallbackEventViewSet, basename="callback-event")
api_urlpatterns = router.urls
