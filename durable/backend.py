"""Orchestration backends: where state is saved and events are delivered."""

from __future__ import annotations

import inspect
import pickle
import threading
import warnings
from abc import ABC, abstractmethod
from typing import Any, TypedDict

from . import signing
from .exceptions import PauseForEventException, UnsignedStateWarning
from .state import SavedState, branch_key, current_branch
from .store import INBOX_PREFIX as _INBOX
from .store import STATE_PREFIX as _STATE
from .store import BlobStore, InMemoryStateStore, StateStore, blob_fast_path, check_store

#: Prefix of the blob keys of kept checkpoints: ``history:<instance id>:<step, 12 digits>``.
_HISTORY = "history:"


class _Inbox(TypedDict):
    """An instance's events, signed under one key: (sequence number, name, payload), and the next number."""

    next: int
    events: list[tuple[int, str, Any]]


class OrchestrationBackend(ABC):
    """What the runtime needs from an orchestration layer.

    ``wait_for_event`` returns the payload of a published, not yet consumed
    event named ``event_name`` (consuming it), or raises
    :class:`PauseForEventException` when there is none.
    """

    @abstractmethod
    async def load_state(self, instance_id: str) -> SavedState | None:
        """The last saved state of the instance, or ``None`` if it never ran."""

    @abstractmethod
    async def save_state(self, instance_id: str, state: SavedState) -> None:
        """Persist ``state``; it replaces the previous checkpoint."""

    @abstractmethod
    async def wait_for_event(self, instance_id: str, event_name: str) -> Any:
        """Consume ``event_name`` and return its payload, or raise a pause."""

    async def wait_for_answer(self, instance_id: str, event_name: str, meta: dict[str, Any]) -> Any:
        """``wait_for_event`` for a wait that carries metadata (``wait_for_event(name, **meta)``).

        The runtime calls this instead of ``wait_for_event`` when the wait has
        metadata, so a backend that gives it a meaning (who may answer, the
        form the payload must fit) can refuse events that do not fit it. The
        default ignores the metadata.
        """
        return await self.wait_for_event(instance_id, event_name)

    def publish_event(self, instance_id: str, event_name: str, payload: Any = None) -> None:
        """Deliver an event to an instance (kept until the instance waits for it)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement publish_event")


_BACKEND_METHODS = ("load_state", "save_state", "wait_for_event")
#: Backend class -> are its three methods coroutine functions (checked once per class).
_native_backends: dict[type, bool] = {}


def as_async_backend(backend: object) -> OrchestrationBackend:
    """``backend`` itself, or an adapter when some of its methods are plain ``def`` (the runtime awaits them).

    Raises a :class:`TypeError` naming the contract when ``backend`` lacks one
    of ``load_state``, ``save_state``, ``wait_for_event``. Checked once per class.
    """
    cls = type(backend)
    native = _native_backends.get(cls)
    if native is None:
        missing = [name for name in _BACKEND_METHODS if not callable(getattr(backend, name, None))]
        if missing:
            hint = ""
            if isinstance(backend, StateStore) or callable(getattr(backend, "save", None)):
                hint = "; a StateStore goes inside a backend: DurableBackend(state_store=...)"
            raise TypeError(
                f"{cls.__name__} is not an OrchestrationBackend (missing {', '.join(missing)}): a backend needs "
                "async load_state(instance_id) -> dict | None, async save_state(instance_id, state: dict) and "
                f"async wait_for_event(instance_id, event_name){hint}")
        native = all(inspect.iscoroutinefunction(getattr(backend, name)) for name in _BACKEND_METHODS)
        _native_backends[cls] = native
    return backend if native else _AwaitingBackend(backend)  # type: ignore[return-value]


async def _result(value: Any) -> Any:
    return (await value) if inspect.isawaitable(value) else value


class _AwaitingBackend:
    """A backend whose methods may be plain ``def``: awaits what they return only when it is awaitable."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def load_state(self, instance_id: str) -> Any:
        return await _result(self.inner.load_state(instance_id))

    async def save_state(self, instance_id: str, state: Any) -> None:
        await _result(self.inner.save_state(instance_id, state))

    async def wait_for_event(self, instance_id: str, event_name: str) -> Any:
        return await _result(self.inner.wait_for_event(instance_id, event_name))

    def __getattr__(self, name: str) -> Any:
        """The inner backend's optional methods (``discard_step_writes``, the history methods)."""
        return getattr(self.inner, name)

    async def wait_for_answer(self, instance_id: str, event_name: str, meta: dict[str, Any]) -> Any:
        answer = getattr(self.inner, "wait_for_answer", None)
        if answer is None:
            return await self.wait_for_event(instance_id, event_name)
        return await _result(answer(instance_id, event_name, meta))


#: Set once this process has warned about an unsigned backend reading a persistent store.
_warned_unsigned = False


def _warn_unsigned(store: StateStore) -> None:
    """Warn once per process that unsigned state is being read from a store others may write to."""
    global _warned_unsigned
    if _warned_unsigned or isinstance(store, InMemoryStateStore):
        return
    _warned_unsigned = True
    warnings.warn(
        f"DurableBackend without a signing_key is reading state from {type(store).__name__}: blobs are unpickled "
        "without any check, so whoever can write to that store can run code in this process. Pass "
        "DurableBackend(store, signing_key=...) to verify every blob before it is unpickled.",
        UnsignedStateWarning, stacklevel=4)


class DurableBackend(OrchestrationBackend):
    """The stock backend: state in a :class:`StateStore`, events in an inbox.

    ``state_store`` is any :class:`StateStore`: the seed's dict contract
    (``load``/``save``, async or not), or a :class:`BlobStore` such as
    :class:`InMemoryStateStore` and :class:`DiskStateStore`, which the backend
    pickles and signs for itself (its fast path, see docs/stores.md). The
    inbox lives in the store when it is a :class:`BlobStore`, else in this
    backend's memory (as in the seed, where events are an in-memory bus).

    Events are numbered per instance. A consumed event is recorded in the
    instance's next checkpoint before it is removed from the inbox, so a crash
    between the two neither loses nor repeats it. That record is the
    backend's own: the caller's state dict is never changed, and
    :meth:`load_state` returns what :meth:`save_state` was given.
    """

    def __init__(self, state_store: StateStore | None = None, signing_key: bytes | str | None = None, *,
                 store: StateStore | None = None) -> None:
        if store is not None:
            if state_store is not None:
                raise TypeError("DurableBackend() got both state_store= and store= (store= is another name for it)")
            state_store = store
        if state_store is None:
            state_store = InMemoryStateStore()
        check_store(state_store)
        self.store: StateStore = state_store
        self.signing_key = signing.coerce_key(signing_key)
        self._fast = blob_fast_path(state_store)
        if self.signing_key is not None and not self._fast:
            raise TypeError(
                f"DurableBackend(signing_key=...) signs the blobs it writes, but {type(state_store).__name__} "
                "serializes the state itself (it implements or overrides load/save); sign in the store, or make it "
                "a durable.BlobStore that overrides load_blob/save_blob only")
        #: Where the event inboxes are kept: the store's blobs, or this process's memory.
        self._blobs: BlobStore = state_store if isinstance(state_store, BlobStore) else InMemoryStateStore()
        self._consumed: dict[str, set[int]] = {}
        #: (instance id, branch) -> the events a parallel branch took since its last checkpoint (a subset of
        #: ``_consumed[instance id]``): recorded by that branch's checkpoint, not by the instance's.
        self._taken: dict[tuple[str, str], set[int]] = {}
        self._lock = threading.RLock()

    @property
    def state_store(self) -> StateStore:
        """The store the state is kept in (the seed's name for :attr:`store`)."""
        return self.store

    # -- state ------------------------------------------------------------
    async def load_state(self, instance_id: str) -> SavedState | None:
        if self._fast:
            return self.load_state_sync(instance_id)
        store: Any = self.store  # any object with load/save, async or not
        loaded = store.load(_check_id(instance_id))
        if inspect.isawaitable(loaded):
            loaded = await loaded
        return self._restored(instance_id, loaded, copy=True)

    def load_state_sync(self, instance_id: str) -> SavedState | None:
        """:meth:`load_state` without an event loop (a store whose ``load`` is async cannot)."""
        if not self._fast:
            store: Any = self.store
            loaded = store.load(_check_id(instance_id))
            if inspect.isawaitable(loaded):
                getattr(loaded, "close", lambda: None)()
                raise TypeError(f"{type(self.store).__name__}.load is async: use `await backend.load_state(...)`")
            return self._restored(instance_id, loaded, copy=True)
        blob = self._blobs.load_blob(_STATE + _check_id(instance_id))
        if blob is None:
            return self._restored(instance_id, None, copy=False)
        if self.signing_key is None:
            _warn_unsigned(self._blobs)
        return self._restored(instance_id, signing.loads(blob, self.signing_key), copy=False)

    def _restored(self, instance_id: str, state: Any, copy: bool) -> SavedState | None:
        """The loaded state without the backend's record of consumed events (which it takes)."""
        if state is None:
            self._consumed.pop(instance_id, None)
            return None
        if not isinstance(state, dict):
            hint = (" (a store of bytes subclasses durable.BlobStore and implements load_blob/save_blob)"
                    if isinstance(state, (bytes, bytearray, memoryview)) else "")
            raise TypeError(f"{type(self.store).__name__}.load returned {type(state).__name__}: StateStore.load "
                            f"returns the dict save() was given, or None{hint}")
        if "consumed" in state:
            if copy:  # the store's own object: leave it as it is
                state = dict(state)
            done = set(state.pop("consumed") or ())
        else:
            done = set()
        self._consumed[instance_id] = done
        if done:
            self._prune(instance_id, done)
        restored: SavedState = state
        return restored

    async def save_state(self, instance_id: str, state: SavedState) -> None:
        done = self._consumed.get(instance_id)
        if done and self._taken:  # events a branch took are recorded by the branch's checkpoint
            done = done.difference(*(s for (iid, _), s in self._taken.items() if iid == instance_id))
        # the events this step consumed go into the stored copy only: the caller's dict stays as it is
        blob = None
        if self._fast:
            blob = signing.dumps({**state, "consumed": sorted(done)} if done else state, self.signing_key)
            self._blobs.save_blob(_STATE + _check_id(instance_id), blob)
        else:
            # an inbox in this process's memory dies with it: the record is needed only beside a stored inbox
            kept = {**state, "consumed": sorted(done)} if done and self._blobs is self.store else state
            store: Any = self.store
            saved = store.save(_check_id(instance_id), kept)
            if saved is not None and inspect.isawaitable(saved):
                await saved
        if done:
            self._prune(instance_id, done)
            self._consumed[instance_id] -= done
        keep = state.get("history")
        if keep is not None:
            self._keep_checkpoint(instance_id, state, keep, blob)

    # -- parallel branches (see durable.branches) ------------------------------
    async def load_branch(self, instance_id: str, branch: str) -> SavedState | None:
        """The last checkpoint of a parallel branch of the instance, or None."""
        key = branch_key(_check_id(instance_id), branch)
        if self._fast:
            blob = self._blobs.load_blob(_STATE + key)
            state = None if blob is None else signing.loads(blob, self.signing_key)
        else:
            store: Any = self.store
            state = store.load(key)
            if inspect.isawaitable(state):
                state = await state
            state = None if state is None else dict(state)
        if state is None:
            return None
        done = set(state.pop("consumed", None) or ())
        if done:  # a crash came between the branch's checkpoint and the removal of the events it took
            self._prune(instance_id, done)
        loaded: SavedState = state
        return loaded

    async def save_branch(self, instance_id: str, branch: str, state: SavedState) -> None:
        """Save a parallel branch's checkpoint, with the events it took (then removed from the inbox)."""
        key = branch_key(_check_id(instance_id), branch)
        taken = self._taken.pop((instance_id, branch), None)
        if self._fast:
            self._blobs.save_blob(_STATE + key, signing.dumps({**state, "consumed": sorted(taken)} if taken else state,
                                                              self.signing_key))
        else:
            store: Any = self.store
            saved = store.save(key, {**state, "consumed": sorted(taken)} if taken and self._blobs is self.store
                               else state)
            if saved is not None and inspect.isawaitable(saved):
                await saved
        if taken:
            self._prune(instance_id, taken)
            self._consumed.get(instance_id, set()).difference_update(taken)

    async def delete_branches(self, instance_id: str, branches: list[str]) -> None:
        """Forget the states of branches whose group ended (a store that cannot delete keeps them)."""
        if isinstance(self.store, BlobStore):
            for branch in branches:
                self.store.delete_blob(self.store.state_key(branch_key(instance_id, branch)))
                self._taken.pop((instance_id, branch), None)

    # -- checkpoint history (see durable.history) ---------------------------
    def _keep_checkpoint(self, instance_id: str, state: SavedState, keep: int, blob: bytes | None) -> None:
        """Keep a copy of this checkpoint under its step number; drop the one that falls out of the last ``keep``."""
        step = state.get("steps", 0)
        if blob is None:
            blob = signing.dumps(state, self.signing_key)
        self._blobs.save_blob(f"{_HISTORY}{instance_id}:{step:012d}", blob)
        if keep > 0 and step - keep > 0:
            self._blobs.delete_blob(f"{_HISTORY}{instance_id}:{step - keep:012d}")

    def list_checkpoints(self, instance_id: str) -> list[dict[str, Any]]:
        """The kept checkpoints of an instance, oldest first (``step``, ``status``, ``position``)."""
        prefix = f"{_HISTORY}{_check_id(instance_id)}:"
        try:
            steps = sorted(int(k[len(prefix):]) for k in self._blobs.keys() if k.startswith(prefix))
        except NotImplementedError:  # a store that cannot list its keys (DiskStateStore): look for each step
            current = self.load_state_sync(instance_id) if self._fast else None
            steps = list(range(1, (current["steps"] if current is not None else 0) + 1))
        rows = []
        for step in steps:
            state = self.load_checkpoint(instance_id, step)
            if state is None:
                continue
            frames = list(state["stack"])
            rows.append({"step": state.get("steps", 0), "status": state["status"],
                         "position": frames[-1].position() if frames else ""})
        return rows

    def load_checkpoint(self, instance_id: str, step: int) -> SavedState | None:
        """Checkpoint ``step`` of the instance as it was saved, or None when it is not kept."""
        blob = self._blobs.load_blob(f"{_HISTORY}{_check_id(instance_id)}:{int(step):012d}")
        if blob is None:
            return None
        state: SavedState = signing.loads(blob, self.signing_key)
        state.pop("consumed", None)  # type: ignore[typeddict-item]  # the backend's own record, not the program's
        return state

    def delete(self, instance_id: str) -> None:
        """Forget an instance and its inbox (the state only when the store is a :class:`BlobStore`)."""
        if not isinstance(self.store, BlobStore):
            raise NotImplementedError(f"{type(self.store).__name__} has no way to delete a state (StateStore "
                                      "defines load and save only): delete it in the store")
        for row in self.list_checkpoints(instance_id):
            self._blobs.delete_blob(f"{_HISTORY}{instance_id}:{row['step']:012d}")
        self.store.delete_blob(self.store.state_key(instance_id))
        self._blobs.delete_blob(_INBOX + instance_id)
        self._consumed.pop(instance_id, None)

    # -- events -----------------------------------------------------------
    def _inbox(self, blob: bytes | None) -> _Inbox:
        if blob is None:
            return {"next": 1, "events": []}
        if self.signing_key is None:
            _warn_unsigned(self._blobs)
        box: _Inbox = signing.loads(blob, self.signing_key)
        return box

    def publish_event(self, instance_id: str, event_name: str, payload: Any = None) -> None:
        """Put an event in the instance's inbox. Safe from sync and async code."""
        _check_id(instance_id)
        if not isinstance(event_name, str) or not event_name:
            raise ValueError(f"event name must be a non-empty string, got {event_name!r}")
        try:
            pickle.dumps(payload)
        except Exception as exc:
            raise TypeError(f"event payload of type {type(payload).__name__} cannot be pickled: {exc}") from exc

        def add(blob: bytes | None) -> bytes:
            box = self._inbox(blob)
            box["events"].append((box["next"], event_name, payload))
            box["next"] += 1
            return signing.dumps(box, self.signing_key)

        with self._lock:
            self._blobs.update_blob(_INBOX + instance_id, add)

    def pending_events(self, instance_id: str) -> list[tuple[str, Any]]:
        """Events published to the instance and not consumed yet."""
        box = self._inbox(self._blobs.load_blob(_INBOX + instance_id))
        done = self._consumed.get(instance_id, set())
        return [(name, payload) for seq, name, payload in box["events"] if seq not in done]

    async def wait_for_event(self, instance_id: str, event_name: str) -> Any:
        box = self._inbox(self._blobs.load_blob(_INBOX + instance_id))
        done = self._consumed.setdefault(instance_id, set())
        for seq, name, payload in box["events"]:
            if name == event_name and seq not in done:
                done.add(seq)
                branch = current_branch.get()
                if branch is not None:
                    self._taken.setdefault((instance_id, branch), set()).add(seq)
                return payload
        raise PauseForEventException(event_name, instance_id=instance_id)

    def _prune(self, instance_id: str, done: set[int]) -> None:
        def drop(blob: bytes | None) -> bytes | None:
            if blob is None:
                return None
            box = self._inbox(blob)
            box["events"] = [e for e in box["events"] if e[0] not in done]
            return signing.dumps(box, self.signing_key)

        with self._lock:
            self._blobs.update_blob(_INBOX + instance_id, drop)


def _check_id(instance_id: str) -> str:
    if not isinstance(instance_id, str) or not instance_id:
        raise ValueError(f"instance_id must be a non-empty string, got {instance_id!r}")
    return instance_id
