"""Progress reported from inside a process, and waiting for the values it publishes (docs/progress.md).

A program calls ``durable.set_status(value)`` and ``durable.publish(key, value)``
(see :mod:`durable.progress`); the backend's checkpoint copies them into the
instance's ``progress`` and ``published`` JSON columns, in the same UPDATE and
only when they changed. This module is the reading side:

* :func:`get_value` / :func:`aget_value` wait, with a deadline, until an
  instance has published a key (DBOS ``get_event``). They poll the row with a
  backoff (20 ms, growing to ``VALUE_POLL_MAX_INTERVAL``): one indexed primary-key
  read per poll, no listener to keep, and it works on every database.
* :func:`apply_settings` hands the ``DURABLE`` size limits to the core, in every
  process (``AppConfig.ready``) and again when the settings change (tests).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.core.signals import setting_changed

from durable import progress as core

from .conf import durable_settings
from .exceptions import UnknownInstance, ValueNotPublished, ValueTimeout
from .limits import check_instance_id
from .models import FINISHED, DurableInstance

#: Returned by the read of one poll when the value is not there yet.
_NOT_YET = object()
_MISSING: Any = object()
#: The first pause between two reads (seconds); each next one is 1.5 times longer, up to the setting.
FIRST_INTERVAL = 0.02


def apply_settings(**kwargs: Any) -> None:
    """Give the core the ``MAX_STATUS_BYTES`` and ``MAX_PUBLISHED_KEYS`` limits of the settings."""
    core.configure(max_bytes=int(durable_settings.MAX_STATUS_BYTES),
                   max_keys=int(durable_settings.MAX_PUBLISHED_KEYS))


def _on_setting_changed(setting: str = "", **kwargs: Any) -> None:
    if setting == "DURABLE":
        apply_settings()


setting_changed.connect(_on_setting_changed, dispatch_uid="durable_django.progress.apply_settings")


def read_value(instance_id: str, key: str, *, using: str | None = None) -> Any:
    """The value ``instance_id`` published under ``key``, or ``_NOT_YET``; raises when it never will."""
    row = (DurableInstance.objects.using(using).filter(pk=instance_id)
           .values_list("published", "status").first())
    if row is None:
        raise UnknownInstance(instance_id)
    published, status = row
    if published and key in published:
        return published[key]
    if status in FINISHED:
        raise ValueNotPublished(f"durable instance {instance_id!r} is {status} and never published {key!r}")
    return _NOT_YET


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
        value = read_value(instance_id, key, using=using)
        if value is not _NOT_YET:
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
        value = await read(instance_id, key, using=using)
        if value is not _NOT_YET:
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

