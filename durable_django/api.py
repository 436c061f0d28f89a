"""The public functions: start, publish_event, cancel, resume (and result).

Each writes rows in the caller's transaction and schedules work with
``transaction.on_commit``, so a worker never sees an uncommitted row and a
rolled-back request leaves nothing behind. The row is the truth; a Celery
message is only a wake-up, and the periodic sweep re-sends lost wake-ups.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, connection, models, transaction
from django.utils import timezone
from kombu.exceptions import KombuError

from durable import CheckpointException, DurableProgram

from . import limits, programs, signals
from .backend import add_history, cached_sql, hot_cursor, real_connection
from .conf import durable_settings
from .exceptions import InstanceExists, InstanceFinished, InvalidPayload, UnknownInstance, UnknownProgram
from .models import FINISHED, DurableEvent, DurableHistory, DurableInstance, HistoryKind, Status
from .signing import ARGUMENTS, STATE, blob_context, sign, unsign

log = logging.getLogger("durable_django")
_PUBLISHER = DurableEvent._meta.get_field("publisher")


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
    if isinstance(func, functools.partial):  # Django names a failed robust callback by its __qualname__
        func.__qualname__ = getattr(func.func, "__qualname__", repr(func.func))
    transaction.on_commit(func, robust=True)


def schedule(instance_id: str, *, eta: datetime | None = None) -> None:
    """Wake the instance up after commit: a Celery task, or an inline run when ``RUN_INLINE``."""
    if durable_settings.RUN_INLINE:
        if eta is None:
            from . import executor

            after_commit(functools.partial(executor.run_instance, instance_id))
        return
    if eta is None and durable_settings.BATCH_SIZE > 1 and connection.in_atomic_block and _Outbox.add(instance_id):
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
        hooks = connection.run_on_commit
        if not isinstance(hooks, list) or any(len(h) != 3 for h in hooks[-3:]):
            return False  # Django's internals are not what this relies on: one message per wake-up
        box = getattr(connection, "_durable_outbox", None)
        if box is None:
            box = connection._durable_outbox = cls()
        for k in range(len(hooks) - 1, max(-1, len(hooks) - 4), -1):  # our flush is among the last few
            if hooks[k][1] == box.flush:
                del hooks[k]
                break
        transaction.on_commit(functools.partial(box.collect, instance_id), robust=True)
        # After every collect; no savepoint ids, so a rolled-back savepoint never drops it.
        hooks.append((set(), box.flush, True))
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


def send_task(instance_id: str, *, eta: datetime | None = None) -> bool:
    """Send one wake-up; False (logged) when the broker cannot take it."""
    from .tasks import run_instance

    return _send(run_instance, (instance_id,), _options(eta))


def send_tasks(instance_ids: list[str]) -> int:
    """Wake several instances now: one message per ``BATCH_SIZE`` ids (``run_instance`` for a single id).

    Returns how many ids were sent; stops at the first message the broker
    refuses (the others would wait for the same outage, one retry policy each).
    """
    from .tasks import run_instances

    size = max(1, int(durable_settings.BATCH_SIZE))
    for k in range(0, len(instance_ids), size):
        chunk = instance_ids[k:k + size]
        sent = send_task(chunk[0]) if len(chunk) == 1 else _send(run_instances, (chunk,), _options())
        if not sent:
            return k
    return len(instance_ids)


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


def _signal_after_commit(kind: str, instance_id: str, status: str, program: str, **extra) -> None:
    after_commit(functools.partial(signals.send_transition, kind, instance_id, status, program, **extra))


def _schedule_and_signal(instance_id: str, kind: str, status: str, program: str, **extra) -> None:
    """After commit: the transition's signal, then the wake-up (receivers see the transition before any run)."""
    _signal_after_commit(kind, instance_id, status, program, **extra)
    schedule(instance_id)


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
        import uuid

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
    _schedule_and_signal(instance_id, "started", Status.PENDING, path)
    return inst


# -- events -------------------------------------------------------------------
check_payload = limits.check_payload


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


def publisher_of(actor: Any) -> Any:
    """The primary key of the user who publishes an event (stored with it), or None (code, anonymous)."""
    if actor is None or isinstance(actor, str) or not getattr(actor, "is_authenticated", False):
        return None
    return actor.pk


def publish_event(instance_id: str, name: str, payload: Any = None, idempotency_key: str | None = None,
                  *, actor: Any = None) -> DurableEvent:
    """Put an event in the instance's inbox and wake it after commit.

    The event is kept until the instance waits for ``name`` (also when it is
    published before the wait) and is consumed exactly once. With an
    ``idempotency_key``, publishing again returns the first event and adds
    nothing. The payload goes through JSON (DjangoJSONEncoder): the program
    receives lists for tuples, strings for dates and decimals. ``actor`` (a
    user, or None) is recorded as the actor of the history entry, and a user
    also as the event's ``publisher``: a human-task wait consumes only an
    event whose publisher may answer it and whose payload fits its form
    (checked when the wait consumes it, see :mod:`durable_django.humantasks`).

    Outcomes: the stored :class:`DurableEvent`; :class:`UnknownInstance`;
    :class:`InstanceFinished` for a completed, failed or cancelled instance
    (nothing stored); :class:`InvalidPayload` for a payload that is not JSON
    with finite numbers, holds a NUL character or exceeds ``MAX_PAYLOAD_BYTES``;
    :class:`InvalidInput` (a ``ValueError``) for an empty, too long or
    unstorable instance id, name or key. Nothing is stored in these cases.
    """
    limits.check_instance_id(instance_id)
    limits.check_event_name(name)
    limits.check_idempotency_key(idempotency_key)
    text = limits.payload_json(payload)  # the one serialization: this text is what is written
    publisher = publisher_of(actor)
    actor = actor_name(actor)
    if idempotency_key is None and _one_statement_fits():
        event, status, program = _publish_one_statement(instance_id, name, payload, actor, text, publisher)
        _schedule_and_signal(instance_id, "event_published", status, program, event=event)
        return event
    with transaction.atomic():
        row = _instance_status(instance_id)
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
                with transaction.atomic():  # a concurrent publish with the same key: only this insert fails
                    event = DurableEvent.objects.create(instance_id=instance_id, name=name, payload=payload,
                                                        idempotency_key=idempotency_key, publisher_id=publisher)
            except IntegrityError:
                existing = DurableEvent.objects.filter(instance_id=instance_id,
                                                       idempotency_key=idempotency_key).first()
                if existing is None:
                    raise
                return existing
        else:  # no unique key involved: no savepoint needed
            event = _insert_event(instance_id, name, payload, text, publisher)
        add_history(instance_id, HistoryKind.EVENT_PUBLISHED, status, name, actor)
    _schedule_and_signal(instance_id, "event_published", status, program, event=event)
    return event


_SQL: dict[tuple, str] = {}


def _instance_status(instance_id: str) -> tuple[str, str] | None:
    """(status, program) of an instance, with one cached SELECT (no ORM on the publish path)."""
    conn = real_connection(connection)
    key = (conn.vendor, "status")
    sql = _SQL.get(key)
    if sql is None:
        qn = conn.ops.quote_name
        sql = _SQL[key] = (f"SELECT {qn('status')}, {qn('program')} FROM {qn(DurableInstance._meta.db_table)} "
                           f"WHERE {qn('instance_id')} = %s")
    with hot_cursor(conn) as cur:
        cur.execute(sql, [instance_id])
        return cur.fetchone()


def _one_statement_fits() -> bool:
    """PostgreSQL: the status check and both inserts go out as one statement (one round trip, one commit)."""
    return real_connection(connection).vendor == "postgresql"


def _publish_one_statement(instance_id: str, name: str, payload: Any, actor: str,
                           text: str, publisher: Any = None) -> tuple[DurableEvent, str, str]:
    """:func:`publish_event` without idempotency key as one ``WITH ... INSERT`` statement.

    The same rows as the transaction of the general path (event, history
    entry), written only if the instance exists and has not finished, and
    atomic as any single statement is. Outside a transaction this is one
    round trip instead of five (BEGIN, SELECT, INSERT, INSERT, COMMIT), on
    the critical path from an event to the instance running again.
    """
    conn = real_connection(connection)

    def build(qn) -> str:
        finished = ", ".join(f"'{s.value}'" for s in FINISHED)
        return (
            f"WITH i AS (SELECT {qn('status')}, {qn('program')} FROM {qn(DurableInstance._meta.db_table)} "
            f"WHERE {qn('instance_id')} = %s), "
            f"e AS (INSERT INTO {qn(DurableEvent._meta.db_table)} ({qn('instance_id')}, {qn('name')}, "
            f"{qn('payload')}, {qn('created_at')}, {qn('publisher_id')}) "
            f"SELECT %s, %s, %s::jsonb, %s::timestamptz, %s::{_PUBLISHER.db_type(conn)} FROM i "
            f"WHERE i.{qn('status')} NOT IN ({finished}) RETURNING {qn('id')}), "
            f"h AS (INSERT INTO {qn(DurableHistory._meta.db_table)} ({qn('instance_id')}, {qn('kind')}, "
            f"{qn('status')}, {qn('detail')}, {qn('actor')}, {qn('at')}) "
            f"SELECT %s, %s, i.{qn('status')}, %s, %s, %s::timestamptz FROM i, e) "
            f"SELECT i.{qn('status')}, i.{qn('program')}, e.{qn('id')} FROM i LEFT JOIN e ON TRUE")

    sql = cached_sql(conn, ("publish",), build)
    now = timezone.now()
    at = conn.ops.adapt_datetimefield_value(now)
    with hot_cursor(conn) as cur:
        cur.execute(sql, [instance_id, instance_id, name, text, at, _PUBLISHER.get_db_prep_save(publisher, conn),
                          instance_id, str(HistoryKind.EVENT_PUBLISHED), name, actor, at])
        row = cur.fetchone()
    if row is None:
        raise UnknownInstance(instance_id)
    status, program, pk = row
    if pk is None:
        raise InstanceFinished(instance_id, status, f"publish event {name!r} to")
    event = DurableEvent(id=pk, instance_id=instance_id, name=name, payload=payload, created_at=now,
                         publisher_id=publisher)
    event._state.adding, event._state.db = False, conn.alias
    return event, status, program


def _insert_event(instance_id: str, name: str, payload: Any, text: str, publisher: Any = None) -> DurableEvent:
    """``DurableEvent.objects.create`` of an event without idempotency key, as one cached INSERT.

    ``text`` is the payload's JSON (from :func:`limits.payload_json`), written as is: not serialized again.
    """
    from .executor import _returning_supported

    conn = real_connection(connection)
    if not _returning_supported(conn):
        return DurableEvent.objects.create(instance_id=instance_id, name=name, payload=payload, publisher_id=publisher)
    key = (conn.vendor, "event")
    sql = _SQL.get(key)
    if sql is None:
        qn = conn.ops.quote_name
        cast = "::jsonb" if conn.vendor == "postgresql" else ""  # the text is JSON already
        sql = _SQL[key] = (f"INSERT INTO {qn(DurableEvent._meta.db_table)} ({qn('instance_id')}, {qn('name')}, "
                           f"{qn('payload')}, {qn('created_at')}, {qn('publisher_id')}) "
                           f"VALUES (%s, %s, %s{cast}, %s, %s) RETURNING {qn('id')}")
    now = timezone.now()
    with hot_cursor(conn) as cur:
        cur.execute(sql, [instance_id, name, text, conn.ops.adapt_datetimefield_value(now),
                          _PUBLISHER.get_db_prep_save(publisher, conn)])
        pk = cur.fetchone()[0]
    event = DurableEvent(id=pk, instance_id=instance_id, name=name, payload=payload, created_at=now,
                         publisher_id=publisher)
    event._state.adding, event._state.db = False, conn.alias
    return event


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
        from . import executor

        return executor.run_instance(instance_id)
    schedule(instance_id)
    return inst


def get_instance(instance_id: str) -> DurableInstance:
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
    from durable import DurableError, InstanceCancelled

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
