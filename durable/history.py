"""Checkpoint history (opt-in) and forks: start a new instance from an earlier checkpoint.

Without history the saved state holds only what is live, so it stays the same
size however many steps an instance runs. A program declared with
``history=N`` (``True``: all) marks its state with ``state["history"]``; a
backend that supports history keeps a copy of each checkpoint it saves, in the
same write as the checkpoint, and drops the copies beyond the last ``N``. It
implements ``list_checkpoints(instance_id)`` and ``load_checkpoint(instance_id,
step)`` (see :class:`~durable.DurableBackend`). :func:`fork` builds a new
instance from one of them (DBOS's fork, Temporal's reset).
"""

from __future__ import annotations

import inspect
from typing import Any

from .state import COMPLETED, PAUSED, RUNNING, SavedState

#: ``state["history"]`` of a program that keeps every checkpoint.
ALL = -1


def check_history(history: int | bool | None) -> int | None:
    """``history=`` as declared: None (off), a count of checkpoints kept, or :data:`ALL` for ``True``."""
    if history is None or history is False:
        return None
    if history is True:
        return ALL
    if isinstance(history, int) and history >= 1:
        return history
    raise ValueError(f"history= takes True, False, None or a number of checkpoints >= 1, got {history!r}")


def supports_history(backend: object) -> bool:
    """Does ``backend`` keep checkpoint history (the two methods of this module's contract)?"""
    return callable(getattr(backend, "load_checkpoint", None)) and callable(getattr(backend, "list_checkpoints", None))


async def _maybe_await(value: Any) -> Any:
    return (await value) if inspect.isawaitable(value) else value


async def list_checkpoints(backend: Any, instance_id: str) -> list[dict[str, Any]]:
    """The kept checkpoints of an instance, oldest first: ``{"step", "status", "position"}`` each."""
    if not supports_history(backend):
        raise TypeError(f"{type(backend).__name__} keeps no checkpoint history (it has no list_checkpoints)")
    rows: list[dict[str, Any]] = await _maybe_await(backend.list_checkpoints(instance_id))
    return rows


async def fork(backend: Any, instance_id: str, new_instance_id: str, step: int, *,
               locals: dict[str, Any] | None = None, frame: int = -1) -> SavedState:
    """Create instance ``new_instance_id`` from checkpoint ``step`` of ``instance_id``; return its state.

    ``locals`` sets variables of frame ``frame`` (default: the innermost) of
    the copy. The new instance is saved as the checkpoint left it (running, or
    paused on the same wait); run it with
    ``await program(instance_id=new_instance_id, orchestration_backend=backend)``.
    Its completed steps are not run again. Raises ``KeyError`` for a checkpoint
    that is not kept, ``ValueError`` when the new id exists or the checkpoint
    is the end of the instance.
    """
    if not supports_history(backend):
        raise TypeError(f"{type(backend).__name__} keeps no checkpoint history: declare the program with "
                        "history=... and use a backend that supports it")
    if new_instance_id == instance_id:
        raise ValueError("a fork needs a new instance id")
    state: SavedState | None = await _maybe_await(backend.load_checkpoint(instance_id, step))
    if state is None:
        raise KeyError(f"instance {instance_id!r} has no kept checkpoint {step}")
    if state["status"] not in (RUNNING, PAUSED):
        hint = " (take the checkpoint before it)" if state["status"] != COMPLETED else ""
        raise ValueError(f"checkpoint {step} of {instance_id!r} is {state['status']}: a fork starts from a running "
                         f"or paused checkpoint{hint}")
    if await _maybe_await(backend.load_state(new_instance_id)) is not None:
        raise ValueError(f"instance {new_instance_id!r} already exists")
    if locals:
        frames = list(state["stack"])
        try:
            target = frames[frame]
        except IndexError:
            raise ValueError(f"checkpoint {step} has no frame {frame} (it has {len(frames)})") from None
        for name, value in locals.items():
            try:
                target.set_user_local(name, value)
            except KeyError:
                raise ValueError(f"frame {frame} ({target.name}) of checkpoint {step} has no local {name!r}; "
                                 f"it has {sorted(target.user_locals())}") from None
    state["forked_from"] = (instance_id, step)
    await _maybe_await(backend.save_state(new_instance_id, state))
    return state
