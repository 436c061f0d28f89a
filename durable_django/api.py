"""The public functions: start, publish_event, cancel, resume (and result).

Each writes rows in the caller's transaction and schedules work with
``transaction.on_commit`` (:mod:`durable_django.wakeups`), so a worker never
sees an uncommitted row and a rolled-back request leaves nothing behind. The
row is the truth; a Celery message is only a wake-up, and the periodic sweep
re-sends lost wake-ups. :func:`publish_event` is defined in
:mod:`durable_django.events` (the backend publishes too) and exported here.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from durable import CheckpointException, DurableError, DurableProgram, InstanceCancelled

from . import limits, programs, worker
from .events import actor_name, publish_event, publisher_of
from .exceptions import InstanceExists, InstanceFinished, InvalidPayload, UnknownInstance, UnknownProgram
from .models import FINISHED, DurableHistory, DurableInstance, HistoryKind, Status
from .signing import ARGUMENTS, STATE, blob_context, sign, unsign
from .wakeups import schedule, schedule_and_signal, signal_after_commit

__all__ = ["actor_name", "cancel", "check_payload", "get_instance", "publish_event", "publisher_of", "result",
           "resume", "start"]


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
    cannot be imported or is not allowed; ``TypeError`` for arguments that do
    not fit the program's signature; :class:`InvalidPayload` for arguments
    that cannot be pickled or exceed ``MAX_ARGUMENT_BYTES``;
    :class:`InvalidInput` (a ``ValueError``) for a bad ``instance_id``.
    Nothing is stored in any of these cases.
    """
    path = limits.check_text(programs.path_of(program), "program path", limits.PROGRAM_COLUMN)
    resolved = programs.resolve(path)
    if not isinstance(program, str):
        fn = program.fn if isinstance(program, DurableProgram) else program
        if resolved.fn is not fn:
            raise UnknownProgram(f"{path!r} does not import back to the program given to start()")
    limits.bind_arguments(resolved.fn, path, args, kwargs)
    if instance_id is None:
        instance_id = uuid.uuid4().hex
    limits.check_new_instance_id(instance_id)
    try:
        arguments = sign((args, kwargs), blob_context(instance_id, path, ARGUMENTS))
    except CheckpointException as exc:
        raise InvalidPayload(f"arguments of {path} cannot be stored: {exc}") from exc
    limits.check_arguments(arguments, path)
    fields: dict[str, Any] = {
        "program": path, "program_version": programs.program_version(resolved), "arguments": arguments,
        "layout_hash": resolved.compiled.layout_hash, "status": Status.PENDING,
    }
    if link is not None:
        fields["content_type"] = ContentType.objects.get_for_model(link)
        fields["object_id"] = limits.check_text(str(link.pk), "the linked object's primary key",
                                                limits.OBJECT_ID_COLUMN)
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
    schedule_and_signal(instance_id, "started", Status.PENDING, path)
    return inst


# -- events (publish_event: see durable_django.events) ------------------------------
check_payload = limits.check_payload


# -- operator actions ---------------------------------------------------------
def cancel(instance_id: str, reason: str = "", *, actor: str = "") -> DurableInstance:
    """Cancel an instance: it never runs again; a step in progress is rolled back at its checkpoint.

    Outcomes: the cancelled instance; :class:`UnknownInstance`;
    :class:`InstanceFinished` if it already completed, failed or was cancelled.
    """
    limits.check_instance_id(instance_id)
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
    signal_after_commit("cancelled", instance_id, Status.CANCELLED, inst.program, detail=reason)
    return inst


def resume(instance_id: str, *, inline: bool = False, actor: str = "") -> DurableInstance | str:
    """Wake an instance now (after commit), or run it in this process with ``inline=True``.

    A suspended instance is made runnable again first (after its code or data
    was fixed). A paused instance whose wait is not over just stays paused.
    Returns the instance, or with ``inline`` the outcome status of the run.
    Outcomes: :class:`UnknownInstance`; :class:`InstanceFinished` if it completed,
    failed or was cancelled.
    """
    limits.check_instance_id(instance_id)
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
        return worker.run_instance(instance_id)
    schedule(instance_id)
    return inst


def get_instance(instance_id: str) -> DurableInstance:
    """The instance's row (status, wait, error, history...); :class:`UnknownInstance` if there is none."""
    limits.check_instance_id(instance_id)
    inst = DurableInstance.objects.filter(pk=instance_id).first()
    if inst is None:
        raise UnknownInstance(instance_id)
    return inst


def result(instance_id: str) -> Any:
    """The result of a completed instance, read from its verified state blob.

    Raises the stored error of a failed instance, :class:`InstanceCancelled`
    for a cancelled one, and ``LookupError`` while it has not finished.
    """
    inst = get_instance(instance_id)
    if inst.status == Status.CANCELLED:
        raise InstanceCancelled(f"instance {instance_id!r} was cancelled")
    if inst.status not in (Status.COMPLETED, Status.FAILED) or inst.state is None:
        raise LookupError(f"durable instance {instance_id!r} has not finished (it is {inst.status})")
    state = unsign(inst.state, blob_context(inst.instance_id, inst.program, STATE))
    if inst.status == Status.FAILED:
        err = state.get("error")
        raise err if isinstance(err, BaseException) else DurableError(str(err))
    return state.get("result")
