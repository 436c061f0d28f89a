"""Where state blobs live: an interface and two small implementations."""

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


class StateStore(ABC):
    """Key/value storage of opaque blobs (bytes).

    ``update`` is a read-modify-write that must be atomic against other writers
    of the same key; the default implementation is only atomic in one thread.
    """

    @abstractmethod
    def load(self, key: str) -> bytes | None:
        """Return the blob saved under ``key``, or ``None``."""

    @abstractmethod
    def save(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing what was there."""

    def delete(self, key: str) -> None:
        """Forget ``key`` (no error if absent)."""
        raise NotImplementedError

    def keys(self) -> Iterator[str]:
        """Iterate over stored keys."""
        raise NotImplementedError

    def update(self, key: str, fn: Callable[[bytes | None], bytes | None]) -> bytes | None:
        """Replace the blob under ``key`` by ``fn(old)``; ``None`` deletes it."""
        new = fn(self.load(key))
        if new is None:
            self.delete(key)
        else:
            self.save(key, new)
        return new


class InMemoryStateStore(StateStore):
    """A dict in this process: fast, for tests and short-lived programs."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.RLock()

    def load(self, key: str) -> bytes | None:
        return self._data.get(key)

    def save(self, key: str, data: bytes) -> None:
        self._data[key] = data

    def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def keys(self) -> Iterator[str]:
        return iter(list(self._data))

    def update(self, key: str, fn: Callable[[bytes | None], bytes | None]) -> bytes | None:
        with self._lock:
            return super().update(key, fn)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class DiskStateStore(StateStore):
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

    def load(self, key: str) -> bytes | None:
        try:
            return self._file(key).read_bytes()
        except FileNotFoundError:
            return None

    def save(self, key: str, data: bytes) -> None:
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

    def delete(self, key: str) -> None:
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

    def update(self, key: str, fn: Callable[[bytes | None], bytes | None]) -> bytes | None:
        with self._locked(key):
            return super().update(key, fn)
