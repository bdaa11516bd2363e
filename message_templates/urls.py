from rest_framework.routers import DefaultRouter

from message_templates.api import TemplateViewSet

router = DefaultRouter()
router.include_root_view = False
router.register("templates", TemplateViewSet, basename="template")

api_urlpatterns = router.urls
