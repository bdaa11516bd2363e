from django.apps import AppConfig


class ConsentConfig(AppConfig):
    name = "consent"
    verbose_name = "Consent"

    def ready(self) -> None:
        # A keyword list or a quiet-hours window that cannot be read stops start-up,
        # naming the setting, rather than the first reply or message that needs it.
        from consent.conf import consent_settings

        consent_settings()
