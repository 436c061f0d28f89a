"""Celery tasks: thin wrappers around :mod:`durable_django.worker`.

Only instance ids travel over the broker; the row is the truth and the task
re-reads it. ``acks_late`` + ``reject_on_worker_lost`` re-queue a message whose
worker process died (where the broker can redeliver); the lease and the sweep
cover brokers that cannot (kombu's filesystem and SQLAlchemy transports).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from celery import shared_task
from celery.worker.request import Request
from django.db import InterfaceError, OperationalError, connections

from . import clock, worker
from .wakeups import DB_ETA_HEADER, RUN_INSTANCE, RUN_INSTANCES


class ClockRequest(Request):
    """A wake-up whose ETA is a database time (a timer's due time, see :mod:`durable_django.clock`).

    Only the wake-ups the app sends for timers carry that header; other ETAs
    (those of Celery's retries, which copy the headers) are the sender's
    clock's, as Celery means them.

    Celery's worker compares an ETA with its own wall clock; shifted by this
    process's offset from the database's clock, a timer's wake-up arrives on
    time by the database's clock whatever the sending and the receiving
    worker's clocks say.
    """

    @property
    def eta(self) -> datetime | None:
        eta = super().eta
        rd = self.request_dict
        if eta is None or not rd.get(DB_ETA_HEADER) or rd.get("retries"):  # Celery's retries: local ETAs
            return eta
        clock.sync()  # a SELECT at most once per CLOCK_SYNC_SECONDS in this process
        return eta - timedelta(seconds=clock.offset())


# celery-types' shared_task(bind=True) takes no Request=, which Celery accepts (any Task attribute is an option)
@shared_task(name=RUN_INSTANCE, bind=True, Request=ClockRequest, acks_late=True,  # type: ignore[call-overload]
             reject_on_worker_lost=True, ignore_result=True, autoretry_for=(OperationalError, InterfaceError),
             retry_backoff=True, retry_backoff_max=60, max_retries=8)
def run_instance(self, instance_id: str) -> str:
    """Run one instance until it pauses or finishes (a no-op when another worker holds it)."""
    drop_broken_connections()
    return worker.run_instance(instance_id, worker_id=f"{self.request.hostname}:{worker.new_worker_id()}")


@shared_task(name=RUN_INSTANCES, bind=True, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True, autoretry_for=(OperationalError, InterfaceError), retry_backoff=True,
             retry_backoff_max=60, max_retries=8)
def run_instances(self, instance_ids: list[str]) -> dict[str, str]:
    """Run a batch of instances (a burst of starts or events in one transaction, or the sweep's wake-ups).

    Celery's per-message cost and the claim are paid once per batch; see
    :func:`durable_django.worker.run_batch`.
    """
    drop_broken_connections()
    return worker.run_batch(instance_ids, worker_id=f"{self.request.hostname}:{worker.new_worker_id()}")


@shared_task(name="durable_django.sweep", ignore_result=True)
def sweep() -> int:
    """Periodic: wake due timers, abandoned runs and instances with a pending event."""
    drop_broken_connections()  # else, with CELERY_DB_REUSE_MAX, every sweep after a database restart fails
    return len(worker.sweep())


def drop_broken_connections() -> None:
    """Close connections a previous task left broken (what Django does between requests).

    With ``CELERY_DB_REUSE_MAX`` Celery keeps the worker's connections across
    tasks; one that failed (database restarted, network cut) would otherwise
    fail every retry. Costs nothing unless an error occurred on it. As between
    requests, ``CONN_HEALTH_CHECKS`` makes the task's first query check the
    connection first (one ``SELECT 1`` per task), so that the first task after
    a database restart does not fail on the dead connection and wait for its retry.
    """
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and (
                conn.get_autocommit() != conn.settings_dict["AUTOCOMMIT"]
                or (conn.errors_occurred and not conn.is_usable())):
            conn.close()
        elif conn.connection is not None:
            conn.errors_occurred = False
            conn.health_check_done = False  # type: ignore[attr-defined]  # Django >= 5.1; not in django-stubs


# Kept importable from settings modules (no models): see durable_django.conf.
from .conf import beat_schedule  # noqa: E402,F401
