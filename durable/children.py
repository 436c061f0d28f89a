"""Child processes: an instance that starts another and waits for it durably.

``child = await durable.start_child(program, *args, instance_id=...)`` starts
a separate instance of ``program`` linked to this one, and returns a handle;
``await child`` (later, or in ``durable.gather(child_a, child_b)``) returns the
child's result or raises its exception. Both are checkpointed awaits: after a
crash, a started child is not started again (its id is fixed by the parent's
state, and a start is idempotent by id) and a finished child's outcome is read
from the child's own state.

Where the child runs is the host's choice, through optional backend methods:

* ``start_child(parent_id, child_id, program, args, kwargs, on_parent_close)``
  creates it (the Django app inserts a row and hands it to a worker); without
  it the core runs the child right there until it ends or pauses;
* ``child_outcomes(ids)`` reads the children's ends in one call (without it,
  each child's state is loaded);
* ``cancel_child(child_id, reason)`` cancels one (without it, the core runs its
  cancellation right there).

* ``child_ended(parent_id, child_id)`` is told when a child ended (after its
  last checkpoint), to wake the parent; a host may instead do that in the
  child's last checkpoint (the Django app does, in the same transaction).

A parent that ends while children it did not await are live applies
each child's ``on_parent_close`` policy: ``"cancel"`` (the default), ``"abandon"``
(it runs on) or ``"wait"`` (the parent ends once they have).
"""

from __future__ import annotations

import inspect
from collections.abc import Generator, Iterable
from typing import Any

from .exceptions import DurableError, PauseForEventException
from .state import WaitInfo, ended_outcome
from .tracebacks import runtime_file
from .waits import Waits

runtime_file(__file__)  # frames of this module are the runtime's own (see durable.tracebacks)

POLICIES = ("cancel", "abandon", "wait")
#: What a parent paused on a child shows as the event it waits for (followed by the child's id).
CHILD_EVENT = "durable.child:"
#: Longest child instance id.
MAX_ID = 255
#: Most children one ``start_children`` starts.
MAX_CHILDREN = 10_000


class ChildHandle:
    """A started child instance: ``await handle`` waits for its end (result, or its exception raised)."""

    __slots__ = ("instance_id", "program")

    def __init__(self, instance_id: str, program: Any) -> None:
        self.instance_id = instance_id
        self.program = program

    def __await__(self) -> Generator[Any, None, Any]:
        raise RuntimeError(f"await on the handle of child {self.instance_id!r} must be written in the durable function "
                           "that started it (or in one it calls)")
        yield  # pragma: no cover

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChildHandle, (self.instance_id, self.program))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChildHandle) and other.instance_id == self.instance_id

    def __hash__(self) -> int:
        return hash(self.instance_id)

    def __repr__(self) -> str:
        return f"<durable child {self.instance_id!r}>"


class StartChild:
    """``start_child(...)`` / ``start_children(...)``: what the runtime turns into started children and their
    handles. ``items``: (args, kwargs, instance id or None) of each child; ``many``: a list of handles is wanted."""

    __slots__ = ("program", "items", "on_parent_close", "many")

    def __init__(self, program: Any, items: list[tuple[tuple[Any, ...], dict[str, Any], str | None]],
                 on_parent_close: str, many: bool = False) -> None:
        self.program = program
        self.items = items
        self.on_parent_close = on_parent_close
        self.many = many

    def __await__(self) -> Generator[Any, None, Any]:
        raise RuntimeError("durable.start_child() must be awaited directly inside a durable function")
        yield  # pragma: no cover


def start_child(program: Any, /, *args: Any, instance_id: str | None = None, on_parent_close: str = "cancel",
                **kwargs: Any) -> Any:
    """Start ``program(*args, **kwargs)`` as a child instance of this one; ``await`` it for a handle.

    ``instance_id`` (default: the parent's id + ``/child-<n>``) makes the start
    idempotent: a child of this parent with that id is not started again.
    ``on_parent_close``: what happens to the child if this instance ends
    before awaiting it: ``"cancel"``, ``"abandon"`` or ``"wait"``.
    """
    _check("start_child", program, on_parent_close, [instance_id])
    return StartChild(program, [(args, kwargs, instance_id)], on_parent_close)


def start_children(program: Any, /, arguments: Iterable[tuple[Any, ...]], *,
                   instance_ids: Iterable[str] | None = None, on_parent_close: str = "cancel") -> Any:
    """Start one child of ``program`` per tuple of positional ``arguments``, in one step; ``await`` it for the
    list of handles (a fan-out: one checkpoint and, in the Django app, one transaction for all of them).

    ``instance_ids`` (one per child) as in :func:`start_child`; by default each gets the next default id.
    """
    calls = list(arguments)
    if len(calls) > MAX_CHILDREN:
        raise ValueError(f"start_children(): {len(calls)} children in one step, at most {MAX_CHILDREN}")
    for args in calls:
        if not isinstance(args, tuple):
            raise TypeError(f"start_children() takes a tuple of positional arguments per child, got {args!r} "
                            f"(write ({args!r},) for one argument)")
    ids: list[str | None] = list(instance_ids) if instance_ids is not None else [None] * len(calls)
    if len(ids) != len(calls):
        raise ValueError(f"start_children(): {len(ids)} instance_ids for {len(calls)} children")
    if len(set(i for i in ids if i is not None)) != len([i for i in ids if i is not None]):
        raise ValueError("start_children(): the instance_ids are not unique")
    _check("start_children", program, on_parent_close, ids)
    return StartChild(program, [(args, {}, iid) for args, iid in zip(calls, ids)], on_parent_close, many=True)


def _check(what: str, program: Any, on_parent_close: str, ids: list[str | None]) -> None:
    if not getattr(type(program), "_durable_program", False):
        raise TypeError(f"{what}() takes a durable program (made by make_durable), got {program!r}")
    if on_parent_close not in POLICIES:
        raise ValueError(f"on_parent_close must be one of {', '.join(POLICIES)}, got {on_parent_close!r}")
    for instance_id in ids:
        if instance_id is not None and (not isinstance(instance_id, str) or not instance_id
                                        or len(instance_id) > MAX_ID):
            raise ValueError(f"a child's instance_id is a non-empty string of at most {MAX_ID} characters, "
                             f"got {instance_id!r}")


async def _maybe(value: Any) -> Any:
    return (await value) if inspect.isawaitable(value) else value


class Children(Waits):
    """Starting, awaiting and closing child instances (a mixin of :class:`~durable.DurableRuntime`)."""

    async def _start_child(self, req: StartChild) -> tuple[Any, BaseException | None]:
        state = self._live()
        seq = state.get("spawned", 0)
        where = "" if self.branch is None else f"{self.branch.replace('/', '-')}-"  # unique in parallel branches
        items = [(args, kwargs, iid or f"{self.instance_id}/child-{where}{seq + k}")
                 for k, (args, kwargs, iid) in enumerate(req.items)]
        if any(iid == self.instance_id for _, _, iid in items):
            return None, ValueError(f"a child cannot have its parent's instance_id {self.instance_id!r}")
        state["spawned"] = seq + len(items)
        try:
            await self._create_children(req, items)
        except DurableError as exc:
            return None, exc
        children = state.get("children")
        if children is None:
            children = state["children"] = {}
        for _, _, iid in items:
            children[iid] = {"on_parent_close": req.on_parent_close, "program": req.program}
        handles = [ChildHandle(iid, req.program) for _, _, iid in items]
        return (handles if req.many else handles[0]), None

    async def _create_children(self, req: StartChild, items: list[tuple[tuple[Any, ...], dict[str, Any], str]]) -> None:
        """The host creates them (``start_children``, else ``start_child`` per child); without a host hook the
        core runs each here."""
        many = getattr(self._io, "start_children", None)
        if many is not None and len(items) > 1:
            await _maybe(many(self.instance_id, req.program, items, req.on_parent_close))
            return
        one = getattr(self._io, "start_child", None)
        for args, kwargs, iid in items:
            if one is not None:
                await _maybe(one(self.instance_id, iid, req.program, args, kwargs, req.on_parent_close))
            else:
                await self._run_child_here(req, iid, args, kwargs)

    async def _run_child_here(self, req: StartChild, child_id: str, args: tuple[Any, ...],
                              kwargs: dict[str, Any]) -> None:
        """The core's start: the child runs in this process until it ends or pauses (idempotent by id)."""
        existing = await self._io.load_state(child_id)
        if existing is not None:
            parent = existing.get("parent")
            if not parent or parent[0] != self.instance_id:
                raise DurableError(f"instance {child_id!r} already exists and is not a child of {self.instance_id!r}")
            return
        child: Any = type(self)(self.backend, child_id, clock=self.clock)  # type: ignore[call-arg]
        child.parent = (self.instance_id, req.on_parent_close)
        try:
            await child.run(req.program, args, kwargs)
        except Exception:  # noqa: S110 - its end (or pause) is in its own state, read when it is awaited
            pass

    # -- awaiting children ----------------------------------------------------
    async def _outcomes(self, ids: list[str]) -> dict[str, tuple[str, Any]]:
        """child id -> ("ok", result) / ("err", exception) / ("cancelled", exception) for those that ended."""
        host = getattr(self._io, "child_outcomes", None)
        if host is not None:
            found: dict[str, tuple[str, Any]] = await _maybe(host(ids))
            return found
        out = {}
        for child_id in ids:
            state = await self._io.load_state(child_id)
            if state is None:
                raise DurableError(f"child instance {child_id!r} of {self.instance_id!r} does not exist")
            ended = ended_outcome(state)
            if ended is not None:
                out[child_id] = ended
        return out

    async def _check_children(self, wait: WaitInfo) -> tuple[Any, BaseException | None]:
        """(value, exception) once the awaited child(ren) ended; else raise the pause again."""
        ids = [wait["child"]] if wait["kind"] == "child" else list(wait.get("children") or ())
        found = await self._outcomes(ids)
        if wait["kind"] == "child" or wait.get("mode") == "first":
            done = next((c for c in ids if c in found), None)
            if done is not None:
                self._forget_children([done])
                kind, value = found[done]
                return (value, None) if kind == "ok" else (None, value)
        else:
            failed = next((c for c in ids if c in found and found[c][0] != "ok"), None)
            if failed is not None and not wait.get("return_exceptions"):
                self._forget_children([failed])
                return None, found[failed][1]
            if len(found) == len(ids):
                self._forget_children(ids)
                return [found[c][1] for c in ids], None
        raise PauseForEventException(CHILD_EVENT + ids[0], due=wait.get("due"), instance_id=self.instance_id)

    def _forget_children(self, ids: list[str]) -> None:
        """Children awaited to their end: no parent-close policy applies to them any more."""
        state = self._live()
        children = state.get("children")
        if children and any(c in children for c in ids):
            state["children"] = {c: info for c, info in children.items() if c not in ids}

    async def _await_children(self, wait: WaitInfo) -> tuple[Any, BaseException | None]:
        """Await one child or a group of them (``gather``/``first`` of handles only): now, or pause."""
        try:
            return await self._check_children(wait)
        except PauseForEventException as pause:
            await self._pause(wait, pause)
            raise  # pragma: no cover - _pause raises

    # -- the end of a child, the end of a parent ---------------------------------
    async def _notify_parent(self) -> None:
        """A child ended: tell the host, which wakes its parent (``child_ended``)."""
        parent = self._live().get("parent")
        hook = getattr(self._io, "child_ended", None)
        if parent and hook is not None:
            await _maybe(hook(parent[0], self.instance_id))

    async def _close_children(self) -> None:
        """This instance ends: cancel the children it did not await whose policy says so."""
        children = self._live().get("children") or {}
        doomed = [c for c, info in children.items() if info["on_parent_close"] == "cancel"]
        if not doomed:
            return
        ended = await self._outcomes(doomed) if not getattr(self._io, "cancel_child", None) else {}
        reason = f"its parent {self.instance_id!r} ended"
        for child_id in doomed:
            if child_id in ended:
                continue
            host = getattr(self._io, "cancel_child", None)
            if host is not None:
                await _maybe(host(child_id, reason))
                continue
            child: Any = type(self)(self.backend, child_id, clock=self.clock)  # type: ignore[call-arg]
            try:
                await child.cancel(children[child_id]["program"], reason)
            except Exception:  # noqa: S110 - the child's end is in its own state
                pass

    async def _close_later(self, outcome: tuple[str, Any]) -> None:
        """The program returned while children with the ``"wait"`` policy run: pause until they end (raises the
        pause), keeping the outcome (``state["closing"]``); returns when none is live."""
        waited = self._waited_children()
        found = await self._outcomes(waited)
        self._forget_children(list(found))
        live = [c for c in waited if c not in found]
        if not live:
            return
        state = self._live()
        state["closing"] = outcome
        await self._pause({"kind": "children", "due": None, "children": live, "mode": "all",
                           "return_exceptions": True},
                          PauseForEventException(CHILD_EVENT + live[0], instance_id=self.instance_id))

    def _waited_children(self) -> list[str]:
        """Children with the ``"wait"`` policy, not awaited: the instance ends once they have."""
        children = self._live().get("children") or {}
        return [c for c, info in children.items() if info["on_parent_close"] == "wait"]

