"""App configuration: registers checks, connects the live status push, autodiscovers ``durable_programs.py``."""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class DurableDjangoConfig(AppConfig):
    name = "durable_django"
    label = "durable_django"
    verbose_name = "Durable processes"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, flowcontrol, live, tasks, wakeups, worker  # noqa: F401  (checks registers the system checks)

        # Wake-ups look the Celery tasks up by name (tasks is imported above so that they are registered) and
        # run an instance in this process with RUN_INLINE through the worker's entry point.
        wakeups.connect(run_inline=worker.run_instance)
        flowcontrol.connect()  # wake-ups go to their program's queue, with its priority

        # Push every transition to the channel layer, in every process that loads the project (web, ASGI,
        # workers). Idempotent: connected under a dispatch_uid, so a second ready() adds nothing.
        live.connect()

        # Programs, migrations and model bindings live in <app>/durable_programs.py.
        autodiscover_modules("durable_programs")
