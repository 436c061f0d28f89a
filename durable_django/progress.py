"""Progress reported from inside a process, and waiting for the values it publishes (docs/progress.md).

A program calls ``durable.set_status(value)`` and ``durable.publish(key, value)``
(see :mod:`durable.progress`); the backend's checkpoint copies them into the
instance's ``progress`` and ``published`` JSON columns, in the same UPDATE and
only when they changed. This module is the reading side:

* :func:`get_value` / :func:`aget_value` wait, with a deadline, until an
  instance has published a key (DBOS ``get_event``). They poll the row with a
  backoff (20 ms, growing to ``VALUE_POLL_MAX_INTERVAL``): one indexed primary-key
  read per poll, no listener to keep, and it works on every database.
* :data:`published_value` is the same wait inside a durable program: a step
  that reads once and, while the value is not there, is retried after a
  durable timer (``RetryPolicy``), so the waiting instance holds no worker.
* :func:`apply_settings` hands the ``DURABLE`` size limits to the core, in every
  process (``AppConfig.ready``) and again when the settings change (tests).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.core.signals import setting_changed

import durable
from durable import progress as core

from .conf import durable_settings
from .exceptions import UnknownInstance, ValueNotPublished, ValueTimeout
from .limits import check_instance_id
from .models import FINISHED, DurableInstance
from .steps import db_step

_MISSING: Any = object()
#: The first pause between two reads (seconds); each next one is 1.5 times longer, up to the setting.
FIRST_INTERVAL = 0.02


def apply_settings(**kwargs: Any) -> None:
    """Give the core the ``MAX_STATUS_BYTES`` and ``MAX_PUBLISHED_KEYS`` limits of the settings.

    A bad value leaves the core's default in place (the system check E070 reports it) rather than stopping
    the process in ``AppConfig.ready``."""
    for option, name in (("max_bytes", "MAX_STATUS_BYTES"), ("max_keys", "MAX_PUBLISHED_KEYS")):
        try:
            core.configure(**{option: getattr(durable_settings, name)})
        except ValueError:
            core.configure(**{option: getattr(core.Limits, option)})


def _on_setting_changed(setting: str = "", **kwargs: Any) -> None:
    if setting == "DURABLE":
        apply_settings()


setting_changed.connect(_on_setting_changed, dispatch_uid="durable_django.progress.apply_settings")


def read_value(instance_id: str, key: str, *, using: str | None = None) -> tuple[bool, Any]:
    """``(True, value)`` when ``instance_id`` published ``key``, ``(False, None)`` while it has not; raises
    :class:`ValueNotPublished` when it never will, :class:`UnknownInstance` when there is no such instance."""
    row = (DurableInstance.objects.using(using).filter(pk=instance_id)
           .values_list("published", "status").first())
    if row is None:
        raise UnknownInstance(instance_id)
    published, status = row
    if published and key in published:
        return True, published[key]
    if status in FINISHED:
        raise ValueNotPublished(f"durable instance {instance_id!r} is {status} and never published {key!r}")
    return False, None


def _check(instance_id: str, key: str, timeout: float) -> float:
    check_instance_id(instance_id)
    if not isinstance(key, str) or not key:
        raise TypeError(f"key must be a non-empty str, got {key!r:.80}")
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
        raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
    return time.monotonic() + timeout


def _expired(instance_id: str, key: str, timeout: float, default: Any) -> Any:
    if default is not _MISSING:
        return default
    raise ValueTimeout(f"durable instance {instance_id!r} did not publish {key!r} within {timeout} s")


def get_value(instance_id: str, key: str, *, timeout: float = 30.0, default: Any = _MISSING,
              using: str | None = None) -> Any:
    """Wait until ``instance_id`` has published ``key`` (``durable.publish``) and return its value.

    Returns at once when it is already there. After ``timeout`` seconds returns
    ``default`` if given, else raises :class:`ValueTimeout`. Raises
    :class:`ValueNotPublished` as soon as the instance finished without
    publishing it, :class:`UnknownInstance` when there is no such instance.
    A value becomes visible when the checkpoint after ``publish`` commits: call
    this outside a transaction (a snapshot, as SQLite and MySQL's REPEATABLE
    READ keep inside one, would never see it), and not in the transaction that
    started the instance (it runs only once that commits).
    """
    deadline = _check(instance_id, key, timeout)
    longest = float(durable_settings.VALUE_POLL_MAX_INTERVAL)
    pause = FIRST_INTERVAL
    while True:
        found, value = read_value(instance_id, key, using=using)
        if found:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            return _expired(instance_id, key, timeout, default)
        time.sleep(min(pause, left))
        pause = min(pause * 1.5, longest)


async def aget_value(instance_id: str, key: str, *, timeout: float = 30.0, default: Any = _MISSING,
                     using: str | None = None) -> Any:
    """:func:`get_value` for async code: each read in a thread, the pauses on the event loop."""
    deadline = _check(instance_id, key, timeout)
    longest = float(durable_settings.VALUE_POLL_MAX_INTERVAL)
    pause = FIRST_INTERVAL
    read = sync_to_async(read_value, thread_sensitive=True)
    while True:
        found, value = await read(instance_id, key, using=using)
        if found:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            return _expired(instance_id, key, timeout, default)
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 1.5, longest)


def get_values(instance_id: str, *, using: str | None = None) -> dict[str, Any]:
    """Every value the instance has published so far, by key (no waiting)."""
    check_instance_id(instance_id)
    row = DurableInstance.objects.using(using).filter(pk=instance_id).values_list("published").first()
    if row is None:
        raise UnknownInstance(instance_id)
    return dict(row[0] or {})



#: The retries of :data:`published_value`: from 1 s, doubling, up to 5 minutes between reads; about 2 hours
#: in all before the step fails with the last :class:`ValueTimeout` (or :class:`UnknownInstance`).
PUBLISHED_VALUE_RETRY = durable.RetryPolicy(max_attempts=30, initial_interval=1.0, backoff=2.0, max_interval=300.0,
                                            retry_on=(ValueTimeout, UnknownInstance))


def read_published(instance_id: str, key: str) -> Any:
    """One read of :data:`published_value`: the value, or :class:`ValueTimeout` while it is not there."""
    found, value = read_value(instance_id, key)
    if not found:
        raise ValueTimeout(f"durable instance {instance_id!r} has not published {key!r} yet")
    return value


published_value = durable.step(retry=PUBLISHED_VALUE_RETRY)(db_step(read_published))
"""In a durable program, ``await published_value(other_id, key)``: another instance's published value.

Each attempt reads the row once (:func:`read_published`, a ``db_step``); while the value is not there (or
the instance not created yet) it raises, and the step is tried again after a durable timer: the waiting
instance is paused in between, holding no worker. :class:`ValueNotPublished` (the other finished without
it) is not retried. Other patience: ``durable.step(retry=RetryPolicy(..., retry_on=(ValueTimeout,
UnknownInstance)))(published_value)``. (A module attribute, so checkpoints pickle it by reference.)
"""
