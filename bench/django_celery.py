"""The Celery app of the Django benchmark's workers, plus the bare task used as the floor.

``celery -A bench.django_celery worker`` runs durable_django's tasks (they are
``shared_task``) and :func:`ping`. Two signal handlers note when a
``durable_django.run_instance`` task starts and push that time to Redis only
after the task has finished, so the note costs the measured path nothing but
a ``time.time()`` call.
"""

from __future__ import annotations

import os
import time

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.django_settings")

app = Celery("durable_bench")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

_started: dict[str, float] = {}


@app.task(name="bench.ping", ignore_result=True)
def ping(key: str) -> None:
    """The floor: a bare task that records when it starts."""
    t = time.time()
    from .django_programs import redis_client

    redis_client().rpush(key, repr(t))


@task_prerun.connect
def _note_start(task_id=None, task=None, args=None, **kwargs) -> None:
    if task is not None and task.name == "durable_django.run_instance" and args:
        _started[args[0]] = time.time()


@task_postrun.connect
def _push_start(task_id=None, task=None, args=None, **kwargs) -> None:
    if task is not None and task.name == "durable_django.run_instance" and args:
        t = _started.pop(args[0], None)
        if t is not None and os.environ.get("DURABLE_BENCH_NOTE_STARTS") == "1":
            from .django_programs import note_key, redis_client

            redis_client().rpush(note_key("started", args[0]), repr(t))


@worker_ready.connect
def _ready(sender=None, **kwargs) -> None:
    """Tell the benchmark this worker consumes (a Redis key, so the worker can log at WARNING only)."""
    name = os.environ.get("DURABLE_BENCH_WORKER")
    if name:
        from .django_programs import note_key, redis_client

        redis_client().set(note_key("ready", name), "1", ex=600)
