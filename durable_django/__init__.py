"""durable_django: run durable programs (``durable.make_durable``) for real, in Django.

Public functions (imported lazily, so importing this package loads no models)::

    from durable_django import start, publish_event, cancel, resume, result, db_step

Type checkers see the real signatures through the imports under ``TYPE_CHECKING``
below; at run time each name is imported on first use (``__getattr__``).

and their async twins for async views and other async code (same arguments, same errors)::

    from durable_django import astart, apublish_event, acancel, aresume, aresult, aget_instance
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import (
        Starter,
        acancel,
        aget_instance,
        apublish_event,
        aresult,
        aresume,
        astart,
        cancel,
        get_instance,
        publish_event,
        result,
        resume,
        start,
        starter,
    )
    from .bindings import bind
    from .flowcontrol import limit
    from .programs import register, register_migration
    from .progress import aget_value, get_value, get_values, published_value
    from .schedules import schedule
    from .steps import db_step
    from .worker import run_instance, sweep

_API = {
    "start": "api", "starter": "api", "Starter": "api", "publish_event": "api", "cancel": "api", "resume": "api",
    "result": "api", "get_instance": "api",
    "astart": "api", "apublish_event": "api", "acancel": "api", "aresume": "api", "aresult": "api",
    "aget_instance": "api",
    "register_migration": "programs", "register": "programs",
    "get_value": "progress", "aget_value": "progress", "get_values": "progress", "published_value": "progress",
    "bind": "bindings", "limit": "flowcontrol", "db_step": "steps", "schedule": "schedules", "sweep": "worker",
    "run_instance": "worker",
}
__all__ = [
    "Starter", "acancel", "aget_instance", "aget_value", "apublish_event", "aresult", "aresume", "astart",
    "bind", "cancel", "db_step", "get_instance", "get_value", "get_values", "limit", "publish_event",
    "published_value", "register", "register_migration", "result", "resume", "run_instance", "schedule", "start",
    "starter", "sweep",
]

if not TYPE_CHECKING:  # a type checker would otherwise take every missing name for Any

    def __getattr__(name: str) -> object:
        module = _API.get(name)
        if module is None:
            raise AttributeError(f"module 'durable_django' has no attribute {name!r}")
        from importlib import import_module

        return getattr(import_module(f"durable_django.{module}"), name)
