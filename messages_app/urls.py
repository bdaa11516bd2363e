from rest_framework.routers import DefaultRouter

from messages_app.api import MessageViewSet

router = DefaultRouter()
# The API's root (/api/) lists more than messages: messaging_site.urls mounts it.
router.include_root_view = False
router.register("messages", MessageViewSet, basename="message")

api_urlpatterns = router.urls
