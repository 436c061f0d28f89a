"""Orchestration backends: where state is saved and events are delivered."""

from __future__ import annotations

import pickle
import threading
import warnings
from abc import ABC, abstractmethod
from typing import Any, TypedDict

from . import signing
from .exceptions import PauseForEventException, UnsignedStateWarning
from .state import SavedState
from .store import InMemoryStateStore, StateStore


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


_STATE = "state:"
_INBOX = "inbox:"


class DurableBackend(OrchestrationBackend):
    """The stock backend: state and event inbox both live in a :class:`StateStore`.

    Events are numbered per instance. A consumed event is recorded in the
    instance's next checkpoint before it is removed from the inbox, so a crash
    between the two neither loses nor repeats it.
    """

    def __init__(self, store: StateStore | None = None, signing_key: bytes | str | None = None) -> None:
        self.store = store if store is not None else InMemoryStateStore()
        self.signing_key = signing.coerce_key(signing_key)
        self._consumed: dict[str, set[int]] = {}
        self._lock = threading.RLock()

    # -- state ------------------------------------------------------------
    async def load_state(self, instance_id: str) -> SavedState | None:
        return self.load_state_sync(instance_id)

    def load_state_sync(self, instance_id: str) -> SavedState | None:
        blob = self.store.load(_STATE + _check_id(instance_id))
        if blob is None:
            self._consumed.pop(instance_id, None)
            return None
        if self.signing_key is None:
            _warn_unsigned(self.store)
        state: SavedState = signing.loads(blob, self.signing_key)
        done = set(state.get("consumed", ()))
        self._consumed[instance_id] = done
        if done:
            self._prune(instance_id, done)
        return state

    async def save_state(self, instance_id: str, state: SavedState) -> None:
        done = self._consumed.get(instance_id)
        state["consumed"] = sorted(done) if done else ()
        blob = signing.dumps(state, self.signing_key)
        self.store.save(_STATE + _check_id(instance_id), blob)
        if done:
            self._prune(instance_id, done)
            self._consumed[instance_id] = set()

    def delete(self, instance_id: str) -> None:
        """Forget an instance and its inbox."""
        self.store.delete(_STATE + instance_id)
        self.store.delete(_INBOX + instance_id)
        self._consumed.pop(instance_id, None)

    # -- events -----------------------------------------------------------
    def _inbox(self, blob: bytes | None) -> _Inbox:
        if blob is None:
            return {"next": 1, "events": []}
        if self.signing_key is None:
            _warn_unsigned(self.store)
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
            self.store.update(_INBOX + instance_id, add)

    def pending_events(self, instance_id: str) -> list[tuple[str, Any]]:
        """Events published to the instance and not consumed yet."""
        box = self._inbox(self.store.load(_INBOX + instance_id))
        done = self._consumed.get(instance_id, set())
        return [(name, payload) for seq, name, payload in box["events"] if seq not in done]

    async def wait_for_event(self, instance_id: str, event_name: str) -> Any:
        box = self._inbox(self.store.load(_INBOX + instance_id))
        done = self._consumed.setdefault(instance_id, set())
        for seq, name, payload in box["events"]:
            if name == event_name and seq not in done:
                done.add(seq)
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
            self.store.update(_INBOX + instance_id, drop)


def _check_id(instance_id: str) -> str:
    if not isinstance(instance_id, str) or not instance_id:
        raise ValueError(f"instance_id must be a non-empty string, got {instance_id!r}")
    return instance_id
