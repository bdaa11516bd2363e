from django.apps import AppConfig


class RestApiConfig(AppConfig):
    """Site-wide REST API conventions (errors, pagination, throttles, schema); its
    templates are the API docs pages. No models."""

    name = "restapi"
    verbose_name = "REST API conventions"
