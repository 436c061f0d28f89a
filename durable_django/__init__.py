"""durable_django: run durable programs (``durable.make_durable``) for real, in Django.

Public functions (imported lazily, so importing this package loads no models)::

    from durable_django import start, publish_event, cancel, resume, result, db_step
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "start": "api", "publish_event": "api", "cancel": "api", "resume": "api", "result": "api",
    "get_instance": "api", "register_migration": "programs", "register": "programs", "bind": "bindings",
    "db_step": "steps", "sweep": "worker", "run_instance": "worker",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'durable_django' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"durable_django.{module}"), name)
