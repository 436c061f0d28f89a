"""``DjangoStateStore``: the core's :class:`durable.BlobStore` over instance rows.

A key is an instance id and a blob is the signed state of that instance, held
in ``DurableInstance.state``. It is the low-level way to read or repair a
blob (e.g. restore a verified copy after a ``StateTamperedError``); rows are
created by :func:`durable_django.start` only, so saving under an unknown id
raises :class:`UnknownInstance` instead of inventing an instance nobody can run.
Writes go through the row's ``version`` column (optimistic locking):
:meth:`update_blob` retries on a concurrent change and :meth:`save_if_version`
reports a lost race to its caller. The seed's dict contract
(``await store.load(instance_id)`` / ``await store.save(instance_id, state)``)
reads and writes the state verified and signed for its row, from async code too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.db.models import F
from django.utils import timezone

from durable import BlobStore

from .exceptions import UnknownInstance
from .models import DurableInstance
from .signing import STATE, blob_context, sign, unsign


class DjangoStateStore(BlobStore):
    """Blob storage in ``DurableInstance.state``, keyed by instance id."""

    def __init__(self, using: str | None = None) -> None:
        self.using = using

    def _rows(self):
        qs = DurableInstance.objects
        return qs.using(self.using) if self.using else qs.all()

    def load_blob(self, key: str) -> bytes | None:
        blob = self._rows().filter(pk=key).values_list("state", flat=True).first()
        # BinaryField is memoryview on PostgreSQL and bytes on SQLite.
        return None if blob is None else bytes(blob)

    def load_versioned(self, key: str) -> tuple[bytes | None, int] | None:
        """``(blob, version)`` of ``key``, or None when there is no row."""
        row = self._rows().filter(pk=key).values_list("state", "version").first()
        if row is None:
            return None
        return (None if row[0] is None else bytes(row[0])), row[1]

    def save_if_version(self, key: str, data: bytes | None, version: int) -> bool:
        """Write ``data`` only if the row is still at ``version``; False when someone else wrote first."""
        n = self._rows().filter(pk=key, version=version).update(
            state=data, version=F("version") + 1, updated_at=timezone.now())
        return n == 1

    def save_blob(self, key: str, data: bytes) -> None:
        if not self._rows().filter(pk=key).update(state=data, version=F("version") + 1, updated_at=timezone.now()):
            raise UnknownInstance(key)

    def delete_blob(self, key: str) -> None:
        """Forget the blob (the instance row, its inbox and history stay)."""
        self._rows().filter(pk=key).update(state=None, version=F("version") + 1, updated_at=timezone.now())

    def keys(self) -> Iterator[str]:
        return iter(self._rows().exclude(state=None).values_list("pk", flat=True).iterator())

    def update_blob(self, key: str, fn: Callable[[bytes | None], bytes | None]) -> bytes | None:
        """Compare-and-swap on the row version, retried until no concurrent writer interferes."""
        while True:
            current = self.load_versioned(key)
            if current is None:
                raise UnknownInstance(key)
            blob, version = current
            new = fn(blob)
            if self.save_if_version(key, new, version):
                return new

    # -- the seed's dict contract ---------------------------------------------
    def state_key(self, instance_id: str) -> str:
        return instance_id

    async def load(self, instance_id: str) -> dict[str, Any] | None:
        """The instance's state, verified for its row (None: no row, or no state)."""
        return await sync_to_async(self.load_state_sync, thread_sensitive=True)(instance_id)

    async def save(self, instance_id: str, state: dict[str, Any]) -> None:
        """Sign ``state`` for the instance's row and write it (:class:`UnknownInstance` when there is no row)."""
        await sync_to_async(self.save_state_sync, thread_sensitive=True)(instance_id, state)

    def load_state_sync(self, instance_id: str) -> dict[str, Any] | None:
        """:meth:`load` for synchronous code."""
        row = self._rows().filter(pk=instance_id).values_list("state", "program").first()
        if row is None or row[0] is None:
            return None
        return unsign(row[0], blob_context(instance_id, row[1], STATE))

    def save_state_sync(self, instance_id: str, state: dict[str, Any]) -> None:
        """:meth:`save` for synchronous code."""
        program = self._rows().filter(pk=instance_id).values_list("program", flat=True).first()
        if program is None:
            raise UnknownInstance(instance_id)
        self.save_blob(instance_id, sign(state, blob_context(instance_id, program, STATE)))
