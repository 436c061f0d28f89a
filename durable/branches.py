"""Parallel branches: a group of call stacks that run, pause and end on their own.

``await durable.gather(a(), b())`` in durable code starts a *group*: each
awaitable becomes a branch, driven by a runtime of its own (the same class,
with ``branch`` set to its path, e.g. ``"0.1"``: group 0, awaitable 1;
nested groups add ``/``). A branch checkpoints only its own call stack, under
its own key (the backend's ``save_branch``), so a checkpoint costs the same
with one live branch or a hundred. Its steps run concurrently with the other
branches' (asyncio tasks in the worker), and it pauses on an event or a timer
without holding the others up.

The awaiting frame's runtime (the *parent*) records the group in its state
(``state["group"]``: the branches and how each starts) in one checkpoint
before any branch runs, then waits for the branches:

* a failure (``gather``) or the first end (``first``) *decides* the group: the
  parent saves which branch decided it, then cancels the others (each gets
  :class:`~durable.InstanceCancelled` at its current await; its ``finally``
  blocks run, checkpointed like any code);
* when every branch has ended, the outcome is raised or returned at the
  parent's await, and the branches' states are deleted after the parent's next
  checkpoint: the saved state holds only live branches;
* when some branches are paused and none can go on, the parent pauses too,
  with a ``"branches"`` wait that lists every paused branch's wait (its due
  time is the earliest). Resumed, it loads the branches and continues those
  whose wait is over.

Branches share the host's resources. A host whose steps write in one
transaction that the next checkpoint commits (the Django app: ``db_step``)
marks such a step *exclusive* (``durable_exclusive = True`` on the callable):
in a branch, it runs only while no other branch has an exclusive step that is
not yet checkpointed, so one branch's checkpoint never commits another
branch's writes. Other steps run concurrently. A failed step's writes are not
dropped by the backend in a branch (``discard_step_writes`` would drop the
other branches' too); an exclusive step rolls back its own.

A cancellation of the instance reaches every live branch; the deadline is
raised in each (each branch's waits end at it). A crash loses nothing: a
branch resumes from its own last checkpoint, one that never saved one starts
again from its call.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .attempts import Attempts
from .children import CHILD_EVENT, ChildHandle, Children
from .exceptions import DurableError, PauseForEventException, TimerPause
from .gathering import GatherRequest, _ready, scrub
from .stack import CallStack, FunctionCall
from .state import (
    CANCELLED,
    FAILED,
    PAUSED,
    GroupInfo,
    SavedState,
    WaitInfo,
    branch_key,
    current_branch,
    ended_outcome,
    leaf_waits,
    reopen_failed,
)
from .tracebacks import runtime_file

runtime_file(__file__)  # frames of this module are the runtime's own (see durable.tracebacks)

#: A branch's outcome: ("ok", value), ("err", exception), ("cancelled", exception) or ("paused", None).
Outcome = tuple[str, Any]


def exclusive(func: Any) -> bool:
    """Is ``func`` (or the function of a :func:`durable.step`) an exclusive step (see the module's docstring)?"""
    return bool(getattr(func, "durable_exclusive", False) or getattr(getattr(func, "fn", None), "durable_exclusive",
                                                                       False))


async def branch_root(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The outermost frame of every branch: the branch's call, awaited as durable code awaits anything."""
    return await func(*args, **kwargs)


class Branches(Attempts, Children):
    """Groups of parallel branches (a mixin of :class:`~durable.DurableRuntime`)."""

    #: This runtime's branch path; None for the instance itself.
    branch: str | None
    #: The runtime of the instance (itself when it is not a branch): what ``set_status()`` writes to.
    root: Any
    #: The runtimes of the running group's branches, by path (None when no group runs).
    _subs: dict[str, Any] | None
    #: Branch states to delete after the next checkpoint (their group ended).
    _dropped: list[str] | None
    #: Set once this runtime saved its last checkpoint (completed, failed or cancelled).
    _ended: bool
    _holding: bool
    _lock: asyncio.Lock | None
    _paused_on: WaitInfo | None

    if TYPE_CHECKING:  # defined by DurableRuntime and its other mixins
        def _arm(self) -> None: ...
        async def _drive(self, throw: BaseException | None) -> Any: ...
        async def _continue(self, state: SavedState) -> Any: ...

    # -- storage: the instance's own key, or the branch's ----------------------------
    async def _load_own(self) -> SavedState | None:
        if self.branch is None:
            return await self._io.load_state(self.instance_id)
        load = getattr(self._io, "load_branch", None)
        if load is not None:
            loaded: SavedState | None = await load(self.instance_id, self.branch)
            return loaded
        return await self._io.load_state(branch_key(self.instance_id, self.branch))

    async def _save_branch(self, state: SavedState) -> None:
        save = getattr(self._io, "save_branch", None)
        assert self.branch is not None
        if save is not None:
            await save(self.instance_id, self.branch, state)
        else:
            await self._io.save_state(branch_key(self.instance_id, self.branch), state)

    async def _drop_branches(self) -> None:
        paths, self._dropped = self._dropped, None
        drop = getattr(self._io, "delete_branches", None)
        if drop is not None and paths:
            await drop(self.instance_id, paths)

    async def _hold(self) -> None:
        """Wait for the instance's lock of exclusive steps; held until this branch's next checkpoint."""
        if self._holding:
            return
        root = self.root
        if root._lock is None:
            root._lock = asyncio.Lock()
        await root._lock.acquire()
        self._holding = True

    def _release(self) -> None:
        self._holding = False
        self.root._lock.release()

    def request_cancel(self, reason: str = "") -> None:
        """Raise :class:`~durable.InstanceCancelled` in the program at its next await, and in every live branch
        (safe from any thread)."""
        super().request_cancel(reason)  # type: ignore[misc]  # Interrupts.request_cancel, later in the MRO
        for sub in list((self._subs or {}).values()):
            if not sub._ended:
                sub.request_cancel(self._cancel or reason)

    # -- a new group ----------------------------------------------------------
    async def _group(self, req: GatherRequest) -> tuple[Any, BaseException | None]:
        """Run ``req``'s awaitables as branches: (value, None) or (None, exception to raise at the await)."""
        try:
            calls = req.calls()
        except Exception as exc:
            return None, exc
        state = self._live()
        scrub(state["stack"].frames[-1].locals, req.aws)
        seq = state.get("groups", 0)
        state["groups"] = seq + 1
        prefix = f"{self.branch}/" if self.branch is not None else ""
        paths = [f"{prefix}{seq}.{i}" for i in range(len(calls))]
        group: GroupInfo = {"mode": req.mode, "return_exceptions": req.return_exceptions, "branches": paths,
                            "calls": calls, "decided": None}
        if not calls:
            return [], None
        if all(func is _ready and args[0].__class__ is ChildHandle for func, args, _ in calls):
            # children only: one wait on all of them, no branch (see durable.children)
            return await self._await_children({
                "kind": "children", "due": None, "children": [args[0].instance_id for _, args, _ in calls],
                "mode": req.mode, "return_exceptions": req.return_exceptions})
        state["group"] = group
        await self._checkpoint()  # the group is on record before any branch runs
        runs = {path: self._sub(path).start_branch(call) for path, call in zip(paths, calls)}
        return await self._run_group(group, runs, {})

    async def _resume_group(self) -> tuple[Any, BaseException | None]:
        """Go on with the group the saved state records: load each branch, continue those not ended."""
        state = self._live()
        group = state.get("group")
        assert group is not None
        runs: dict[str, Any] = {}
        outcomes: dict[str, Outcome] = {}
        live: list[tuple[Any, Any, SavedState | None]] = []
        for path, call in zip(group["branches"], group["calls"]):
            sub = self._sub(path)
            loaded = await sub._load_own()
            ended = None if loaded is None else ended_outcome(sub._loaded(loaded))
            if ended is not None:
                outcomes[path] = ended
                sub._ended = True
                self._adopt_children(sub)
            else:
                live.append((sub, call, loaded))
        for path in group["branches"]:
            # a branch that ended before a crash, before the group recorded that it decided: it decides now
            if group["decided"] is None and path in outcomes and _decides(group, outcomes[path]):
                group["decided"] = path
                await self._checkpoint()
        cancel = self._group_cancel(group)
        for sub, call, loaded in live:
            runs[sub.branch] = (sub.start_branch(call, cancel) if loaded is None
                                else sub.continue_branch(loaded, cancel))
        return await self._run_group(group, runs, outcomes)

    async def _reopen_group(self) -> None:
        """A retry of an instance a branch's failure ended: that branch goes on from its last checkpoint, the
        branches it cancelled start over from their calls, those that completed keep their results."""
        group = self._live().get("group")
        assert group is not None
        decided = group["decided"]
        group["decided"] = None
        restart = []
        for path in group["branches"]:
            sub = self._sub(path)
            loaded = await sub._load_own()
            if loaded is None:
                continue
            status = loaded["status"]
            if status == FAILED and path == decided:
                await sub._save_branch(reopen_failed(loaded, f"{self.instance_id} branch {path}"))
            elif status in (FAILED, CANCELLED):
                restart.append(path)
        self._subs = None
        if restart:
            drop = getattr(self._io, "delete_branches", None)
            if drop is None:
                raise DurableError(f"{type(self.backend).__name__} cannot delete branch states: the branches a "
                                   "failed branch cancelled cannot start over")
            await drop(self.instance_id, restart)

    def _sub(self, path: str) -> Any:
        """A runtime of this instance's class for branch ``path`` (a DurableRuntime)."""
        sub: Any = type(self)(self.backend, self.instance_id, clock=self.clock,  # type: ignore[call-arg]
                                         on_checkpoint=self.on_checkpoint, migrate=getattr(self, "migrate", None))
        sub.branch = path
        sub.root = self.root
        sub.retry = self.retry
        deadline = self._live().get("deadline")
        sub.deadline = None if self._live().get("deadline_hit") else deadline
        if self._subs is None:
            self._subs = {}
        self._subs[path] = sub
        return sub

    def _adopt_children(self, sub: Any) -> None:
        """A branch ended: the children it started and did not await are this call stack's now (their
        parent-close policy applies when the instance ends; saved with this stack's next checkpoint)."""
        children = sub._live().get("children")
        if children:
            state = self._live()
            state["children"] = {**(state.get("children") or {}), **children}

    def _group_cancel(self, group: GroupInfo) -> str | None:
        """The reason to cancel the group's live branches with, if they are to be cancelled."""
        if self._cancel is not None:
            return self._cancel
        decided = group["decided"]
        if decided is not None:
            return f"branch {decided} of instance {self.instance_id!r} decided its group"
        return None

    # -- driving a group ------------------------------------------------------
    async def _run_group(self, group: GroupInfo, runs: dict[str, Any],
                         outcomes: dict[str, Outcome]) -> tuple[Any, BaseException | None]:
        subs = self._subs or {}
        pending: dict[asyncio.Future[Outcome], str] = {}
        ended: asyncio.Queue[asyncio.Future[Outcome]] = asyncio.Queue()  # tasks in the order they end: O(1) each

        def drive(todo: dict[str, Any]) -> None:
            for path, run in todo.items():
                task = asyncio.ensure_future(_outcome(subs[path], run))
                task.add_done_callback(ended.put_nowait)
                pending[task] = path

        try:
            while True:
                drive(runs)
                while pending:
                    task = await ended.get()
                    path = pending.pop(task)
                    outcomes[path] = task.result()  # a crash (not the branch's error) propagates from here
                    sub = subs[path]
                    if outcomes[path][0] != "paused":
                        self._adopt_children(sub)
                    if outcomes[path][0] == "paused" and sub._cancel is not None:
                        # cancelled while it was beginning its wait: the cancellation is raised at that wait now
                        drive({path: sub.cancel_branch(sub._cancel)})
                        continue
                    if group["decided"] is None and _decides(group, outcomes[path]):
                        group["decided"] = path
                        await self._checkpoint()  # which branch decided, on record before the others stop
                        drive(self._cancel_others(group, outcomes, pending))
                if self._cancel is not None or (self._deadline is not None and self.clock() >= self._deadline):
                    # the instance is cancelled (or past its deadline): paused branches are cancelled too
                    reason = self._cancel or f"the deadline of instance {self.instance_id!r} passed"
                    runs = {path: sub.cancel_branch(reason) for path, sub in subs.items()
                            if outcomes.get(path, ("paused",))[0] == "paused" and not sub._cancelled_by_group}
                    if runs:
                        continue
                break
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        paused = [path for path in group["branches"] if outcomes[path][0] == "paused"]
        if paused:
            await self._pause_group([(path, subs[path]) for path in paused])
        self._subs = None
        state = self._live()
        state["group"] = None
        self._dropped = list(group["branches"])
        if self._watch:
            stop = self._interruption()
            if stop is not None:  # raised at the await instead of the group's outcome
                return None, stop
        return _resolve(group, outcomes)

    def _cancel_others(self, group: GroupInfo, outcomes: dict[str, Outcome],
                       pending: dict[asyncio.Future[Outcome], str]) -> dict[str, Any]:
        """Cancel the branches still live once one decided the group: running ones at their next await, paused
        ones now (returned: runs to drive)."""
        reason = self._group_cancel(group) or ""
        running = set(pending.values())
        runs = {}
        for path, sub in (self._subs or {}).items():
            if sub._ended or path == group["decided"]:
                continue
            if path in running:
                if sub._cancel is None and (sub.state or {}).get("cancel") is None:  # not while it cleans up
                    sub.request_cancel(reason)
            elif outcomes.get(path, ("paused",))[0] == "paused":
                runs[path] = sub.cancel_branch(reason)
        return runs

    async def _pause_group(self, paused: list[tuple[str, Any]]) -> None:
        """Every live branch is paused: pause the instance on all their waits (raises the pause)."""
        waits: list[WaitInfo] = []
        for path, sub in paused:
            wait = dict(sub._live().get("wait") or {"kind": "event", "due": None})
            wait["branch"] = path
            waits.append(wait)  # type: ignore[arg-type]
        dues = [w["due"] for w in waits if w.get("due") is not None]
        due = min(dues) if dues else None  # type: ignore[type-var]
        events = [w.get("event") or f"{CHILD_EVENT}{w.get('child') or (w.get('children') or ['?'])[0]}"
                  for w in leaf_waits({"kind": "branches", "due": due, "waits": waits}) if w["kind"] != "timer"]
        pause = (TimerPause(None, due=due, instance_id=self.instance_id) if not events
                 else PauseForEventException(events[0], due=due, instance_id=self.instance_id))
        self._subs = None
        if self._cancel is not None:  # delivered to the branches: on record, so that a second cancel forces the end
            self._live()["cancel"] = self._cancel
        before = self._paused_on
        if before is not None and self._cancel is None and before.get("waits") == waits:
            state = self._live()  # resumed, and no branch moved: nothing to save
            state["wait"], state["status"] = before, PAUSED
            pause.due = before.get("due")
            raise pause
        await self._pause({"kind": "branches", "due": due, "waits": waits}, pause)

    # -- a branch's own entry points -------------------------------------------
    _cancelled_by_group = False

    async def start_branch(self, call: tuple[Any, tuple[Any, ...], dict[str, Any]], cancel: str | None = None) -> Any:
        """Run a new branch from its call."""
        from_root = self.root._live()
        self._start = (branch_root, call, {})
        frame = FunctionCall.start(branch_root, call)
        self.state = {"format": 1, "status": "running", "program": from_root["program"], "stack": CallStack([frame]),
                      "wait": None, "result": None, "error": None, "steps": 0}
        if self.deadline is not None:
            self.state["deadline"] = self.deadline
        if cancel is not None:
            self.request_cancel(cancel)
            self._cancelled_by_group = True
        self._arm()
        return await self._drive(None)

    async def continue_branch(self, state: SavedState, cancel: str | None = None) -> Any:
        """Go on with a branch loaded from its last checkpoint."""
        if cancel is not None and state.get("cancel") is None:
            self.request_cancel(cancel)
            self._cancelled_by_group = True
        return await self._continue(state)

    async def cancel_branch(self, reason: str) -> Any:
        """Cancel a paused branch: raise the cancellation at its wait, run its cleanup."""
        self._cancelled_by_group = True
        state = self._live()
        if state.get("cancel") is None:
            self.request_cancel(reason)
        return await self._continue(state)


async def _outcome(sub: Any, run: Any) -> Outcome:
    """Drive one branch to its end or its pause. A crash (an error that is not the branch's outcome, e.g. a
    failed write) propagates."""
    token = current_branch.set(sub.branch)
    try:
        return "ok", await run
    except PauseForEventException:
        return "paused", None
    except BaseException as exc:
        if sub._ended:
            return ("cancelled" if sub._live()["status"] == CANCELLED else "err"), exc
        raise
    finally:
        current_branch.reset(token)


def _decides(group: GroupInfo, outcome: Outcome) -> bool:
    kind = outcome[0]
    if kind == "paused":
        return False
    if group["mode"] == "first":
        return True
    return kind != "ok" and not group["return_exceptions"]


def _resolve(group: GroupInfo, outcomes: dict[str, Outcome]) -> tuple[Any, BaseException | None]:
    decided = group["decided"]
    if decided is not None:
        kind, value = outcomes[decided]
        return (value, None) if kind == "ok" else (None, value)
    return [outcomes[path][1] for path in group["branches"]], None
