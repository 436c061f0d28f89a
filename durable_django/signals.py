"""Signals sent for every transition of an instance, after it committed.

Every signal is sent with ``sender=DurableInstance`` and keyword arguments
``instance_id`` and ``program``; ``instance_transition`` is also sent for each
of them with ``kind`` (the specific signal's name without ``instance_``) and
``status``. Extra arguments: ``instance_paused`` gets ``detail`` (what it waits
for), ``instance_failed`` and ``instance_suspended`` get ``detail`` (the error),
``instance_cancel_requested`` and ``instance_cancelled`` get ``detail`` (the reason),
``event_published`` gets ``event`` (the :class:`DurableEvent`).

This module loads no models (the sender is looked up when a signal is sent),
so that a project can import it from any module, before the app registry is ready.

Receivers run in the process that made the transition (a web process or a
worker), after the commit, and a failing receiver is logged, never allowed to
break the instance.

``sweep_finished`` is sent (``sender=None``, ``ids``: the instances it woke)
at the end of every periodic sweep that is not a dry run, in the process that
ran it: a hook for periodic repairs, e.g. the human-task rows
(:mod:`durable_django.humantasks` connects to it). Send it with
:func:`send_sweep_finished`.
"""

from __future__ import annotations

import logging

from django.apps import apps
from django.dispatch import Signal

log = logging.getLogger("durable_django")

instance_started = Signal()
instance_resumed = Signal()
instance_paused = Signal()
instance_completed = Signal()
instance_failed = Signal()
instance_cancelled = Signal()
instance_cancel_requested = Signal()
instance_suspended = Signal()
instance_recovered = Signal()
instance_migrated = Signal()
event_published = Signal()
instance_transition = Signal()
sweep_finished = Signal()

_BY_KIND = {
    "started": instance_started, "resumed": instance_resumed, "paused": instance_paused,
    "completed": instance_completed, "failed": instance_failed, "cancelled": instance_cancelled,
    "cancel_requested": instance_cancel_requested, "suspended": instance_suspended,
    "recovered": instance_recovered, "migrated": instance_migrated,
    "event_published": event_published,
}


def send_transition(kind: str, instance_id: str, status: str, program: str = "", **extra) -> None:
    """Send the specific signal for ``kind`` and ``instance_transition`` (robustly)."""
    sender = apps.get_model("durable_django", "DurableInstance")  # looked up, not imported: see the docstring
    sig = _BY_KIND.get(kind)
    for signal, kwargs in ((sig, extra), (instance_transition, {"kind": kind, "status": status, **extra})):
        if signal is None:
            continue
        for receiver, result in signal.send_robust(sender, instance_id=instance_id, program=program,
                                                   **kwargs):
            if isinstance(result, Exception):
                log.error("durable signal receiver %r failed for %s %s", receiver, kind, instance_id,
                          exc_info=result)


def send_sweep_finished(ids: list[str]) -> None:
    """Send :data:`sweep_finished` (robustly: a failing receiver is logged, the sweep goes on)."""
    for receiver, result in sweep_finished.send_robust(None, ids=ids):
        if isinstance(result, Exception):
            log.error("durable sweep receiver %r failed", receiver, exc_info=result)
