"""Running a claimed instance: drive the core runtime over the backend, one transaction per step.

The caller (:mod:`durable_django.worker`) has claimed the instance's lease
(:mod:`durable_django.leases`); :func:`run_claimed` verifies the row's signed
blobs, resolves the program, runs it until it pauses, completes, fails, is
cancelled or suspended, and hands the lease back.

Why one transaction per step: the runtime's event loop runs in the calling
(sync) thread (:mod:`durable_django.eventloop`), and the backend's calls and
every thread-sensitive ``sync_to_async`` call of the program run inline in
that thread, so every query of a run happens on this thread's connection.
With autocommit off, the writes a step makes stay uncommitted until the
backend commits the checkpoint that follows the step. A worker killed in the
middle of a step therefore leaves neither the step's writes nor its
checkpoint, and the next worker runs the step again from the previous
checkpoint: exactly-once database side effects. Callbacks registered with
:func:`durable_django.wakeups.after_commit` during the run wait for its end.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import InterfaceError, OperationalError, transaction
from django.utils.module_loading import import_string

from durable import CheckpointException, CodeChangedError, InstanceCancelled, PauseForEventException, StateTamperedError

from . import clock, db, eventloop, leases, programs, signals, telemetry, wakeups
from .backend import DjangoOrchestrationBackend, describe_error
from .conf import durable_settings
from .exceptions import LeaseLost, UnknownProgram
from .leases import _Claimed, _release, _suspend
from .models import Status
from .signing import ARGUMENTS, STATE, blob_context, unsign, verified

log = logging.getLogger("durable_django")

#: Outcomes of a run besides the statuses: another worker holds the lease (or nothing to run); the lease was lost.
SKIPPED, LOST = "skipped", "lease-lost"


def run_claimed(row: _Claimed, worker_id: str) -> tuple[str, Mapping[str, Any] | None]:
    """Run a claimed instance; returns its outcome and, when our own checkpoint paused it, the wait."""
    if not telemetry.active:  # off: one check per run, nothing per step
        return _run_claimed(row, worker_id, None)
    tele = telemetry.begin_run(row.instance_id, row.program, row.state is None, row.attempts)
    try:
        outcome, wait = _run_claimed(row, worker_id, tele)
    except BaseException as exc:
        tele.end("error", exc)
        raise
    tele.end(outcome)
    return outcome, wait


def _run_claimed(row: _Claimed, worker_id: str, tele: telemetry.Run | None) -> tuple[str, Mapping[str, Any] | None]:
    instance_id = row.instance_id
    try:
        # The signatures are checked before the program's path is even imported: they bind the blobs to this
        # row's id and program, so a row whose program column was changed stops here.
        raw_args = row.arguments
        if raw_args is not None:
            args, kwargs = unsign(raw_args, blob_context(instance_id, row.program, ARGUMENTS))
        elif row.state is not None:
            args, kwargs = (), {}
            verified(row.state, blob_context(instance_id, row.program, STATE))
        else:
            raise StateTamperedError("the instance has neither signed arguments nor signed state; refusing to run "
                                     "its program")
        program = programs.resolve(row.program)
    except (UnknownProgram, StateTamperedError) as exc:
        _suspend(row, worker_id, f"{type(exc).__name__}: {exc}")
        return Status.SUSPENDED, None
    except Exception as exc:
        _give_up_or_retry(row, worker_id, exc)  # a database error propagates (Celery retries), else suspended
        return Status.SUSPENDED, None
    except BaseException:  # interrupted: nothing ran; hand the instance back
        _release(instance_id, worker_id)
        raise
    using = db.alias()  # the routers' database of the app's rows
    manage = durable_settings.ATOMIC_STEPS and not db.connection(using).in_atomic_block
    backend = DjangoOrchestrationBackend(worker_id=worker_id, commit=manage, program=row.program, using=using)
    backend.prefetched = (row.state, row.status, row.program)
    if row.event_id is not None:
        backend.prefetched_event = (row.waiting_for, row.event_id, row.event_payload)
    backend.lease_expires_at = row.lease_expires_at
    migrate = programs.migrator_for(row.program, row.program_version, program)
    hook = durable_settings.ON_CHECKPOINT
    on_checkpoint = import_string(hook) if hook else None
    if tele is not None:  # telemetry on: a span and a latency per step (durable_django.telemetry)
        on_checkpoint = tele.hook(lambda: backend.last_status, on_checkpoint)
    options: dict[str, Any] = {}
    deadline = leases._as_datetime(row.deadline)
    if deadline is not None:
        options["deadline"] = deadline.timestamp()  # POSIX seconds, as the runtime's clock
    runtime = program.runtime(backend, instance_id, migrate=migrate, clock=clock.time,
                              on_checkpoint=on_checkpoint, **options)
    if row.parent_id:  # a child instance: its first checkpoint records its parent (see durable_django.children)
        runtime.parent = (row.parent_id, row.on_parent_close or "cancel")
    requested = row.cancel_requested_at is not None
    # A cancel requested before this run: InstanceCancelled at the program's current await (delivered when
    # the state is loaded, unless the program is already cleaning up after it); else the backend reads the
    # row's flag at checkpoints and asks the runtime to cancel once it is set.
    backend.watch_cancel(runtime.request_cancel, (row.cancel_reason or "") if requested else None)
    outcome: str
    error: Exception | None = None
    run = wakeups.begin_run(instance_id, worker_id)
    heartbeat = leases.heartbeat()
    if manage:
        transaction.set_autocommit(False, using=using)
    if heartbeat is not None:
        heartbeat.add(instance_id, worker_id)
    try:
        eventloop.run(backend, runtime.run, program, args, kwargs)
        outcome = Status.COMPLETED
    except PauseForEventException:
        outcome = Status.PAUSED
    except InstanceCancelled:
        outcome = Status.CANCELLED
    except LeaseLost as exc:
        log.warning("%s", exc)
        outcome = LOST
    except Exception as exc:
        if backend.last_status == Status.FAILED:
            outcome = Status.FAILED
        else:
            outcome, error = "error", exc
    finally:
        wakeups.end_run()
        if heartbeat is not None:  # first: nothing below may leave a lease that the heartbeat keeps alive
            heartbeat.remove(instance_id, worker_id)
        if manage:
            _end_manual_transaction(using)

    if outcome == Status.PAUSED and backend.uncommitted_rejections:
        # A human-task wait rejected events, then paused without a checkpoint (rolled back above): the
        # rejections are kept anyway, or the rejected events would wake the instance again and again.
        backend.commit_rejections()
    if error is not None:
        if isinstance(error, CodeChangedError | StateTamperedError | CheckpointException | UnknownProgram):
            _suspend(row, worker_id, f"{type(error).__name__}: {error}")
        else:
            _give_up_or_retry(row, worker_id, error)
        outcome = Status.SUSPENDED
    elif outcome in (Status.PAUSED, Status.CANCELLED) and backend.saves == 0:
        _release(instance_id, worker_id)  # the wait was not over: nothing ran
    elif outcome == Status.PAUSED and backend.last_status != Status.PAUSED:
        _release(instance_id, worker_id)
    if outcome == Status.PAUSED and backend.cancel_missed:
        wakeups.schedule(instance_id)  # a cancel requested during the run, learnt at its pause: deliver it

    for kind, status, detail in backend.transitions:
        signals.send_transition(kind, instance_id, status, row.program, detail=detail)
    for func in run.after_commit:
        try:
            func()
        except Exception:
            log.exception("after-commit callback of durable instance %s failed", instance_id)
    paused_here = outcome == Status.PAUSED and backend.saves and backend.last_status == Status.PAUSED
    return outcome, (backend.last_wait if paused_here else None)


def _end_manual_transaction(using: str) -> None:
    """Roll back what the last checkpoint did not commit and give the connection back in autocommit.

    On a connection that died during the run (database restarted, network cut) neither works: it is closed
    instead, so that the worker's next statement (the lease release, the next task) opens a new one in
    autocommit rather than failing again on the dead one. The database rolled the transaction back.
    """
    connection = db.connection(using)
    try:
        if connection.connection is not None:
            connection.rollback()  # anything after the last checkpoint: not committed, not kept
        transaction.set_autocommit(True, using=using)
    except Exception:
        log.warning("the database connection was lost during a run; it is replaced", exc_info=True)
        try:
            connection.close()
        except Exception:  # noqa: BLE001 - closing a dead connection; it is dropped either way
            log.debug("closing the dead connection failed", exc_info=True)
        connection.connection = None


def _give_up_or_retry(row: _Claimed, worker_id: str, exc: Exception) -> None:
    """An error outside the program's code (loading its state, binding its arguments, saving a checkpoint...).

    A database that is unreachable or restarting (``OperationalError``, ``InterfaceError``) may work at the
    next try: the lease is released with the claim's attempt still counted, and the error propagates so that
    Celery retries; once ``MAX_ATTEMPTS`` claims in a row end without a checkpoint, the next claim suspends
    the instance. Anything else would fail again at every try (and every sweep would hand the instance out
    again): it is suspended now, with the error in ``error`` and the history. ``ImproperlyConfigured`` (the
    worker's settings, e.g. its signing keys) hands the instance back uncounted and propagates: the instance is
    not at fault. The program's own exceptions never get here: they fail the instance, or the program catches them.
    """
    if isinstance(exc, ImproperlyConfigured):  # the worker's settings (e.g. its signing keys), not the instance
        _release(row.instance_id, worker_id)
        raise exc
    if isinstance(exc, OperationalError | InterfaceError):
        try:
            _release(row.instance_id, worker_id, count_attempt=True)
        except Exception:  # the database is still gone: the lease expires and the sweep hands it out again
            log.warning("could not release durable instance %s", row.instance_id, exc_info=True)
        raise exc
    reason = f"the worker could not run it (outside the program's code): {type(exc).__name__}: {exc}"
    log.error("durable instance %s", row.instance_id, exc_info=exc)
    _suspend(row, worker_id, reason, error=f"{reason}\n\n{describe_error(exc)}")
