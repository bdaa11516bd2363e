from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _ensure_dispatcher_running(sender, using="default", **kwargs):
    # Deploying is starting: after `migrate` the state row (running) and the
    # schedule exist, with no manual step. Existing ones are left untouched, so
    # a stopped dispatcher stays stopped across deploys.
    from dispatcher.schedule import dispatcher_schedule_ensure
    from dispatcher.state import dispatcher_state_ensure

    dispatcher_state_ensure(using=using)
    dispatcher_schedule_ensure(using=using)


class DispatcherConfig(AppConfig):
    name = "dispatcher"
    verbose_name = "Dispatcher"

    def ready(self) -> None:
        from django_q.signals import post_spawn

        from dispatcher.tasks import worker_handles_sigterm

        post_migrate.connect(_ensure_dispatcher_running, sender=self, dispatch_uid="dispatcher_ensure_running")
        post_spawn.connect(worker_handles_sigterm, dispatch_uid="dispatcher_worker_sigterm")
