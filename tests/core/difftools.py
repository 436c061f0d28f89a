"""Running a program as plain Python and durably (with crashes, disk round-trips, fresh processes).

An *outcome* is ``("ok", result)`` or ``("err", exception type name, message)``. A *trace* is the list of side
effects the program left in ``trace_list`` (the outside world, which survives a simulated crash).

Parallel branches interleave on the event loop, and a native run (the oracle) and a durable run may interleave
them differently (a durable branch that waits for an event lets the others run to their end first). A trace
entry whose label reads ``"A|B|x"`` belongs to branch ``B`` nested in branch ``A``; a label without ``|``
belongs to the program itself. Two traces are compared by :func:`canonical`: entries of independent branches
commute, everything else keeps its order (for a program without branches it is the trace itself).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

from durable import (
    DiskStateStore,
    DurableBackend,
    DurableRuntime,
    InMemoryStateStore,
    PauseForEventException,
    TimerPause,
)

MAX_ROUNDS = 200


def branch_of(entry) -> tuple:
    """The branch a trace entry belongs to: the ``|``-separated prefix of its label (() for the program)."""
    label = entry[0] if isinstance(entry, tuple) and entry else None
    if not isinstance(label, str) or "|" not in label:
        return ()
    return tuple(label.split("|")[:-1])


def _dependent(a: tuple, b: tuple) -> bool:
    """Entries of branches ``a`` and ``b`` keep their order: the same branch, or one nested in the other."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def canonical(trace: list) -> list:
    """The trace with entries of independent branches reordered to one normal form.

    Entries of one branch keep their order, and so do a branch's and its nested branches' (and the
    program's, which orders everything): two traces have the same canonical form exactly when one is the
    other with independent entries swapped (the lexicographic normal form of a trace monoid).
    """
    rest = [(branch_of(e), e) for e in trace]
    if all(not tag for tag, _ in rest):
        return list(trace)
    out = []
    while rest:
        best = None
        for i, (tag, _) in enumerate(rest):
            if any(_dependent(tag, other) for other, _ in rest[:i]):
                continue
            if best is None or tag < rest[best][0]:
                best = i
        out.append(rest.pop(best)[1])
    return out


def has_branches(trace: list) -> bool:
    return any(branch_of(e) for e in trace)


def numbering(steps: list[tuple]) -> dict:
    """Step numbers of the checkpoints of each saved state (the instance's: None, each branch's), in order."""
    out: dict = {}
    for key, n in steps:
        out.setdefault(key, []).append(n)
    return out


def split_lost(trace: list, owners: list, cp_len: dict, kept: int = 0) -> tuple[list, list]:
    """(what survives a crash, what it lost), as (owner, entry) pairs: an entry is kept when the state it was
    made in (the instance, or its branch) saved a checkpoint after it (``cp_len``: state -> trace length at its
    last checkpoint), or when it is among the first ``kept``. Without branches: the trace up to the last
    checkpoint, and the rest."""
    saved, lost = [], []
    for i, (entry, owner) in enumerate(zip(trace, owners, strict=True)):
        (saved if i < kept or i < cp_len.get(owner, 0) else lost).append((owner, entry))
    return saved, lost


def awaited_events(wait) -> list[str]:
    """The event names a saved wait waits for (every paused branch's, for a group of branches)."""
    if not wait:
        return []
    if wait.get("kind") == "branches":
        return [name for w in wait.get("waits", []) for name in awaited_events(w)]
    if wait.get("kind") == "event" and wait.get("event"):
        return [wait["event"]]
    return []


def outcome_of(fn):
    """Run the coroutine function ``fn()`` to an outcome."""
    try:
        return ("ok", asyncio.run(fn()))
    except Exception as exc:  # noqa: BLE001 - the outcome is compared, not handled
        return ("err", type(exc).__name__, str(exc))


class Clock:
    """A runtime clock that starts at the real time and jumps to a timer's due time when asked (no sleeping)."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def skip_to(self, due: float) -> None:
        self.now = max(self.now, due)


async def drive(program, backend, iid, args, kwargs, events, on_checkpoint=None, fresh_backend=None, clock=None):
    """Run an instance until it completes or fails, publishing each awaited event when it pauses (every
    event a paused branch waits for, when branches run).

    A durable timer (a retry's backoff) is skipped: the runtime's clock jumps to its due time.
    ``fresh_backend()`` (optional) gives a new backend object for every round after a pause; ``clock`` (optional)
    a :class:`Clock` shared with the caller. Returns the program's result (raises its error).
    """
    clock = clock or Clock()
    for _ in range(MAX_ROUNDS):
        rt = DurableRuntime(backend, iid, on_checkpoint=on_checkpoint, clock=clock)
        try:
            return await rt.run(program, args, kwargs)
        except TimerPause as pause:
            assert pause.due is not None and pause.due > clock.now, pause
            clock.skip_to(pause.due)
            if fresh_backend is not None:
                backend = fresh_backend()
        except PauseForEventException as pause:
            state = await backend.load_state(iid)
            names = [name for name in awaited_events((state or {}).get("wait")) if name in events]
            if not names and pause.due is not None and pause.due > clock.now:
                clock.skip_to(pause.due)  # branches wait for a timer, and for events that never come
            elif not names:
                if pause.event not in events:
                    raise AssertionError(f"paused for unexpected event {pause.event!r}") from None
                names = [pause.event]
            for name in names:
                backend.publish_event(iid, name, events[name])
            if fresh_backend is not None:
                backend = fresh_backend()
    raise AssertionError("instance did not finish")


async def run_skipping_timers(program, backend, iid, args, kwargs, on_checkpoint=None):
    """Run an instance to its end or its first event pause; durable timers (retry backoffs) are skipped."""
    clock = Clock()
    for _ in range(MAX_ROUNDS):
        try:
            return await DurableRuntime(backend, iid, on_checkpoint=on_checkpoint, clock=clock).run(program, args,
                                                                                                     kwargs)
        except TimerPause as pause:
            clock.skip_to(pause.due)
    raise AssertionError("instance did not finish")


def new_id() -> str:
    return "i" + uuid.uuid4().hex[:12]


def memory_backend_factory():
    store = InMemoryStateStore()
    return lambda: DurableBackend(store)


def disk_backend_factory(path: Path):
    path.mkdir(parents=True, exist_ok=True)
    return lambda: DurableBackend(DiskStateStore(path))


_CHILD = textwrap.dedent('''
    import asyncio, importlib, json, sys
    sys.path[:0] = {syspath!r}
    importlib.import_module({module!r})  # the saved frames name their functions by module and qualname
    corpus = importlib.import_module({corpus!r})
    tools = importlib.import_module({tools!r})
    from durable import DiskStateStore, DurableBackend
    args, kwargs, events = {args!r}, {kwargs!r}, {events!r}
    store_path, iid = {store!r}, {iid!r}
    corpus.reset()
    make = lambda: DurableBackend(DiskStateStore(store_path))
    out = tools.outcome_of(lambda: tools.drive(None, make(), iid, args, kwargs, events, fresh_backend=make))
    print(json.dumps({{"outcome": repr(out), "trace": repr(corpus.TRACE)}}))
''')


def resume_in_subprocess(module, args, kwargs, events, store: Path, iid: str, corpus=None) -> tuple[str, str]:
    """Continue instance ``iid`` from the disk store in a fresh interpreter; return repr(outcome), repr(trace).

    ``module`` is the program's module (imported first in the child); ``corpus`` the module holding ``TRACE``
    (default: ``module`` itself).
    """
    corpus = corpus or module
    paths = []
    for mod in (module, corpus):
        root = Path(mod.__file__).resolve().parents[mod.__name__.count(".")]
        if str(root) not in paths:
            paths.append(str(root))
    here = Path(__file__).resolve()
    tools = __name__
    code = _CHILD.format(syspath=paths, module=module.__name__, corpus=corpus.__name__, tools=tools, args=args,
                         kwargs=kwargs, events=events, store=str(store), iid=iid)
    root = here.parents[2]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                         cwd=str(root))
    if out.returncode != 0:
        raise AssertionError(f"child failed:\n{out.stderr[-3000:]}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return data["outcome"], data["trace"]
