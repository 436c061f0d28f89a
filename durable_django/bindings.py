"""Declarative model-signal -> ``publish_event`` mappings.

::

    from durable_django.bindings import bind

    bind(Order, "approved", when=lambda order, **kw: order.status == "approved",
         payload=lambda order, **kw: {"order": order.pk})

When an ``Order`` is saved with status approved, ``approved`` is published to
every unfinished durable instance linked to that order (``start(..., link=order)``),
or to the instance(s) returned by ``instance_id``. The event row is written in
the same transaction as the save, so a rolled-back save publishes nothing.
By default (``once=True``) an idempotency key per binding, object and instance
makes repeated saves publish the event only once to each instance.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models.signals import post_save
from django.dispatch import Signal

from .events import publish_event
from .limits import EVENT_NAME_COLUMN, IDEMPOTENCY_KEY_COLUMN, bad_character, check_text
from .models import FINISHED, DurableInstance

log = logging.getLogger("durable_django")

_bindings: list[Binding] = []


class Binding:
    """One mapping from a model signal to an event; see :func:`bind`."""

    def __init__(self, model: type[models.Model], event: str, *, when: Callable[..., bool] | None = None,
                 payload: Callable[..., Any] | None = None,
                 instance_id: Callable[..., str | Iterable[str] | None] | None = None,
                 signal: Signal = post_save, once: bool = True, name: str | None = None) -> None:
        self.model = model
        self.event = check_text(event, "binding event name", EVENT_NAME_COLUMN)  # refused at import time
        self.when = when
        self.payload = payload
        self.instance_id = instance_id
        self.signal = signal
        self.once = once
        self.name = name or f"{model._meta.label_lower}:{event}"
        self.dispatch_uid = f"durable_django.binding:{self.name}"

    def connect(self) -> None:
        self.signal.connect(self.handle, sender=self.model, weak=False, dispatch_uid=self.dispatch_uid)

    def disconnect(self) -> None:
        self.signal.disconnect(sender=self.model, dispatch_uid=self.dispatch_uid)

    def targets(self, obj: models.Model, **kwargs: Any) -> list[str]:
        if self.instance_id is not None:
            ids = self.instance_id(obj, **kwargs)
            if ids is None:
                return []
            return [ids] if isinstance(ids, str) else list(ids)
        ct = ContentType.objects.get_for_model(obj)
        return list(DurableInstance.objects.filter(content_type=ct, object_id=str(obj.pk))
                    .exclude(status__in=FINISHED).values_list("pk", flat=True))

    def handle(self, sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
        if self.when is not None and not self.when(instance, **kwargs):
            return
        payload = self.payload(instance, **kwargs) if self.payload is not None else None
        key = self.key(instance) if self.once else None
        for iid in self.targets(instance, **kwargs):
            publish_event(iid, self.event, payload, idempotency_key=key)

    def key(self, obj: models.Model) -> str:
        """The idempotency key of this binding for ``obj``; a digest when it would not fit the column."""
        key = f"{self.name}:{obj.pk}"
        if len(key) <= IDEMPOTENCY_KEY_COLUMN and bad_character(key) is None:
            return key
        return f"{self.name[:120]}:sha256:{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()}"


def bind(model: type[models.Model], event: str, **options: Any) -> Binding:
    """Publish ``event`` to a model object's durable instances when ``when(obj, **signal_kwargs)`` holds.

    Options: ``when``, ``payload`` (callables taking the object and the
    signal's keyword arguments), ``instance_id`` (callable returning an id or
    ids; default: instances linked to the object), ``signal`` (default
    ``post_save``), ``once`` (default True), ``name``.
    Call it at import time of your app's ``durable_programs.py`` or in
    ``AppConfig.ready()``. Returns the connected :class:`Binding`.
    """
    binding = Binding(model, event, **options)
    binding.connect()
    _bindings.append(binding)
    return binding


def bindings() -> list[Binding]:
    """Every binding registered so far (for inspection and tests)."""
    return list(_bindings)
