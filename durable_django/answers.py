"""One answer per wait: a person's event gets an idempotency key the server derives, never the client's.

An event a person publishes (the publish view, the admin's publish form, the
task pages) answers the next wait of that name. Its key is
``durable:answer:<n>:<event>``, where ``n - 1`` events of that name have
been consumed so far, so ``n`` numbers the wait it answers: two requests for
the same wait (a double click, two assignees, a client that sends a new key
each time) write one row, whichever commits first. While an event of that
name is still in the inbox, the wait already has its answer and nothing more
is stored. A key a client sends is ignored: it could otherwise store several
answers, left in the inbox to answer later waits of the same name.

The Python API (:func:`durable_django.publish_event`) keeps the caller's key:
code that publishes a stream of events of one name does so there.
"""

from __future__ import annotations

from typing import Any

from .events import publish_event
from .models import DurableEvent

#: Reserved prefix of the keys this module derives.
PREFIX = "durable:answer:"


def pending_answer(instance_id: str, event: str) -> DurableEvent | None:
    """The oldest event of this name still in the inbox (what the next wait for it consumes), or None."""
    return (DurableEvent.objects.filter(instance_id=instance_id, name=event, consumed_at__isnull=True)
            .order_by("id").first())


def answer_key(instance_id: str, event: str) -> str:
    """The key of the answer to the next wait for ``event``: one per wait, whoever sends it."""
    consumed = DurableEvent.objects.filter(instance_id=instance_id, name=event, consumed_at__isnull=False).count()
    return f"{PREFIX}{consumed + 1}:{event}"


def publish_answer(instance_id: str, event: str, payload: Any, *, actor: Any = None) -> DurableEvent:
    """Publish a person's answer to the next wait for ``event``; the existing answer if it has one.

    Raises what :func:`durable_django.publish_event` raises.
    """
    existing = pending_answer(instance_id, event)
    if existing is not None:
        return existing
    return publish_event(instance_id, event, payload, idempotency_key=answer_key(instance_id, event), actor=actor)
