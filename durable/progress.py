"""Progress reported from inside a running instance, and values it publishes for others to wait on.

``set_status(value)`` and ``publish(key, value)`` are plain calls (not awaited)
in durable code. They only put a JSON value in the state being run
(``state["progress"]``, ``state["published"]``): the next checkpoint saves it
with everything else, so reporting progress costs no write of its own, and what
others see always matches a saved checkpoint (a step that runs again after a
crash reports again; nobody ever sees the status of a step that was lost).

Why a context variable: the call has no handle on its instance. The runtime sets
:data:`current_runtime` once per run (not per step), around its step loop; the
steps it awaits run in the same context (and so do tasks they create, which copy
it), so ``set_status`` also works inside a step called by the program.

Values are JSON (checked and copied when set: later changes to the caller's dict
are not seen) and small (:data:`limits`): they are saved with every checkpoint.
A host such as the Django app copies them into columns only when they change.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .exceptions import DurableError

if TYPE_CHECKING:
    from .checkpoints import Checkpoints

#: The runtime running the current instance's steps (set by ``DurableRuntime`` around its step loop).
current_runtime: ContextVar[Checkpoints | None] = ContextVar("durable.current_runtime", default=None)


class Limits:
    """Size limits of reported values (a host may change them, e.g. from its settings)."""

    #: Largest status or published value, in bytes of its compact JSON text (UTF-8).
    max_bytes: int = 4096
    #: Most keys one instance may publish.
    max_keys: int = 100
    #: Longest published key, in characters.
    max_key_length: int = 200


limits = Limits()


def configure(*, max_bytes: int | None = None, max_keys: int | None = None) -> None:
    """Change the size limits for this process (the Django app sets them from ``DURABLE`` settings)."""
    if max_bytes is not None:
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 2:
            raise ValueError(f"max_bytes must be an int >= 2, not {max_bytes!r}")
        limits.max_bytes = max_bytes
    if max_keys is not None:
        if not isinstance(max_keys, int) or isinstance(max_keys, bool) or max_keys < 1:
            raise ValueError(f"max_keys must be an int >= 1, not {max_keys!r}")
        limits.max_keys = max_keys


def _running(what: str) -> Checkpoints:
    runtime = current_runtime.get()
    if runtime is None or runtime.state is None:
        raise DurableError(f"durable.{what} is called outside a durable run: call it in the code of a durable "
                           "program (or of a step it awaits) while an instance runs")
    return runtime


#: One encoder (``json.dumps`` with options builds a new one at every call).
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)
_text = _ENCODER.encode


def _copy(value: Any) -> Any:
    return value if value is None or isinstance(value, str | int | float | bool) else json.loads(_text(value))


def _same(old: Any, new: Any) -> bool:
    """Equal as JSON (``==`` alone takes ``True`` for ``1``)."""
    return old == new and _text(old) == _text(new)


def _encoded(value: Any, what: str) -> str:
    """The JSON text of ``value``; TypeError when it is not JSON, ValueError when it is too large."""
    try:
        text = _text(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"durable.{what}: the value must be JSON-compatible (dict, list, str, int, float, bool, "
                        f"None), got {type(value).__name__}: {exc}") from None
    size = len(text.encode())
    if size > limits.max_bytes:
        raise ValueError(f"durable.{what}: the value is {size} bytes of JSON, more than the limit of "
                         f"{limits.max_bytes} (it is saved with every checkpoint: report a summary, not data)")
    return text


def set_status(value: Any) -> None:
    """Report the running instance's custom status (e.g. ``{"stage": "payment", "percent": 80}``).

    Saved with the next checkpoint, at no extra write; ``None`` clears it.
    Raises :class:`~durable.DurableError` outside a durable run, ``TypeError``
    for a value that is not JSON, ``ValueError`` for one over
    ``limits.max_bytes``.
    """
    runtime = _running("set_status()")
    state = runtime.state
    assert state is not None  # _running() checked it
    text = _encoded(value, "set_status()")
    old = state.get("progress")
    # the text of the status set last, kept on the runtime: an unchanged status costs one json.dumps
    cached = runtime.__dict__.get("_durable_status")
    if text == (cached[1] if cached is not None and cached[0] is old else _text(old)):
        return
    # a new object only when the value changes: hosts compare by identity to skip unchanged writes
    new = state["progress"] = json.loads(text)  # a copy: later changes to the caller's value are not seen
    runtime.__dict__["_durable_status"] = (new, text)


def get_status() -> Any:
    """A copy of the status the running instance reported last (None if none), e.g. to change one field of it
    and set it again (a copy: changing it in place would change the saved status behind the host's back)."""
    state = _running("get_status()").state
    assert state is not None
    return _copy(state.get("progress"))


def publish(key: str, value: Any) -> None:
    """Publish ``value`` under ``key`` for views and other processes to wait on (DBOS ``set_event``).

    Saved with the next checkpoint (visible once that commits), at no extra
    write; publishing a key again replaces its value. A host reads it from the
    saved state (the Django app: ``durable_django.get_value``).
    """
    if not isinstance(key, str) or not key or len(key) > limits.max_key_length:
        raise ValueError(f"durable.publish(): the key must be a non-empty str of at most "
                         f"{limits.max_key_length} characters, got {key!r:.80}")
    state = _running("publish()").state
    assert state is not None
    new = json.loads(_encoded(value, "publish()"))
    old: dict[str, Any] = state.get("published") or {}
    if key in old and _same(old[key], new):
        return
    if key not in old and len(old) >= limits.max_keys:
        raise ValueError(f"durable.publish(): the instance already published {len(old)} keys, the limit")
    state["published"] = {**old, key: new}  # a new dict: hosts compare by identity


def published(key: str, default: Any = None) -> Any:
    """A copy of the value the running instance published under ``key`` (``default`` if none)."""
    state = _running("published()").state
    assert state is not None
    values = state.get("published") or {}
    return _copy(values[key]) if key in values else default


def describe(value: Any, limit: int = 120) -> str:
    """A one-line summary of a reported status, for people (admin list, status widget).

    A dict with the usual keys reads "payment · 80% · charging the card"
    (``stage``, ``percent``, ``message``, in that order); anything else is its
    compact JSON. Cut to ``limit`` characters.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    else:
        parts: list[str] = []
        if isinstance(value, dict):
            if isinstance(value.get("stage"), str | int | float):
                parts.append(str(value["stage"]))
            if isinstance(value.get("percent"), int | float) and not isinstance(value["percent"], bool):
                parts.append(f"{value['percent']:g}%")
            if isinstance(value.get("message"), str):
                parts.append(value["message"])
        text = " · ".join(parts) if parts else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"
