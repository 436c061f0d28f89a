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
from django.db import IntegrityError

from . import limits
from .db import ops
from .exceptions import InstanceFinished, UnknownInstance
from .models import FINISHED, DurableEvent, HistoryKind
from .wakeups import schedule_and_signal


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
                  *, actor: Any = None, using: str | None = None) -> DurableEvent:
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
    ``using``: the database (default: the one the routers pick for the app's rows).
    """
    limits.check_instance_id(instance_id)
    limits.check_event_name(name)
    limits.check_idempotency_key(idempotency_key)
    text = limits.payload_json(payload)  # the one serialization: this text is what is written
    publisher = publisher_of(actor)
    actor = actor_name(actor)
    db = ops(using)
    if idempotency_key is None:
        published = db.publish(instance_id, name, payload, text, publisher, actor)
        if published is None:
            raise UnknownInstance(instance_id)
        status, program, event = published
        if event is None:
            raise InstanceFinished(instance_id, status, f"publish event {name!r} to")
        schedule_and_signal(instance_id, "event_published", status, program, event=event)
        return event
    events = DurableEvent.objects.using(db.alias)
    with db.atomic():
        row = db.instance_status(instance_id)
        if row is None:
            raise UnknownInstance(instance_id)
        status, program = row
        if status in FINISHED:
            raise InstanceFinished(instance_id, status, f"publish event {name!r} to")
        existing = events.filter(instance_id=instance_id, idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing
        try:
            with db.atomic():  # a concurrent publish with the same key: only this insert fails
                event = events.create(instance_id=instance_id, name=name, payload=payload,
                                      idempotency_key=idempotency_key, publisher_id=publisher)
        except IntegrityError:
            existing = events.filter(instance_id=instance_id, idempotency_key=idempotency_key).first()
            if existing is None:
                raise
            return existing
        db.add_history(instance_id, HistoryKind.EVENT_PUBLISHED, status, name, actor)
    schedule_and_signal(instance_id, "event_published", status, program, event=event)
    return event


async def apublish_event(instance_id: str, name: str, payload: Any = None, idempotency_key: str | None = None,
                         *, actor: Any = None, using: str | None = None) -> DurableEvent:
    """:func:`publish_event` for async code (an async view, a consumer); same arguments, outcomes and errors.

    Runs in asgiref's thread-sensitive executor, so the rows and the wake-up
    after commit are those of the sync call.
    """
    return await sync_to_async(publish_event, thread_sensitive=True)(instance_id, name, payload, idempotency_key,
                                                                     actor=actor, using=using)

