"""durable_django: run durable programs (``durable.make_durable``) for real, in Django.

Public functions (imported lazily, so importing this package loads no models)::

    from durable_django import start, publish_event, cancel, resume, result, db_step

and their async twins for async views and other async code (same arguments, same errors)::

    from durable_django import astart, apublish_event, acancel, aresume, aresult, aget_instance
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "start": "api", "publish_event": "api", "cancel": "api", "resume": "api", "result": "api",
    "get_instance": "api",
    "astart": "api", "apublish_event": "api", "acancel": "api", "aresume": "api", "aresult": "api",
    "aget_instance": "api",
    "register_migration": "programs", "register": "programs", "bind": "bindings",
    "db_step": "steps", "sweep": "worker", "run_instance": "worker",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'durable_django' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"durable_django.{module}"), name)
