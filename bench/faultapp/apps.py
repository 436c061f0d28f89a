from django.apps import AppConfig


class FaultAppConfig(AppConfig):
    name = "bench.faultapp"
    label = "faultapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery.signals import task_postrun

        from .observe import record_wakeup

        task_postrun.connect(record_wakeup, dispatch_uid="bench.faultapp.record_wakeup", weak=False)
