"""App configuration: registers checks, connects the live status push, autodiscovers ``durable_programs.py``."""

from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.module_loading import autodiscover_modules


class DurableDjangoConfig(AppConfig):
    name = "durable_django"
    label = "durable_django"
    verbose_name = "Durable processes"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, flowcontrol, live, progress, tasks, telemetry, wakeups, worker  # noqa: F401  (checks)

        # Wake-ups look the Celery tasks up by name (tasks is imported above so that they are registered) and
        # run an instance in this process with RUN_INLINE through the worker's entry point.
        wakeups.connect(run_inline=worker.run_instance)
        flowcontrol.connect()  # wake-ups go to their program's queue, with its priority

        # Push every transition to the channel layer, in every process that loads the project (web, ASGI,
        # workers). Idempotent: connected under a dispatch_uid, so a second ready() adds nothing.
        live.connect()

        # Spans, metrics and logs when DURABLE["TELEMETRY"] turns them on (nothing imported or connected otherwise).
        telemetry.configure()

        # The size limits of durable.set_status()/durable.publish() come from the DURABLE settings.
        progress.apply_settings()

        # Programs, migrations and model bindings live in <app>/durable_programs.py.
        autodiscover_modules("durable_programs")

        # Schedules declared in code (decorator, DURABLE["SCHEDULES"]) are written to the table after migrate,
        # never here: ready() must not query the database. Importing the module registers its Celery task.
        from . import schedules

        post_migrate.connect(schedules._sync_after_migrate, sender=self, dispatch_uid="durable_django.schedules")
