"""Parallel branches in the Django app: each branch's checkpoint in its own ``DurableBranch`` row.

``await durable.gather(a(), b())`` runs each awaitable as a branch with a call
stack of its own (see :mod:`durable.branches`). The core saves a branch's
checkpoints through the backend's optional ``save_branch``/``load_branch``/
``delete_branches``, implemented here (:class:`BranchStore`, a mixin of
:class:`~durable_django.backend.DjangoOrchestrationBackend`):

* a branch's checkpoint writes its row only (the instance's row keeps the
  awaiting frame and the group), signed for its instance, program and path, in
  the executor's transaction, which it commits: the ORM writes of the step
  before it commit with it, as with the instance's checkpoints;
* it is fenced by the instance's lease (:meth:`Operations.lease_fence`): a
  worker that lost the lease writes nothing;
* an event a branch takes (``wait_for_event`` reads the core's
  ``current_branch``) is marked consumed by that branch's next checkpoint, in
  the same transaction, never by another branch's or the instance's; two
  branches never take the same event;
* the row copies the branch's wait (``wait_kind``, ``waiting_for``,
  ``wake_at``): an instance paused on its branches is woken when an event in
  its inbox ends a paused branch's wait (``models.event_arrived``);
* when a group ends, its rows are deleted in the transaction of the awaiting
  frame's next checkpoint.

The instance's own row shows every live wait: ``wait_kind="branches"``, the
earliest due time in ``wake_at``, and ``waiting_for`` as text for people
(:func:`describe_waits`).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from datetime import datetime
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import transaction
from django.db.models import Q

from durable.state import SavedState

from . import clock
from .eventloop import hidden_loop_call
from .leases import lease_expiry
from .models import DurableBranch, DurableInstance, Status
from .signing import STATE, blob_context, sign, unsign
from .waits import to_datetime, waiting_for


def branch_field(path: str) -> str:
    """The signed "column" of a branch's blob: a branch's state verifies only for its own path."""
    return f"{STATE}:branch:{path}"


def _parent(path: str) -> str | None:
    """The branch whose group ``path`` belongs to (None: the instance itself)."""
    return path.rsplit("/", 1)[0] if "/" in path else None


def _descendants(parent: str | None) -> Q:
    return Q() if parent is None else Q(path__startswith=f"{parent}/")


class BranchStore:
    """``load_branch``, ``save_branch``, ``delete_branches`` over ``DurableBranch`` rows (a mixin of the
    Django backend, which defines the attributes below)."""

    inline: bool
    commit: bool
    worker_id: str
    using: str
    db: Any
    lease_expires_at: datetime | None
    last_status: str | None
    _consumed: list[int]

    if TYPE_CHECKING:  # defined by DjangoOrchestrationBackend
        def _program_of(self, instance_id: str) -> str: ...
        def _lease_due(self, now: datetime) -> bool: ...
        def _lease_lost(self, instance_id: str) -> Exception: ...
        def _check_cancel(self, instance_id: str, status: str) -> None: ...

    def _init_branches(self) -> None:
        #: branch path -> the events it took since its last checkpoint (consumed by that checkpoint)
        self._taken: dict[str, list[int]] = {}
        #: the runtimes (None: the instance; else a branch path) whose state held a group at its last load or
        #: save: when one saves a state without a group, the group's rows are deleted in that transaction
        self._grouped: set[str | None] = set()
        #: the runtimes whose group's rows the last such checkpoint deleted (the core's delete_branches is
        #: then nothing to do)
        self._cleared: set[str | None] = set()

    # -- the core's optional methods ---------------------------------------------------
    async def load_branch(self, instance_id: str, branch: str) -> SavedState | None:
        if self.inline:
            return hidden_loop_call(self.load_branch_sync, instance_id, branch)
        return await sync_to_async(self.load_branch_sync, thread_sensitive=True)(instance_id, branch)

    async def save_branch(self, instance_id: str, branch: str, state: SavedState) -> None:
        if self.inline:
            return hidden_loop_call(self.save_branch_sync, instance_id, branch, state)
        await sync_to_async(self.save_branch_sync, thread_sensitive=True)(instance_id, branch, state)

    async def delete_branches(self, instance_id: str, branches: list[str]) -> None:
        if self.inline:
            return hidden_loop_call(self.delete_branches_sync, instance_id, branches)
        await sync_to_async(self.delete_branches_sync, thread_sensitive=True)(instance_id, branches)

    # -- sync forms ------------------------------------------------------------------
    def load_branch_sync(self, instance_id: str, branch: str) -> SavedState | None:
        blob = (DurableBranch.objects.using(self.using).filter(instance_id=instance_id, path=branch)
                .values_list("state", flat=True).first())
        self._taken.pop(branch, None)
        if blob is None:
            return None
        state: SavedState = unsign(blob, self._branch_context(instance_id, branch))
        if state.get("group") is not None:
            self._grouped.add(branch)
        return state

    def save_branch_sync(self, instance_id: str, branch: str, state: SavedState) -> None:
        blob = sign(state, self._branch_context(instance_id, branch))  # CheckpointException: nothing written
        now = clock.now()
        status = Status(state.get("status") or Status.RUNNING)
        wait: Mapping[str, Any] = (state.get("wait") or {}) if status == Status.PAUSED else {}
        stack = state.get("stack")
        frames = list(stack) if stack is not None else []
        columns = {"state": blob, "status": status, "wait_kind": wait.get("kind", "") or "",
                   "waiting_for": waiting_for(wait), "wake_at": to_datetime(wait.get("due")),
                   "steps": state.get("steps", 0), "position": frames[-1].position()[:500] if frames else "",
                   "updated_at": now}
        taken = self._taken.pop(branch, None)
        if status == Status.FAILED:
            taken = None  # it goes back to its last checkpoint: the events it took since stay in the inbox
        rows = DurableBranch.objects.using(self.using)
        with nullcontext() if self.commit else transaction.atomic(using=self.using):
            # The row first: on SQLite its write lock then keeps any other worker's claim out until the commit.
            if not rows.filter(instance_id=instance_id, path=branch).update(**columns):
                rows.create(instance_id=instance_id, path=branch, **columns)
            if self.last_status == Status.PAUSED:
                # the first checkpoint of a resumed instance is a branch's: its row says it runs now (a crash
                # after this commit leaves a running row whose lease expires, which the sweep takes over; a row
                # left paused on a wait its branch went past would never be woken again)
                if not self._mark_running(instance_id, now):
                    raise self._lease_lost(instance_id)
            elif self.worker_id:
                expires = lease_expiry(now) if self._lease_due(now) else None
                if not self.db.lease_fence(instance_id, self.worker_id, expires):
                    raise self._lease_lost(instance_id)
                if expires is not None:
                    self.lease_expires_at = expires
            if taken:
                self.db.consume_events(taken, now)
            self._group_rows(instance_id, branch, state)
        if self.commit:
            transaction.commit(using=self.using)
        self._check_cancel(instance_id, status)

    def _mark_running(self, instance_id: str, now: datetime) -> bool:
        """The instance's row: running, waiting for nothing (fenced by the lease when a worker holds one)."""
        rows = DurableInstance.objects.using(self.using).filter(pk=instance_id, status=Status.PAUSED)
        if self.worker_id:
            rows = rows.filter(lease_owner=self.worker_id)
        columns: dict[str, Any] = {"status": Status.RUNNING, "wait_kind": "", "waiting_for": "", "wake_at": None,
                                   "updated_at": now}
        if self.worker_id and self._lease_due(now):
            columns["lease_expires_at"] = self.lease_expires_at = lease_expiry(now)
        if rows.update(**columns) != 1:
            return False
        self.last_status = Status.RUNNING
        return True

    def delete_branches_sync(self, instance_id: str, branches: list[str]) -> None:
        """Delete the rows of a group that ended (and any group nested in them), unless the checkpoint of the
        frame that awaited it already did."""
        if not branches:
            return
        parent = _parent(branches[0])
        if parent in self._cleared:
            self._cleared.discard(parent)
            return
        where = Q(path__in=branches)
        for path in branches:
            where |= Q(path__startswith=f"{path}/")
            self._taken.pop(path, None)
        with nullcontext() if self.commit else transaction.atomic(using=self.using):
            DurableBranch.objects.using(self.using).filter(where, instance_id=instance_id).delete()
        if self.commit:
            transaction.commit(using=self.using)

    # -- helpers of the backend ----------------------------------------------------------
    def _group_rows(self, instance_id: str, owner: str | None, state: SavedState) -> None:
        """At a checkpoint of ``owner`` (None: the instance), in its transaction: a group it awaited has
        ended (its state no longer holds one): delete the group's rows with this checkpoint."""
        self._cleared.discard(owner)
        if state.get("group") is not None:
            self._grouped.add(owner)
        elif owner in self._grouped and state.get("status") != Status.FAILED:
            self._grouped.discard(owner)
            DurableBranch.objects.using(self.using).filter(_descendants(owner), instance_id=instance_id).delete()
            self._cleared.add(owner)

    def _branch_context(self, instance_id: str, branch: str) -> bytes:
        return blob_context(instance_id, self._program_of(instance_id), branch_field(branch))

    def _skip(self) -> list[int]:
        """Events taken since their taker's last checkpoint, by the instance or any branch: not to be taken
        again."""
        if not self._taken:
            return self._consumed
        return [*self._consumed, *(i for ids in self._taken.values() for i in ids)]

    def _took(self, event_id: int, branch: str | None) -> None:
        """Record an event as taken by ``branch`` (None: the instance): consumed by its next checkpoint."""
        if branch is None:
            self._consumed.append(event_id)
        else:
            self._taken.setdefault(branch, []).append(event_id)


def live_branches(instance: Any) -> list[dict[str, Any]]:
    """The live branches of an instance for people (the admin's "Branches" section): path, status, position,
    what each waits for, in path order."""
    rows = DurableBranch.objects.filter(instance_id=instance.pk).order_by("path").values(
        "path", "status", "position", "wait_kind", "waiting_for", "wake_at", "steps", "updated_at")
    return [{**r, "waits_for": _branch_wait(r)} for r in rows]


def _branch_wait(row: Mapping[str, Any]) -> str:
    if row["status"] != Status.PAUSED:
        return ""
    if row["wait_kind"] == "event":
        return f"event {row['waiting_for']!r}"
    if row["wait_kind"] == "timer":
        return f"timer until {row['wake_at'].isoformat() if row['wake_at'] else 'an unknown time'}"
    return row["waiting_for"] or row["wait_kind"]


def awaited_event(instance: Any) -> str:
    """The event a person most likely publishes next: the instance's, or its first paused branch's."""
    if instance.wait_kind != "branches":
        return instance.waiting_for
    return (DurableBranch.objects.filter(instance_id=instance.pk, status=Status.PAUSED, wait_kind="event")
            .order_by("path").values_list("waiting_for", flat=True).first() or "")


def paused_branch_waits(instance_id: str) -> list[tuple[str, str]]:
    """(wait kind, event name) of each paused branch's own event or timer wait (nested branches included)."""
    rows = DurableBranch.objects.filter(instance_id=instance_id, status=Status.PAUSED, wait_kind__in=("event", "timer"))
    return list(rows.order_by("path").values_list("wait_kind", "waiting_for"))

