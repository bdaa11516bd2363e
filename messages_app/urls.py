from rest_framework.routers import DefaultRouter

from messages_app.api import MessageViewSet

router = DefaultRouter()
router.register("messages", MessageViewSet, basename="message")

api_urlpatterns = router.urls
