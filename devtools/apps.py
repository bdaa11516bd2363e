from django.apps import AppConfig


class DevtoolsConfig(AppConfig):
    """Development tools (the fake provider); no models, nothing the service needs to run."""

    name = "devtools"
    verbose_name = "Development tools"
