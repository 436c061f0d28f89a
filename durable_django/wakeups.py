"""Wake-ups: the Celery messages that tell a worker an instance has something to do.

The row is the truth; a message is only a wake-up, and the periodic sweep
(:func:`durable_django.worker.sweep`) sends lost ones again. Every wake-up is
sent after the commit of the transaction that made the instance runnable
(:func:`after_commit`), so a worker never sees an uncommitted row and a rolled
back request sends nothing. A transaction that wakes many instances sends
them in messages of ``BATCH_SIZE`` ids (:class:`_Outbox`); a timer due soon
gets a message with an ETA in the database's time (:func:`schedule_timer`,
:data:`DB_ETA_HEADER`). With ``RUN_INLINE`` the instance runs in this
process after the commit instead.

The tasks are looked up by their registered names in the current Celery app
(which honours eager mode), so that this module does not import
:mod:`durable_django.tasks`, which sits above it; the app's ``ready()``
imports the tasks and connects the inline runner (:func:`connect`).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import current_app
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from kombu.exceptions import KombuError

from . import clock, db, signals
from .conf import durable_settings
from .models import DurableInstance, Status

log = logging.getLogger("durable_django")

#: Registered names of the Celery tasks in :mod:`durable_django.tasks`.
RUN_INSTANCE, RUN_INSTANCES = "durable_django.run_instance", "durable_django.run_instances"

_local = threading.local()
_runner: Callable[[str], Any] | None = None
#: instance ids -> the Celery options of each one's wake-up (its queue, priority); see durable_django.flowcontrol
_router: Callable[[list[str]], dict[str, dict[str, Any]]] | None = None


def connect(*, run_inline: Callable[[str], Any]) -> None:
    """Set the function that runs an instance in this process with ``RUN_INLINE`` (called by the app's ``ready()``)."""
    global _runner
    _runner = run_inline


def connect_router(route: Callable[[list[str]], dict[str, dict[str, Any]]]) -> None:
    """Set the function that gives each instance's wake-up its queue and priority (flow control)."""
    global _router
    _router = route


def _routes(instance_ids: list[str]) -> dict[str, dict[str, Any]]:
    return _router(instance_ids) if _router is not None else {}


def _inline_runner() -> Callable[[str], Any]:
    if _runner is None:
        raise ImproperlyConfigured("durable_django's AppConfig.ready() has not run: no inline runner is connected")
    return _runner


def _task(name: str) -> Any:
    """The Celery task registered under ``name``, as ``shared_task`` resolves it (eager mode honoured)."""
    return current_app.tasks[name]


@dataclass
class Run:
    """A run in progress on this thread: the callbacks deferred until its checkpoint has committed."""

    instance_id: str
    worker_id: str
    after_commit: list = field(default_factory=list)


def current_run() -> Run | None:
    """The run in progress on this thread (inside a durable step), if any."""
    return getattr(_local, "run", None)


def begin_run(instance_id: str, worker_id: str) -> Run:
    """Defer this thread's :func:`after_commit` callbacks into a new run until :func:`end_run`."""
    run = _local.run = Run(instance_id, worker_id)
    return run


def end_run() -> None:
    _local.run = None


# -- scheduling -------------------------------------------------------------
def after_commit(func) -> None:
    """Run ``func`` once the current transaction commits (now, outside one).

    Inside a durable step run by the executor (autocommit off, no atomic
    block), the callback waits until the executor's run ends, so it fires only
    after the checkpoint that holds the step's writes has committed.
    """
    connection = db.connection()  # the database of the app's rows (``using`` or the routers' choice)
    if not connection.in_atomic_block and not connection.get_autocommit():
        run = current_run()
        if run is not None:
            run.after_commit.append(func)
            return
    if isinstance(func, functools.partial):  # Django names a failed robust callback by its __qualname__
        func.__qualname__ = getattr(func.func, "__qualname__", repr(func.func))  # type: ignore[attr-defined]
    transaction.on_commit(func, robust=True, using=connection.alias)


def schedule(instance_id: str, *, eta: datetime | None = None) -> None:
    """Wake the instance up after commit: a Celery task, or an inline run when ``RUN_INLINE``."""
    if durable_settings.RUN_INLINE:
        if eta is None:
            after_commit(functools.partial(_inline_runner(), instance_id))
        return
    if eta is None and durable_settings.BATCH_SIZE > 1 and db.connection().in_atomic_block and _Outbox.add(instance_id):
        return
    after_commit(functools.partial(send_task, instance_id, eta=eta))


class _Outbox:
    """The wake-ups a transaction schedules, sent when it commits as one message per ``BATCH_SIZE`` ids.

    Each wake-up is still an ``on_commit`` callback of its own (so a rolled
    back savepoint drops exactly its wake-ups, as Django drops its
    callbacks), but the callback only collects the id; one flush callback,
    kept after them, sends what was collected. A transaction that schedules
    one instance sends one ``run_instance`` message, as without batching.
    """

    def __init__(self) -> None:
        self.ids: list[str] = []

    def collect(self, instance_id: str) -> None:
        self.ids.append(instance_id)

    def flush(self) -> None:
        ids, self.ids = self.ids, []
        if ids:
            send_tasks(ids)

    @classmethod
    def add(cls, instance_id: str) -> bool:
        """Queue a wake-up for the commit of the current transaction; False when it cannot be batched."""
        connection = db.connection()
        hooks = connection.run_on_commit
        if not isinstance(hooks, list) or any(len(h) != 3 for h in hooks[-3:]):
            return False  # Django's internals are not what this relies on: one message per wake-up
        box = getattr(connection, "_durable_outbox", None)
        if box is None:
            box = connection._durable_outbox = cls()  # one per connection
        for k in range(len(hooks) - 1, max(-1, len(hooks) - 4), -1):  # our flush is among the last few
            if hooks[k][1] == box.flush:
                del hooks[k]
                break
        transaction.on_commit(functools.partial(box.collect, instance_id), robust=True, using=connection.alias)
        # After every collect; no savepoint ids, so a rolled-back savepoint never drops it.
        hooks.append((set(), box.flush, True))  # Django 4.2+: (sids, func, robust)
        return True


#: Header of a wake-up whose ETA is a database time (read by :class:`durable_django.tasks.ClockRequest`).
DB_ETA_HEADER = "durable_db_eta"


def _options(eta: datetime | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if durable_settings.QUEUE:
        options["queue"] = durable_settings.QUEUE
    if eta is not None:
        # A database time (durable_django.clock): the receiving worker turns it into its own clock's time.
        options["eta"] = eta
        options["headers"] = {DB_ETA_HEADER: True}
    return options


def send_task(instance_id: str, *, eta: datetime | None = None, route: dict[str, Any] | None = None) -> bool:
    """Send one wake-up; False (logged) when the broker cannot take it.

    ``route``: its queue and priority when the caller has them (else they are looked up).
    """
    if route is None:
        route = _routes([instance_id]).get(instance_id, {})
    return _send(_task(RUN_INSTANCE), (instance_id,), {**_options(eta), **route})


def send_tasks(instance_ids: list[str]) -> int:
    """Wake several instances now: one message per ``BATCH_SIZE`` ids (``run_instance`` for a single id).

    Returns how many ids were sent; stops at the first message the broker
    refuses (the others would wait for the same outage, one retry policy each).
    """
    size = max(1, int(durable_settings.BATCH_SIZE))
    routes = _routes(instance_ids)
    groups: dict[tuple, list[str]] = {}
    for iid in instance_ids:  # one message per queue (and priority) of the instances' programs
        groups.setdefault(tuple(sorted(routes.get(iid, {}).items())), []).append(iid)
    done = 0
    for route, ids in groups.items():
        options = {**_options(), **dict(route)}
        for k in range(0, len(ids), size):
            chunk = ids[k:k + size]
            if len(chunk) == 1:
                sent = send_task(chunk[0], route=dict(route))
            else:
                sent = _send(_task(RUN_INSTANCES), (chunk,), options)
            if not sent:
                return done
            done += len(chunk)
    return done


def _send(task, args: tuple, options: dict[str, Any]) -> bool:
    """Publish a wake-up. A broker outage is not the caller's error: the row it wakes is committed, and the
    sweep (``durable_resume``, beat) sends the wake-up again, so it is logged, never raised."""
    try:
        task.apply_async(args, **options)
    except (KombuError, OSError) as exc:
        log.warning("durable wake-up not sent (%s: %s): %s %r; the next sweep sends it",
                    type(exc).__name__, exc, task.name, args[0])
        return False
    return True


def signal_after_commit(kind: str, instance_id: str, status: str, program: str, **extra) -> None:
    after_commit(functools.partial(signals.send_transition, kind, instance_id, status, program, **extra))


def schedule_and_signal(instance_id: str, kind: str, status: str, program: str, **extra) -> None:
    """After commit: the transition's signal, then the wake-up (receivers see the transition before any run)."""
    signal_after_commit(kind, instance_id, status, program, **extra)
    schedule(instance_id)


def schedule_timer(instance_id: str, wake_at=None) -> None:
    """Send a delayed wake-up for a timer due soon; the sweep covers later ones and lost messages.

    ``wake_at``: the due time our own pause checkpoint just wrote (else it is read from the row).
    """
    if durable_settings.RUN_INLINE:
        return
    if wake_at is None:
        wake_at = DurableInstance.objects.filter(pk=instance_id, status=Status.PAUSED).values_list(
            "wake_at", flat=True).first()
    if wake_at is None:
        return
    if wake_at - clock.now() <= timedelta(seconds=durable_settings.ETA_MAX_SECONDS):
        send_task(instance_id, eta=wake_at)  # database time: the receiving worker converts it (tasks.ClockRequest)
