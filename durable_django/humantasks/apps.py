"""App config of human tasks (label ``durable_humantasks``).

A separate app so that its table has its own migrations and its receivers
(task rows kept current after every transition, and rebuilt after each sweep)
are connected in every process that loads the project: web, ASGI and Celery
workers. Its ``ready()`` also registers the judge of the events that reach a
human-task wait (:mod:`durable_django.judges`). The live status push is connected by ``durable_django`` itself
(this app only moves it after its own receiver).
"""

from __future__ import annotations

from django.apps import AppConfig


class HumanTasksConfig(AppConfig):
    name = "durable_django.humantasks"
    label = "durable_humantasks"
    verbose_name = "Durable human tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from .. import judges, live
        from . import assignment, sync

        judges.register_judge(assignment.judge_answer)
        sync.connect()
        # The push was connected by durable_django's ready(); move it after the task-row receiver, so a page
        # that re-reads on the push sees the current task (live.connect() never connects it twice).
        live.connect()
