from django.apps import AppConfig
from django.db.models.signals import post_delete, post_migrate, post_save


def _ensure_schedule(sender, using="default", **kwargs):
    from callbacks.schedule import callbacks_schedule_ensure

    callbacks_schedule_ensure(using=using)


class CallbacksConfig(AppConfig):
    name = "callbacks"
    verbose_name = "Status callbacks"

    def ready(self) -> None:
        from callbacks.models import CallbackEndpoint
        from callbacks.outbox import OutboxListener, endpoint_cache_clear
        from consent.events import consent_events
        from messages_app.events import message_events

        listener = OutboxListener()
        message_events.listen(listener)
        consent_events.listen(listener)
        # A change made in this process is seen by its next transition at once.
        post_save.connect(endpoint_cache_clear, sender=CallbackEndpoint, dispatch_uid="callbacks_cache_save")
        post_delete.connect(endpoint_cache_clear, sender=CallbackEndpoint, dispatch_uid="callbacks_cache_delete")
        post_migrate.connect(_ensure_schedule, sender=self, dispatch_uid="callbacks_schedule")
