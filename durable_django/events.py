"""Publishing an event: the inbox row, its history entry, and the wake-up of the instance after commit.

:func:`publish_event` is public (``durable_django.publish_event``); it lives
here, below the backend, because the core runtime's backend publishes events
too (:meth:`DjangoOrchestrationBackend.publish_event`). The event is consumed
by the wait that takes it: :meth:`DjangoOrchestrationBackend.wait_for_event_sync`,
marked consumed by the checkpoint that follows.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from . import limits
from .exceptions import InstanceFinished, UnknownInstance
from .models import FINISHED, DurableEvent, DurableHistory, DurableInstance, HistoryKind
from .sql import _returning_supported, add_history, cached_sql, hot_cursor, real_connection
from .wakeups import schedule_and_signal

_PUBLISHER = DurableEvent._meta.get_field("publisher")


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
        schedule_and_signal(instance_id, "event_published", status, program, event=event)
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
    schedule_and_signal(instance_id, "event_published", status, program, event=event)
    return event


async def apublish_event(instance_id: str, name: str, payload: Any = None, idempotency_key: str | None = None,
                         *, actor: Any = None) -> DurableEvent:
    """:func:`publish_event` for async code (an async view, a consumer); same arguments, outcomes and errors.

    Runs in asgiref's thread-sensitive executor, so the rows and the wake-up
    after commit are those of the sync call.
    """
    return await sync_to_async(publish_event, thread_sensitive=True)(instance_id, name, payload, idempotency_key,
                                                                     actor=actor)


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
