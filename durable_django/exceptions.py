"""Errors raised by the Django app's public functions.

Each one names what was wrong; none of them loses data: the instance row, its
checkpoint and its inbox are left as they were.
"""

from __future__ import annotations

from durable import DurableError, InstanceCancelled, StateTamperedError


class DurableDjangoError(DurableError):
    """Base class of this app's errors."""


class UnknownInstance(DurableDjangoError, LookupError):
    """No instance has this id."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(f"no durable instance with id {instance_id!r}")
        self.instance_id = instance_id


class UnknownProgram(DurableDjangoError, LookupError):
    """A program path cannot be imported, is not allowed, or is not a durable program."""


class InvalidPayload(DurableDjangoError, TypeError):
    """An event payload (or a start argument) cannot be stored."""


class InvalidInput(DurableDjangoError, ValueError):
    """An instance id, event name, key or filter that cannot be stored or looked up (empty, too long, a NUL
    character...); nothing was stored."""


class InstanceFinished(DurableDjangoError):
    """The instance already completed, failed or was cancelled; it takes no events and cannot be cancelled."""

    def __init__(self, instance_id: str, status: str, action: str) -> None:
        super().__init__(f"cannot {action} durable instance {instance_id!r}: it is {status}")
        self.instance_id = instance_id
        self.status = status


class InstanceExists(DurableDjangoError):
    """``start(..., instance_id=x)`` with a different program than the existing instance ``x`` runs."""


class StateUnreadable(DurableDjangoError):
    """The instance's saved state cannot be read: its signature does not verify, or its code cannot be imported.

    Nothing that needs the state (the wait a human task answers, editing a local) can be done until an
    operator restores it; the row, its inbox and its history are shown as they are.
    """

    def __init__(self, instance_id: str, status: str, reason: str) -> None:
        super().__init__(f"durable instance {instance_id!r} ({status}): state unreadable: {reason}")
        self.instance_id = instance_id
        self.status = status
        self.reason = reason


def state_error(exc: BaseException) -> str:
    """Why a state blob could not be read, for people."""
    if isinstance(exc, StateTamperedError):
        return f"it failed its signature check and was not decoded ({exc})"
    return f"{type(exc).__name__}: {exc}"


class LeaseLost(DurableDjangoError):
    """This worker no longer owns the instance (its lease expired and another worker took it, or it was cancelled).

    The step in progress is rolled back; the owner of the lease carries on.
    """


__all__ = [
    "DurableDjangoError", "UnknownInstance", "UnknownProgram", "InvalidPayload", "InvalidInput", "InstanceFinished",
    "InstanceExists", "LeaseLost", "InstanceCancelled", "StateUnreadable",
]


class ValueTimeout(DurableDjangoError, TimeoutError):
    """``get_value`` reached its deadline before the instance published the key (see docs/progress.md)."""


class ValueNotPublished(DurableDjangoError, LookupError):
    """``get_value`` waited for a key that the instance, now finished, never published: it never will."""
