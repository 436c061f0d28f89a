"""The public functions: start, publish_event, cancel, resume (and result), each with an async twin (astart...).

Each writes rows in the caller's transaction and schedules work with
``transaction.on_commit`` (:mod:`durable_django.wakeups`), so a worker never
sees an uncommitted row and a rolled-back request leaves nothing behind. The
row is the truth; a Celery message is only a wake-up, and the periodic sweep
re-sends lost wake-ups. :func:`publish_event` is defined in
:mod:`durable_django.events` (the backend publishes too) and exported here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Generic, ParamSpec, overload

from asgiref.sync import sync_to_async
from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from durable import CheckpointException, DurableError, DurableProgram, InstanceCancelled

from . import cancellation, clock, db, flowcontrol, limits, programs, worker
from .events import actor_name, apublish_event, publish_event, publisher_of
from .exceptions import InstanceExists, InstanceFinished, InvalidPayload, UnknownInstance, UnknownProgram
from .limits import Deadline
from .models import FINISHED, DurableHistory, DurableInstance, HistoryKind, Status
from .signing import ARGUMENTS, STATE, blob_context, sign, unsign
from .wakeups import schedule, schedule_and_signal

__all__ = ["Starter", "acancel", "actor_name", "aget_instance", "apublish_event", "aresult", "aresume", "astart",
           "cancel", "check_payload", "get_instance", "publish_event", "publisher_of", "result", "resume", "start",
           "starter"]

P = ParamSpec("P")
#: What start() takes as a program: a make_durable() program, an ``async def`` or a dotted path.
AnyProgram = DurableProgram[..., Any] | Callable[..., Coroutine[Any, Any, Any]] | str


# -- start --------------------------------------------------------------------
# The arguments are checked against the program's signature in the first two forms. With instance_id= or
# link= they are not (a ParamSpec cannot take extra keywords): starter(program, ...)(*args) checks them too.
@overload
def start(program: DurableProgram[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> DurableInstance: ...


@overload
def start(program: Callable[P, Coroutine[Any, Any, Any]], /, *args: P.args, **kwargs: P.kwargs) -> DurableInstance: ...


@overload
def start(program: AnyProgram, /, *args: Any, instance_id: str, link: models.Model | None = None,
          **kwargs: Any) -> DurableInstance: ...


@overload
def start(program: AnyProgram, /, *args: Any, link: models.Model, instance_id: str | None = None,
          **kwargs: Any) -> DurableInstance: ...


@overload
def start(program: AnyProgram, /, *args: Any, deadline: Deadline, instance_id: str | None = None,
          link: models.Model | None = None, **kwargs: Any) -> DurableInstance: ...


@overload
def start(program: str, /, *args: Any, **kwargs: Any) -> DurableInstance: ...


def start(program: AnyProgram, /, *args: Any, **kwargs: Any) -> DurableInstance:
    """Create an instance of ``program`` and schedule it after commit; idempotent by ``instance_id``.

    ``program`` is a :func:`durable.make_durable` program (or an ``async def``)
    defined at module level, or its dotted path. ``link`` ties the instance to
    a business object (generic relation), which is what
    :func:`durable_django.bindings.bind` uses to find it. Arguments are pickled
    and signed; they must be picklable.

    ``deadline`` (a ``timedelta`` or seconds from now, or an aware
    ``datetime``; default: the program's own ``make_durable(deadline=)``
    counted from now) is when ``durable.DeadlineExceeded`` is raised at the
    program's current await, also while it is paused (the wait ends then).

    Outcomes: a new pending instance; the existing instance when one with this
    id runs the same program (nothing is scheduled twice); :class:`InstanceExists`
    when it runs another program; :class:`UnknownProgram` for a path that
    cannot be imported or is not allowed; ``TypeError`` for arguments that do
    not fit the program's signature, or a ``deadline`` of another type;
    :class:`InvalidPayload` for arguments that cannot be pickled or exceed
    ``MAX_ARGUMENT_BYTES``; :class:`InvalidInput` (a ``ValueError``) for a bad
    ``instance_id``, a deadline that has passed, or a ``queue`` that no worker is known
    to consume. Nothing is stored in any of these cases.

    Reserved keywords (never passed to the program): ``instance_id``, ``link``,
    ``deadline``, ``queue`` (the Celery queue of this instance's wake-ups, instead
    of its program's; it must be listed in ``DURABLE["QUEUES"]`` or be a
    program's queue) and ``priority`` (an int, higher first; default: its
    program's). See docs/flow-control.md.
    """
    instance_id: str | None = kwargs.pop("instance_id", None)
    link: models.Model | None = kwargs.pop("link", None)
    deadline: Deadline | None = kwargs.pop("deadline", None)
    flow = {"queue": kwargs.pop("queue", None), "priority": kwargs.pop("priority", None)}
    return _start(program, args, kwargs, instance_id, link, deadline, **flow)


class Starter(Generic[P]):
    """:func:`start` for one program with its options fixed; see :func:`starter`."""

    def __init__(self, program: DurableProgram[P, Any], instance_id: str | None, link: models.Model | None,
                 deadline: Deadline | None = None, queue: str | None = None, priority: int | None = None) -> None:
        self.program, self.instance_id, self.link, self.deadline = program, instance_id, link, deadline
        self.queue, self.priority = queue, priority

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> DurableInstance:
        return _start(self.program, args, kwargs, self.instance_id, self.link, self.deadline, self.queue,
                      self.priority)


def starter(program: DurableProgram[P, Any], /, *, instance_id: str | None = None,
            link: models.Model | None = None, deadline: Deadline | None = None, queue: str | None = None,
            priority: int | None = None) -> Starter[P]:
    """``starter(program, instance_id=i, link=obj, deadline=d)(*args, **kwargs)`` is ``start(program, *args,
    instance_id=i, link=obj, deadline=d, **kwargs)`` in a form whose arguments a type checker checks against the
    program's signature. A relative ``deadline`` (seconds, a timedelta) counts from each call. ``queue`` and
    ``priority``: as in :func:`start` (flow control)."""
    return Starter(program, instance_id, link, deadline, queue, priority)


def _start(program: AnyProgram, args: tuple[Any, ...], kwargs: dict[str, Any], instance_id: str | None,
           link: models.Model | None, deadline: Deadline | None = None, queue: str | None = None,
           priority: int | None = None) -> DurableInstance:
    path = limits.check_text(programs.path_of(program), "program path", limits.PROGRAM_COLUMN)
    resolved = programs.resolve(path)
    if not isinstance(program, str):
        fn = program.fn if isinstance(program, DurableProgram) else program
        if resolved.fn is not fn:
            raise UnknownProgram(f"{path!r} does not import back to the program given to start()")
    limits.bind_arguments(resolved.fn, path, args, kwargs)
    if deadline is None:  # the program's own make_durable(deadline=...), counted from now
        deadline = getattr(resolved, "deadline", None)
    deadline_at = limits.check_deadline(deadline, clock.now()) if deadline is not None else None
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
        "layout_hash": resolved.compiled.layout_hash, "status": Status.PENDING, "deadline": deadline_at,
        **flowcontrol.start_fields(path, resolved.fn, args, kwargs, queue, priority),
    }
    if link is not None:
        fields["content_type"] = ContentType.objects.get_for_model(link)
        fields["object_id"] = limits.check_text(str(link.pk), "the linked object's primary key",
                                                limits.OBJECT_ID_COLUMN)
    try:
        with transaction.atomic(using=db.alias()):
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
def cancel(instance_id: str, reason: str = "", *, actor: str = "", force: bool = False) -> DurableInstance:
    """Cancel an instance, letting its program clean up: ``InstanceCancelled`` is raised at its current await.

    A paused, pending or running instance gets a cancel request (``cancel_requested_at``, a
    ``cancel_requested`` history entry) and is woken after commit; its ``except``/``finally`` blocks run,
    their steps checkpointed, and it ends ``cancelled`` once the cancellation leaves the program. A second
    cancel, ``force=True``, a suspended instance, or a cleanup still going on ``CANCEL_GRACE_SECONDS``
    after the request (the sweep) end it ``cancelled`` at once, running nothing: a step in progress is
    rolled back at its checkpoint.

    Outcomes: the instance (its row as the cancel left it); :class:`UnknownInstance`;
    :class:`InstanceFinished` if it already completed, failed or was cancelled.
    """
    limits.check_instance_id(instance_id)
    if not isinstance(reason, str):
        raise TypeError(f"cancel()'s reason must be a str, got {type(reason).__name__}")
    return cancellation.cancel_instance(instance_id, reason.replace("\0", "")[:10_000], actor=actor, force=force)


def resume(instance_id: str, *, inline: bool = False, actor: str = "") -> DurableInstance | str:
    """Wake an instance now (after commit), or run it in this process with ``inline=True``.

    A suspended instance is made runnable again first (after its code or data
    was fixed). A paused instance whose wait is not over just stays paused.
    Returns the instance, or with ``inline`` the outcome status of the run.
    Outcomes: :class:`UnknownInstance`; :class:`InstanceFinished` if it completed,
    failed or was cancelled.
    """
    limits.check_instance_id(instance_id)
    with transaction.atomic(using=db.alias()):
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
        reason = f": {inst.error}" if inst.error and "\n" not in inst.error else ""
        raise InstanceCancelled(f"instance {instance_id!r} was cancelled{reason}")
    if inst.status not in (Status.COMPLETED, Status.FAILED) or inst.state is None:
        raise LookupError(f"durable instance {instance_id!r} has not finished (it is {inst.status})")
    state = unsign(inst.state, blob_context(inst.instance_id, inst.program, STATE))
    if inst.status == Status.FAILED:
        err = state.get("error")
        raise err if isinstance(err, BaseException) else DurableError(str(err))
    return state.get("result")


# -- async counterparts (for async views and other async code) ---------------------------------------
# Each runs its sync function in asgiref's thread-sensitive executor: the same thread and connection as the
# request's other sync ORM calls, so rows, ``transaction.on_commit`` and errors are exactly the sync ones.
@overload
async def astart(program: DurableProgram[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> DurableInstance: ...


@overload
async def astart(program: Callable[P, Coroutine[Any, Any, Any]], /, *args: P.args,
                 **kwargs: P.kwargs) -> DurableInstance: ...


@overload
async def astart(program: AnyProgram, /, *args: Any, instance_id: str, link: models.Model | None = None,
                 **kwargs: Any) -> DurableInstance: ...


@overload
async def astart(program: AnyProgram, /, *args: Any, link: models.Model, instance_id: str | None = None,
                 **kwargs: Any) -> DurableInstance: ...


@overload
async def astart(program: AnyProgram, /, *args: Any, deadline: Deadline, instance_id: str | None = None,
                 link: models.Model | None = None, **kwargs: Any) -> DurableInstance: ...


@overload
async def astart(program: str, /, *args: Any, **kwargs: Any) -> DurableInstance: ...


async def astart(program: AnyProgram, /, *args: Any, **kwargs: Any) -> DurableInstance:
    """:func:`start` for async code (an async view, a consumer); same arguments, outcomes and errors."""
    instance_id: str | None = kwargs.pop("instance_id", None)
    link: models.Model | None = kwargs.pop("link", None)
    deadline: Deadline | None = kwargs.pop("deadline", None)
    queue: str | None = kwargs.pop("queue", None)
    priority: int | None = kwargs.pop("priority", None)
    return await sync_to_async(_start, thread_sensitive=True)(program, args, kwargs, instance_id, link, deadline,
                                                              queue, priority)


async def acancel(instance_id: str, reason: str = "", *, actor: str = "", force: bool = False) -> DurableInstance:
    """:func:`cancel` for async code; same arguments, outcomes and errors."""
    return await sync_to_async(cancel, thread_sensitive=True)(instance_id, reason, actor=actor, force=force)


async def aresume(instance_id: str, *, inline: bool = False, actor: str = "") -> DurableInstance | str:
    """:func:`resume` for async code; same arguments, outcomes and errors (``inline`` runs it in the executor's
    thread, and the awaiting coroutine waits for the run)."""
    return await sync_to_async(resume, thread_sensitive=True)(instance_id, inline=inline, actor=actor)


async def aget_instance(instance_id: str) -> DurableInstance:
    """:func:`get_instance` for async code; raises :class:`UnknownInstance` likewise."""
    return await sync_to_async(get_instance, thread_sensitive=True)(instance_id)


async def aresult(instance_id: str) -> Any:
    """:func:`result` for async code; same outcomes and errors (the stored error, ``InstanceCancelled``,
    ``LookupError``)."""
    return await sync_to_async(result, thread_sensitive=True)(instance_id)
