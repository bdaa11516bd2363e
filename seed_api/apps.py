from django.apps import AppConfig


class SeedApiConfig(AppConfig):
    """The Go service's routes (no models): the outermost layer but the site itself."""

    name = "seed_api"
    verbose_name = "Seed-compatible routes"
