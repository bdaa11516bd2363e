from django.apps import AppConfig
from django.db.backends.signals import connection_created

from restapi import database_outage


def _connection_given(sender, connection, **kwargs) -> None:
    database_outage.reachability.connected()


class RestApiConfig(AppConfig):
    """Site-wide REST API conventions (errors, pagination, throttles, schema); its
    templates are the API docs pages. No models."""

    name = "restapi"
    verbose_name = "REST API conventions"

    def ready(self) -> None:
        # A request given a database connection (from the pool, or a new one) proves
        # PostgreSQL reachable: it ends an outage restapi.database_outage noted.
        connection_created.connect(_connection_given, dispatch_uid="restapi.database_outage")
