"""Where state lives: the seed's ``StateStore`` contract (dicts) and the stock stores (blobs).

Two contracts:

* :class:`StateStore` is the seed's: ``async def load(instance_id) -> dict | None``
  and ``async def save(instance_id, state: dict) -> None``. Any object with
  those two methods (async or plain) is a store :class:`~durable.DurableBackend`
  can use; it serializes the state itself.
* :class:`BlobStore` is a :class:`StateStore` of bytes under string keys
  (``load_blob``, ``save_blob``, ``update_blob``, ``delete_blob``, ``keys``).
  :class:`~durable.DurableBackend` pickles and signs the state itself and talks
  to a blob store directly (its fast path) as long as the dict methods are the
  stock ones; its ``load``/``save`` still honour the seed's contract.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import signing

#: Prefix of the blob key that holds an instance's state (the layout :class:`~durable.DurableBackend` uses).
STATE_PREFIX = "state:"
#: Prefix of the blob key that holds an instance's event inbox.
INBOX_PREFIX = "inbox:"


class StateStore(ABC):
    """The seed's contract: the saved state (a dict) of each instance, by instance id.

    ``save`` must keep what it was given as it is at the call (serialize or
    copy it): the runtime goes on changing the same dict after the call.
    Plain ``def`` methods are accepted as well as ``async def``.
    """

    @abstractmethod
    async def load(self, instance_id: str) -> dict[str, Any] | None:
        """The state last saved for ``instance_id``, or ``None``."""

    @abstractmethod
    async def save(self, instance_id: str, state: dict[str, Any]) -> None:
        """Keep ``state`` for ``instance_id``, replacing what was there."""


class BlobStore(StateStore):
    """A :class:`StateStore` that keeps bytes under string keys: the stock stores' base.

    Subclasses implement :meth:`load_blob` and :meth:`save_blob` (and
    :meth:`delete_blob`, :meth:`keys`, an atomic :meth:`update_blob` when
    they can). ``load``/``save`` (the dict contract) keep a state under
    ``state_key(instance_id)`` in the unsigned blob format, where
    :class:`~durable.DurableBackend` finds it. A subclass that overrides
    ``load`` or ``save`` is used through them, so its code runs on every
    checkpoint; one that overrides only the blob methods keeps the fast path.
    """

    @abstractmethod
    def load_blob(self, key: str) -> bytes | None:
        """Return the blob saved under ``key``, or ``None``."""

    @abstractmethod
    def save_blob(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing what was there."""

    def delete_blob(self, key: str) -> None:
        """Forget ``key`` (no error if absent)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement delete_blob")

    def keys(self) -> Iterator[str]:
        """Iterate over the stored blob keys."""
        raise NotImplementedError(f"{type(self).__name__} does not implement keys")

    def update_blob(self, key: str, fn: Callable[[bytes | None], bytes | None]) -> bytes | None:
        """Replace the blob under ``key`` by ``fn(old)``; ``None`` deletes it.

        Must be atomic against other writers of the same key; this default is
        not (stores override it with a lock).
        """
        new = fn(self.load_blob(key))
        if new is None:
            self.delete_blob(key)
        else:
            self.save_blob(key, new)
        return new

    def state_key(self, instance_id: str) -> str:
        """The blob key of an instance's state."""
        return STATE_PREFIX + instance_id

    async def load(self, instance_id: str) -> dict[str, Any] | None:
        blob = self.load_blob(self.state_key(instance_id))
        return None if blob is None else signing.loads(blob)

    async def save(self, instance_id: str, state: dict[str, Any]) -> None:
        self.save_blob(self.state_key(instance_id), signing.dumps(state))


def blob_fast_path(store: object) -> bool:
    """Can a backend skip ``store.load``/``save`` and write blobs itself?

    Only for a :class:`BlobStore` whose dict methods are the stock ones: then
    they would do nothing but that. A subclass that overrides them (an
    ``async def save`` that logs, then awaits ``super().save(...)``) is called
    through them.
    """
    if not isinstance(store, BlobStore):
        return False
    cls = type(store)
    return cls.load is BlobStore.load and cls.save is BlobStore.save and cls.state_key is BlobStore.state_key


def check_store(store: object) -> None:
    """Raise a :class:`TypeError` naming the contract when ``store`` fits none."""
    if isinstance(store, BlobStore):
        return
    if callable(getattr(store, "load", None)) and callable(getattr(store, "save", None)):
        return
    hint = ""
    if callable(getattr(store, "load_state", None)):
        hint = " (this looks like an OrchestrationBackend: pass it as orchestration_backend=)"
    raise TypeError(
        f"{type(store).__name__} is not a StateStore: a state store needs load(instance_id) -> dict | None and "
        "save(instance_id, state: dict) -> None (async def or def), or subclasses durable.BlobStore and implements "
        f"load_blob(key) -> bytes | None and save_blob(key, data){hint}")


class InMemoryStateStore(BlobStore):
    """A dict in this process: fast, for tests and short-lived programs."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.RLock()

    def load_blob(self, key: str) -> bytes | None:
        return self._data.get(key)

    def save_blob(self, key: str, data: bytes) -> None:
        self._data[key] = data

    def delete_blob(self, key: str) -> None:
        self._data.pop(key, None)

    def keys(self) -> Iterator[str]:
        return iter(list(self._data))

    def update_blob(self, key: str, fn: Callable[[bytes | None], bytes | None]) -> bytes | None:
        with self._lock:
            return super().update_blob(key, fn)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class DiskStateStore(BlobStore):
    """One file per key in a directory, written atomically.

    A save goes to a temporary file in the same directory, is flushed and
    fsynced, then renamed over the old file, so a crash leaves either the old
    or the new blob, never a torn one. File names are derived from a hash of
    the key, so no key can point outside the directory.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    def _file(self, key: str) -> Path:
        if not isinstance(key, str) or not key:
            raise ValueError(f"state key must be a non-empty string, got {key!r}")
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        readable = _UNSAFE.sub("_", key)[:48].lstrip(".")
        return self.path / f"{readable}.{digest}.state"

    def load_blob(self, key: str) -> bytes | None:
        try:
            return self._file(key).read_bytes()
        except FileNotFoundError:
            return None

    def save_blob(self, key: str, data: bytes) -> None:
        target = self._file(key)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-", suffix=".state")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def delete_blob(self, key: str) -> None:
        try:
            self._file(key).unlink()
        except FileNotFoundError:
            return
        self._fsync_dir()

    def keys(self) -> Iterator[str]:
        raise NotImplementedError("DiskStateStore stores hashed file names; keys cannot be listed")

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        lock_path = self._file(key).with_suffix(".lock")
        with self._lock, open(lock_path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def update_blob(self, key: str, fn: Callable[[bytes | None], bytes | None]) -> bytes | None:
        with self._locked(key):
            return super().update_blob(key, fn)
