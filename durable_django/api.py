"""The public functions: start, publish_event, cancel, resume (and result).

Each writes rows in the caller's transaction and schedules work with
``transaction.on_commit``, so a worker never sees an uncommitted row and a
rolled-back request leaves nothing behind. The row is the truth; a Celery
message is only a wake-up, and the periodic sweep re-sends lost wake-ups.
"""

from __future__ import annotations

import functools
import json
import logging
from datetime import datetime
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connection, models, transaction
from django.utils import timezone

from durable import CheckpointException, DurableProgram

from . import programs, signals
from .backend import sign, unsign
from .conf import durable_settings
from .exceptions import InstanceExists, InstanceFinished, InvalidPayload, UnknownInstance, UnknownProgram
from .models import FINISHED, DurableEvent, DurableHistory, DurableInstance, HistoryKind, Status

log = logging.getLogger("durable_django")


# -- scheduling -------------------------------------------------------------
def after_commit(func) -> None:
    """Run ``func`` once the current transaction commits (now, outside one).

    Inside a durable step run by the executor (autocommit off, no atomic
    block), the callback waits until the executor's run ends, so it fires only
    after the checkpoint that holds the step's writes has committed.
    """
    from . import executor

    if not connection.in_atomic_block and not connection.get_autocommit():
        run = executor.current_run()
        if run is not None:
            run.after_commit.append(func)
            return
    transaction.on_commit(func, robust=True)


def schedule(instance_id: str, *, eta: datetime | None = None) -> None:
    """Wake the instance up after commit: a Celery task, or an inline run when ``RUN_INLINE``."""
    if durable_settings.RUN_INLINE:
        if eta is None:
            from . import executor

            after_commit(functools.partial(executor.run_instance, instance_id))
        return
    after_commit(functools.partial(send_task, instance_id, eta=eta))


def send_task(instance_id: str, *, eta: datetime | None = None) -> None:
    from .tasks import run_instance

    options: dict[str, Any] = {}
    if durable_settings.QUEUE:
        options["queue"] = durable_settings.QUEUE
    if eta is not None:
        options["eta"] = eta
    run_instance.apply_async((instance_id,), **options)


def _signal_after_commit(kind: str, instance_id: str, status: str, program: str, **extra) -> None:
    after_commit(functools.partial(signals.send_transition, kind, instance_id, status, program, **extra))


# -- start --------------------------------------------------------------------
def start(program: DurableProgram | str, *args: Any, instance_id: str | None = None,
          link: models.Model | None = None, **kwargs: Any) -> DurableInstance:
    """Create an instance of ``program`` and schedule it after commit; idempotent by ``instance_id``.

    ``program`` is a :func:`durable.make_durable` program (or an ``async def``)
    defined at module level, or its dotted path. ``link`` ties the instance to
    a business object (generic relation), which is what
    :func:`durable_django.bindings.bind` uses to find it. Arguments are pickled
    and signed; they must be picklable.

    Outcomes: a new pending instance; the existing instance when one with this
    id runs the same program (nothing is scheduled twice); :class:`InstanceExists`
    when it runs another program; :class:`UnknownProgram` for a path that
    cannot be imported or is not allowed; :class:`InvalidPayload` for
    arguments that cannot be pickled.
    """
    path = programs.path_of(program)
    resolved = programs.resolve(path)
    if not isinstance(program, str):
        fn = program.fn if isinstance(program, DurableProgram) else program
        if resolved.fn is not fn:
            raise UnknownProgram(f"{path!r} does not import back to the program given to start()")
    if instance_id is None:
        import uuid

        instance_id = uuid.uuid4().hex
    if not isinstance(instance_id, str) or not instance_id or len(instance_id) > 200:
        raise ValueError(f"instance_id must be a non-empty string of at most 200 characters, got {instance_id!r}")
    try:
        arguments = sign((args, kwargs))
    except CheckpointException as exc:
        raise InvalidPayload(f"arguments of {path} cannot be stored: {exc}") from exc
    fields: dict[str, Any] = {
        "program": path, "program_version": programs.program_version(resolved), "arguments": arguments,
        "layout_hash": resolved.compiled.layout_hash, "status": Status.PENDING,
    }
    if link is not None:
        fields["content_type"] = ContentType.objects.get_for_model(link)
        fields["object_id"] = str(link.pk)
    try:
        with transaction.atomic():
            inst = DurableInstance.objects.create(instance_id=instance_id, **fields)
            DurableHistory.objects.create(instance=inst, kind=HistoryKind.STARTED, status=Status.PENDING)
    except IntegrityError:
        existing = DurableInstance.objects.defer("state").filter(pk=instance_id).first()
        if existing is None:
            raise
        if existing.program != path:
            raise InstanceExists(
                f"durable instance {instance_id!r} already exists and runs {existing.program!r}, not {path!r}")
        return existing
    _signal_after_commit("started", instance_id, Status.PENDING, path)
    schedule(instance_id)
    return inst


# -- events -------------------------------------------------------------------
def check_payload(payload: Any) -> None:
    """Raise :class:`InvalidPayload` unless ``payload`` can be stored as JSON."""
    try:
        json.dumps(payload, cls=DjangoJSONEncoder)
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"event payload must be JSON-serializable: {exc}") from exc


def actor_name(actor: Any) -> str:
    """What the history records as the actor: a user's username, a string as is, ``""`` for None."""
    if actor is None:
        return ""
    if isinstance(actor, str):
        return actor[:255]
    get_username = getattr(actor, "get_username", None)
    if get_username is None:
        raise TypeError(f"actor must be a user, a string or None, got {type(actor).__name__}")
    return (get_username() or "")[:255] if getattr(actor, "is_authenticated", False) else ""


def publish_event(instance_id: str, name: str, payload: Any = None, idempotency_key: str | None = None,
                  *, actor: Any = None) -> DurableEvent:
    """Put an event in the instance's inbox and wake it after commit.

    The event is kept until the instance waits for ``name`` (also when it is
    published before the wait) and is consumed exactly once. With an
    ``idempotency_key``, publishing again returns the first event and adds
    nothing. The payload goes through JSON (DjangoJSONEncoder): the program
    receives lists for tuples, strings for dates and decimals. ``actor`` (a
    user, or None) is recorded as the actor of the history entry.

    Outcomes: the stored :class:`DurableEvent`; :class:`UnknownInstance`;
    :class:`InstanceFinished` for a completed, failed or cancelled instance
    (nothing stored); :class:`InvalidPayload` for a non-JSON payload;
    ``ValueError`` for an empty name.
    """
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ValueError(f"event name must be a non-empty string of at most 200 characters, got {name!r}")
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or len(idempotency_key) > 255):
        raise ValueError("idempotency_key must be a string of at most 255 characters")
    check_payload(payload)
    actor = actor_name(actor)
    with transaction.atomic():
        row = DurableInstance.objects.filter(pk=instance_id).values_list("status", "program").first()
        if row is None:
            raise UnknownInstance(instance_id)
        status, program = row
        if status in FINISHED:
            raise InstanceFinished(instance_id, status, f"publish event {name!r} to")
        if idempotency_key is not None:
            existing = DurableEvent.objects.filter(instance_id=instance_id, idempotency_key=idempotency_key).first()
            if existing is not None:
                return existing
        try:
            with transaction.atomic():
                event = DurableEvent.objects.create(instance_id=instance_id, name=name, payload=payload,
                                                    idempotency_key=idempotency_key)
        except IntegrityError:
            existing = DurableEvent.objects.filter(instance_id=instance_id, idempotency_key=idempotency_key).first()
            if existing is None:
                raise
            return existing
        DurableHistory.objects.create(instance_id=instance_id, kind=HistoryKind.EVENT_PUBLISHED, status=status,
                                      detail=name, actor=actor)
    _signal_after_commit("event_published", instance_id, status, program, event=event)
    schedule(instance_id)
    return event


# -- operator actions ---------------------------------------------------------
def cancel(instance_id: str, reason: str = "", *, actor: str = "") -> DurableInstance:
    """Cancel an instance: it never runs again; a step in progress is rolled back at its checkpoint.

    Outcomes: the cancelled instance; :class:`UnknownInstance`;
    :class:`InstanceFinished` if it already completed, failed or was cancelled.
    """
    with transaction.atomic():
        inst = DurableInstance.objects.select_for_update().defer("state").filter(pk=instance_id).first()
        if inst is None:
            raise UnknownInstance(instance_id)
        if inst.status in FINISHED:
            raise InstanceFinished(instance_id, inst.status, "cancel")
        now = timezone.now()
        DurableInstance.objects.filter(pk=instance_id).update(
            status=Status.CANCELLED, finished_at=now, updated_at=now, lease_owner="", lease_expires_at=None,
            error=reason, version=models.F("version") + 1)
        DurableHistory.objects.create(instance=inst, kind=HistoryKind.CANCELLED, status=Status.CANCELLED,
                                      detail=reason, actor=actor)
        inst.refresh_from_db()
    _signal_after_commit("cancelled", instance_id, Status.CANCELLED, inst.program, detail=reason)
    return inst


def resume(instance_id: str, *, inline: bool = False, actor: str = "") -> DurableInstance | str:
    """Wake an instance now (after commit), or run it in this process with ``inline=True``.

    A suspended instance is made runnable again first (after its code or data
    was fixed). A paused instance whose wait is not over just stays paused.
    Returns the instance, or with ``inline`` the outcome status of the run.
    Outcomes: :class:`UnknownInstance`; :class:`InstanceFinished` if it completed,
    failed or was cancelled.
    """
    with transaction.atomic():
        inst = DurableInstance.objects.select_for_update().defer("state").filter(pk=instance_id).first()
        if inst is None:
            raise UnknownInstance(instance_id)
        if inst.status in FINISHED:
            raise InstanceFinished(instance_id, inst.status, "resume")
        if inst.status == Status.SUSPENDED:
            has_state = DurableInstance.objects.filter(pk=instance_id, state__isnull=False).exists()
            new = Status.PAUSED if inst.wait_kind else (Status.RUNNING if has_state else Status.PENDING)
            DurableInstance.objects.filter(pk=instance_id).update(
                status=new, attempts=0, error="", lease_owner="", lease_expires_at=None,
                updated_at=timezone.now(), version=models.F("version") + 1)
            DurableHistory.objects.create(instance=inst, kind=HistoryKind.OPERATOR, status=new,
                                          detail="resumed after suspension", actor=actor)
    if inline:
        from . import executor

        return executor.run_instance(instance_id)
    schedule(instance_id)
    return inst


def get_instance(instance_id: str) -> DurableInstance:
    inst = DurableInstance.objects.filter(pk=instance_id).first()
    if inst is None:
        raise UnknownInstance(instance_id)
    return inst


def result(instance_id: str) -> Any:
    """The result of a completed instance, read from its verified state blob.

    Raises the stored error of a failed instance, :class:`InstanceCancelled`
    for a cancelled one, and ``LookupError`` while it has not finished.
    """
    from durable import DurableError, InstanceCancelled

    inst = get_instance(instance_id)
    if inst.status == Status.CANCELLED:
        raise InstanceCancelled(f"instance {instance_id!r} was cancelled")
    if inst.status not in (Status.COMPLETED, Status.FAILED) or inst.state is None:
        raise LookupError(f"durable instance {instance_id!r} has not finished (it is {inst.status})")
    state = unsign(inst.state)
    if inst.status == Status.FAILED:
        err = state.get("error")
        raise err if isinstance(err, BaseException) else DurableError(str(err))
    return state.get("result")
