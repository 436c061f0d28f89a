"""The saved state of an instance: the dict a backend persists at every checkpoint.

The runtime builds it (:func:`durable.runtime.new_state`), an
:class:`~durable.OrchestrationBackend` saves and loads it whole, and hosts
(the Django app) read a few keys to fill their columns and screens. These
types name the keys so that every reader agrees on them; at run time the
state stays a plain ``dict`` (no conversion on the hot path).

A backend keeps its own bookkeeping out of it: :class:`~durable.DurableBackend`
stores the events a step consumed beside the state in its blob and hands back
exactly the keys below.

(No ``from __future__ import annotations`` here: ``TypedDict`` recognises
``NotRequired`` only in evaluated annotations on Python 3.11.)
"""

from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, NotRequired, TypedDict

from .exceptions import DurableError, InstanceCancelled
from .tracebacks import restore

if TYPE_CHECKING:
    from .stack import CallStack

#: The values of ``SavedState["status"]``. ``cancelled``: the cancellation left the program (or was
#: forced); a host may also set it on a loaded state to make the runtime refuse to continue.
Status = Literal["running", "paused", "completed", "failed", "cancelled"]
RUNNING: Final = "running"
PAUSED: Final = "paused"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"


class WaitInfo(TypedDict):
    """What a paused instance waits for (``SavedState["wait"]``)."""

    #: ``"timer"`` (``sleep``/``sleep_until``), ``"event"`` (``wait_for_event``), ``"child"`` (``await child``)
    #: or ``"branches"`` (parallel branches: the wait of each paused one is in ``waits``).
    kind: Literal["timer", "event", "child", "children", "branches"]
    #: POSIX seconds: when a timer fires, or when an event wait times out (None: no timeout).
    due: float | None
    #: The awaited event's name (event waits only).
    event: NotRequired[str]
    #: The keyword arguments of ``wait_for_event(name, **meta)``, when there were any (event waits only).
    meta: NotRequired[dict[str, Any]]
    #: True when ``due`` was cut to the instance's deadline (which is then raised at the await).
    deadline: NotRequired[bool]
    #: True for the backoff timer before the next attempt of a step (see ``SavedState["retry"]``).
    retry: NotRequired[bool]
    #: The awaited child instance's id (child waits only).
    child: NotRequired[str]
    #: The awaited children's ids (``"children"`` waits: ``gather``/``first`` of child handles only), with the
    #: group's ``mode`` and ``return_exceptions``.
    children: NotRequired[list[str]]
    mode: NotRequired[Literal["all", "first"]]
    return_exceptions: NotRequired[bool]
    #: The branch's path, in a ``waits`` entry of a ``"branches"`` wait.
    branch: NotRequired[str]
    #: Every paused branch's wait (``"branches"`` waits only), each with its ``branch``; ``due`` is the earliest.
    waits: NotRequired[list["WaitInfo"]]


class RetryInfo(TypedDict):
    """A step waiting for its next attempt (``SavedState["retry"]``), see :class:`durable.RetryPolicy`."""

    #: ``(function, args, kwargs)``: what is called again (pickled with the state).
    call: tuple[Any, tuple[Any, ...], dict[str, Any]]
    #: The number of the next attempt (2 for the first retry).
    attempt: int
    max_attempts: int
    #: The step's name and the error of the attempt that failed (for people).
    step: str
    error: str


class GroupInfo(TypedDict):
    """A ``gather``/``first`` in progress (``SavedState["group"]``)."""

    #: ``"all"`` (gather) or ``"first"``.
    mode: Literal["all", "first"]
    return_exceptions: bool
    #: The branches' paths, in the order of the awaitables.
    branches: list[str]
    #: ``(function, args, kwargs)`` of each branch: how it starts again if it never saved a checkpoint.
    calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]]
    #: The branch whose end decided the outcome (a failure, or the first to end), once one did: the others
    #: are cancelled.
    decided: str | None


class ChildInfo(TypedDict):
    """A child instance a parent started (``SavedState["children"]``)."""

    #: ``"cancel"``, ``"abandon"`` or ``"wait"``: what happens to it when the parent ends first.
    on_parent_close: str
    #: The child's program (pickled by reference), to cancel it in the core.
    program: Any


class SavedState(TypedDict):
    """One checkpoint of an instance."""

    #: Version of this layout (1).
    format: int
    #: Where the instance stands (see :data:`Status`).
    status: Status
    #: The program's name (``DurableProgram.name``; for the Django app, its dotted path).
    program: str
    #: The frames of the running call, innermost last; empty once the instance finished.
    stack: "CallStack"
    #: What the paused instance waits for, None when it is not paused.
    wait: WaitInfo | None
    #: The return value, once completed.
    result: Any
    #: The exception that ended a failed instance (a ``DurableError`` when the original cannot be pickled).
    error: BaseException | None
    #: How many checkpoints were saved (this one included).
    steps: int
    #: POSIX seconds at which :class:`~durable.DeadlineExceeded` is raised in the program, if it has a deadline.
    deadline: NotRequired[float]
    #: True once the deadline was raised (it is raised once).
    deadline_hit: NotRequired[bool]
    #: Checkpoints a backend keeps as history (-1: all), when the program keeps any (see durable.history).
    history: NotRequired[int]
    #: A step in backoff before its next attempt (paused on a timer with ``wait["retry"]``).
    retry: NotRequired[RetryInfo | None]
    #: The reason of a cancellation raised in the program (a second cancel forces the end).
    cancel: NotRequired[str]
    #: Where a failed instance's program raised the error that ended it (function, line, await), for people.
    failed_at: NotRequired[str]
    #: A failed instance's wait at its last checkpoint, waited for again when it is retried.
    failed_wait: NotRequired[WaitInfo | None]
    #: ``(instance id, step)`` of the checkpoint a forked instance was made from.
    forked_from: NotRequired[tuple[str, int]]
    #: The custom status the program reported last with ``durable.set_status()`` (JSON), saved with the next
    #: checkpoint; a new object only when it changes (hosts compare by identity to skip unchanged writes).
    progress: NotRequired[Any]
    #: Values the program published with ``durable.publish(key, value)`` (JSON), by key; replaced by a new
    #: dict whenever a value changes (see :mod:`durable.progress`).
    published: NotRequired[dict[str, Any]]
    #: How many groups of parallel branches this call stack started (numbers the next group's branches).
    groups: NotRequired[int]
    #: The group of parallel branches the innermost frame awaits, while it runs (see :mod:`durable.branches`).
    group: NotRequired["GroupInfo | None"]
    #: Child instances started and not yet awaited to their end: child id -> what to do with it when this
    #: instance ends (see :mod:`durable.children`).
    children: NotRequired[dict[str, "ChildInfo"]]
    #: ``(parent instance id, parent-close policy)`` of a child instance.
    parent: NotRequired[tuple[str, str]]
    #: How many children this instance started (numbers the next default child id).
    spawned: NotRequired[int]
    #: The outcome of a program that returned while children with the ``"wait"`` policy still run: the instance
    #: ends with it once they have.
    closing: NotRequired[tuple[str, Any]]


def reopen_failed(state: SavedState, instance_id: str) -> SavedState:
    """Make a failed state runnable again from the checkpoint it kept (for a retry of the instance).

    The wait it was paused on, if any, is waited for again; a step in backoff
    gets a fresh set of attempts. Raises :class:`DurableError` when the
    failure kept no checkpoint.
    """
    if state.get("status") != FAILED:
        raise DurableError(f"instance {instance_id!r} is {state.get('status')}: only a failed instance is retried")
    if not state.get("stack"):
        raise DurableError(f"instance {instance_id!r} failed without a checkpoint to retry from (it failed before "
                           "failed instances kept one, or its store returns the dict it was given): start it again")
    wait = state.pop("failed_wait", None)
    retry = state.get("retry")
    if retry:
        retry["attempt"] = 1
    state.pop("failed_at", None)
    state.update({"status": PAUSED if wait else RUNNING, "wait": wait, "error": None})
    return state



#: The branch whose steps run in this context (its path, e.g. ``"0.1"``), None outside parallel branches. A
#: backend reads it in ``wait_for_event`` to record an event as taken by that branch, so that the branch's own
#: checkpoint (``save_branch``), not another branch's, removes it from the inbox (see :mod:`durable.branches`).
current_branch: ContextVar[str | None] = ContextVar("durable.current_branch", default=None)


def branch_key(instance_id: str, branch: str) -> str:
    """The key under which a backend without branch storage of its own saves a branch's state."""
    return f"{instance_id}/branch:{branch}"


def ended_outcome(state: SavedState) -> tuple[str, Any] | None:
    """How an instance (or a branch) ended, from its saved state: ("ok", result), ("err", exception),
    ("cancelled", exception); None while it has not."""
    status = state["status"]
    if status == COMPLETED:
        return "ok", state["result"]
    if status == FAILED:
        return "err", stored_error(state)
    if status == CANCELLED:
        err = state.get("error")
        return "cancelled", err if isinstance(err, BaseException) else InstanceCancelled(str(err))
    return None


def stored_error(state: SavedState) -> BaseException:
    err = state.get("error")
    return restore(err) if isinstance(err, BaseException) else DurableError(str(err))


def leaf_waits(wait: WaitInfo | None) -> list[WaitInfo]:
    """Every live wait of a paused instance: its own wait, or each paused branch's (nested groups flattened;
    each entry keeps its ``branch`` path). What screens list as "waiting for"."""
    if not wait:
        return []
    if wait.get("kind") != "branches":
        return [wait]
    out: list[WaitInfo] = []
    for inner in wait.get("waits") or ():
        out.extend(leaf_waits(inner))
    return out


def describe_waits(wait: WaitInfo | None) -> str:
    """A wait in words, for people and the history: ``event 'approve'``, ``timer until <iso time>``, ``child
    'id'``; each live wait of parallel branches, with its branch, separated by ``; ``."""
    parts = []
    for leaf in leaf_waits(wait):
        due = leaf.get("due")
        until = "" if due is None else datetime.fromtimestamp(due, tz=UTC).isoformat()
        kind = leaf.get("kind")
        if kind == "timer":
            text = f"timer until {until}"
        elif kind == "child":
            text = f"child {leaf.get('child')!r}"
        elif kind == "children":
            ids = leaf.get("children") or []
            text = f"{len(ids)} children" if len(ids) != 1 else f"child {ids[0]!r}"
            if leaf.get("mode") == "first":
                text = f"first of {text}"
        else:
            text = f"event {leaf.get('event')!r}" + (f" until {until}" if until else "")
        branch = leaf.get("branch")
        parts.append(f"{text} (branch {branch})" if branch is not None else text)
    return "; ".join(parts)
