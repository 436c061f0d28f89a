"""``DjangoOrchestrationBackend``: the core's backend interface over the ORM.

The core runtime calls it unchanged: ``load_state`` before running,
``save_state`` after every step (the checkpoint), ``wait_for_event`` at every
wait. All database work runs in the worker thread that holds the connection
(see :mod:`durable_django.eventloop`): directly when the executor runs the
event loop in that thread (``inline``), else through thread-sensitive
``sync_to_async``. Either way it shares that thread's connection and its open
transaction: the ORM writes a step made and the checkpoint after it commit
together. The common checkpoint is one cached SQL ``UPDATE`` (no ORM query
building, no savepoint when the executor owns the transaction).
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping
from contextlib import nullcontext
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from durable import OrchestrationBackend, PauseForEventException
from durable.state import CANCELLED, SavedState, current_branch

from . import checkpoints, clock
from .branches import BranchStore
from .cancel_watch import CancelWatch, cancel_text
from .children import ChildHooks
from .db import Operations, ops
from .db.operations import CHECKPOINT_REFUSED as _FINAL
from .eventloop import hidden_loop_call
from .events import publish_event
from .exceptions import LeaseLost
from .judges import is_task_meta, judge_answer
from .leases import extension_due, lease_expiry
from .models import DurableEvent, DurableInstance, HistoryKind, Status
from .signing import ARGUMENTS, SIGNED_FIELDS, STATE, blob_context, sign, unsign, verified  # noqa: F401
from .waits import retry_backoff, retry_status, retry_text, to_datetime, wait_columns, wait_text  # noqa: F401

#: Columns a running checkpoint usually leaves as they are (left out of its UPDATE when unchanged).
_STICKY = ("status", "wait_kind", "waiting_for", "wake_at", "attempts", "layout_hash", "lease_owner")

_ENDED = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

_NO_WAIT = {"wait_kind": "", "waiting_for": "", "wake_at": None}

_STATUS = {"running": Status.RUNNING, "paused": Status.PAUSED, "completed": Status.COMPLETED,
           "failed": Status.FAILED, "cancelled": Status.CANCELLED}


def jsonable(value: Any) -> Any:
    """``value`` if it can be stored in a JSON column, else a short repr (the blob keeps the real value)."""
    try:
        json.dumps(value, cls=DjangoJSONEncoder)
        return value
    except (TypeError, ValueError):
        return {"repr": repr(value)[:1000]}


def describe_error(err: BaseException | None) -> str:
    if err is None:
        return ""
    if err.__traceback__ is not None:
        return "".join(traceback.format_exception(err))[-20000:]
    return f"{type(err).__name__}: {err}"


class DjangoOrchestrationBackend(BranchStore, CancelWatch, ChildHooks, OrchestrationBackend):
    """State in ``DurableInstance`` rows, events in ``DurableEvent`` rows.

    ``worker_id`` (set by the executor) makes every checkpoint conditional on
    still holding the instance's lease: a worker whose lease was taken over
    gets :class:`LeaseLost` instead of overwriting the new owner's progress.
    ``commit`` makes each checkpoint commit the connection's open transaction
    (the executor's exactly-once mode). Without a ``worker_id`` the backend
    can be used directly with ``await program(orchestration_backend=...)``.
    """

    def __init__(self, *, worker_id: str = "", commit: bool = False, using: str | None = None,
                 program: str | None = None) -> None:
        self.worker_id = worker_id
        #: dotted path of the program being run, which the state's signature is bound to (the executor sets
        #: the path it resolved). None: the row's ``program`` column when it exists, else the state's program.
        self.program = program
        self._context: tuple[str, str, bytes] | None = None
        self.commit = commit
        #: the database's operations (``using``, or the one the routers pick for the app's rows)
        self.db: Operations = ops(using)
        self.using = self.db.alias
        #: transitions made by this backend: (kind, status, detail), for signals after commit.
        self.transitions: list[tuple[str, str, str]] = []
        #: status of the row as last read or written by this backend.
        self.last_status: str | None = None
        self.saves = 0
        #: set by the executor while the runtime's event loop runs in this backend's (the connection's) thread:
        #: the backend then calls its sync methods directly instead of through ``sync_to_async``.
        self.inline = False
        self._consumed: list[int] = []
        #: (event id, instance id, name, reason) of events a human-task wait rejected since the last checkpoint.
        self._rejected: list[tuple[int, str, str, str]] = []
        self._resumed = False
        self._loaded_layout: str | None = None
        self._loaded_frame: Any = None
        #: the lease's expiry as last written by the executor or this backend (None: unknown).
        self.lease_expires_at: datetime | None = None
        #: the wait of the last checkpoint when it paused (for the executor's wake-up scheduling).
        self.last_wait: Mapping[str, Any] | None = None
        #: values of the rarely changing columns written by the last checkpoint (see _update_sql).
        self._written: dict[str, Any] = {}
        #: the state's ``progress`` and ``published`` objects as last loaded or written: the checkpoint writes
        #: those columns only when the state holds another object (durable.progress makes a new one on change).
        self._progress_written: tuple[Any, Any] = (None, None)
        #: the row's (state, status, program) read by the executor's claim, used once instead of a SELECT.
        self.prefetched: tuple | None = None
        #: (name, id, payload) of the oldest unconsumed event the instance waits for, read by the claim
        #: (PostgreSQL): used by the first wait for that name instead of a SELECT.
        self.prefetched_event: tuple | None = None
        self._init_cancel_watch()
        self._init_branches()
        self._closed: set[str] = set()
        self._new_children: list[str] = []

    # -- state ------------------------------------------------------------
    async def load_state(self, instance_id: str) -> SavedState | None:
        if self.inline:
            return hidden_loop_call(self.load_state_sync, instance_id)
        return await sync_to_async(self.load_state_sync, thread_sensitive=True)(instance_id)

    def load_state_sync(self, instance_id: str) -> SavedState | None:
        row: tuple[Any, ...] | None
        if self.prefetched is not None:
            row, self.prefetched = self.prefetched, None
        else:
            row = DurableInstance.objects.filter(pk=instance_id).values_list("state", "status", "program").first()
        self._consumed = []
        self._init_branches()
        self._written = {}
        self._progress_written = (None, None)
        if row is None:
            return None
        blob, status, program = row
        context = self._state_context(instance_id, self.program or program)
        self.last_status = status
        if blob is None:
            if self._cancel_pending is not None:
                self._deliver_pending_cancel(None)
            return None
        state = unsign(blob, context)
        stack = state.get("stack")
        frames = list(stack) if stack is not None else []
        self._loaded_layout = frames[0].layout_hash if frames else None
        self._loaded_frame = frames[0] if self._loaded_layout else None  # a migration updates its fingerprint
        if status == Status.CANCELLED:
            state["status"] = CANCELLED
        if self._cancel_pending is not None:
            self._deliver_pending_cancel(state)
        self._progress_written = (state.get("progress"), state.get("published"))
        if state.get("group") is not None:  # parallel branches (durable_django.branches)
            self._grouped.add(None)
        return state

    async def save_state(self, instance_id: str, state: SavedState) -> None:
        if self.inline:
            return hidden_loop_call(self.save_state_sync, instance_id, state)
        await sync_to_async(self.save_state_sync, thread_sensitive=True)(instance_id, state)

    def _state_context(self, instance_id: str, program: str | None = None) -> bytes:
        """The signing context of this instance's state, built once per run (the checkpoint's hot path).

        ``program``: the path read with the row; None at a checkpoint, which reuses the one of the load
        (or, for a row this backend is about to create, takes the state's program)."""
        ctx = self._context
        if program is None:
            if ctx is not None and ctx[0] == instance_id:
                return ctx[2]
            program = self.program or ""
        if ctx is None or ctx[0] != instance_id or ctx[1] != program:
            ctx = self._context = (instance_id, program, blob_context(instance_id, program, STATE))
        return ctx[2]

    def save_state_sync(self, instance_id: str, state: SavedState) -> None:
        if self.program is None and (self._context is None or self._context[0] != instance_id):
            # nothing loaded: a new row, which _write creates with the state's program
            self._state_context(instance_id, state.get("program", ""))
        keep = checkpoints.history_of(state)  # before signing: an instance keeps the history it started with
        # CheckpointException propagates; nothing was written
        blob = sign(state, self._state_context(instance_id))
        now = clock.now()  # the database's clock, as the lease and the core's due times (see clock.py)
        status = _STATUS.get(state.get("status"), Status.RUNNING)
        wait: Mapping[str, Any] = state.get("wait") or {}
        stack = state.get("stack")
        frames = list(stack) if stack is not None else []
        columns: dict[str, Any] = {
            # a failed state keeps the wait of its last checkpoint (for a retry); the row waits for nothing
            "state": blob, "status": status, "steps": state.get("steps", 0),
            **(wait_columns(state) if status != Status.FAILED else _NO_WAIT),
            "attempts": 0, "updated_at": now, "position": frames[-1].position()[:500] if frames else "",
        }
        progress = (state.get("progress"), state.get("published"))
        if progress[0] is not self._progress_written[0]:  # identity: no comparison on the hot path
            columns["progress"] = progress[0]
        if progress[1] is not self._progress_written[1]:
            columns["published"] = progress[1]
        layout = frames[0].layout_hash if frames else None
        if layout:
            columns["layout_hash"] = layout
        elif self._loaded_layout and self._loaded_frame is not None:  # finished in the run that migrated it
            columns["layout_hash"] = self._loaded_frame.layout_hash
        if status == Status.RUNNING:
            if self.worker_id and self._lease_due(now):
                columns["lease_expires_at"] = lease_expiry(now)
        else:
            columns.update(lease_owner="", lease_expires_at=None)
        if status == Status.COMPLETED:
            columns.update(result=jsonable(state.get("result")), finished_at=now)
        elif status == Status.FAILED:
            columns.update(error=describe_error(state.get("error")), finished_at=now)
            # The failed instance keeps its last checkpoint: a retry continues from there, so nothing the failed
            # run did after it is kept: its uncommitted writes are rolled back and the events it took stay in
            # the inbox, to be taken again.
            self.discard_step_writes_sync(instance_id)
            self._consumed = []
        elif status == Status.CANCELLED:
            columns.update(error=cancel_text(state), finished_at=now)

        kinds = []
        if self._loaded_layout and columns.get("layout_hash", self._loaded_layout) != self._loaded_layout:
            kinds.append((HistoryKind.MIGRATED, status,
                          f"step layout {self._loaded_layout} -> {columns['layout_hash']}"))
        self._loaded_layout = self._loaded_frame = None
        if self.last_status == Status.PAUSED and not self._resumed:
            kinds.append((HistoryKind.RESUMED, Status.RUNNING, ""))
        self._resumed = True
        if status == Status.PAUSED and retry_backoff(state):
            kinds.append((HistoryKind.RETRYING, status, retry_text(state)))
        elif status in (Status.PAUSED, Status.COMPLETED, Status.FAILED, Status.CANCELLED):
            detail = {Status.PAUSED: wait_text(wait), Status.FAILED: columns.get("error", "")[-2000:],
                      Status.CANCELLED: columns.get("error", "")[-2000:]}.get(status, "")
            kinds.append((HistoryKind(status.value), status, detail))

        kept = None if keep is None else (keep, columns["steps"], blob)
        self._group_rows(instance_id, None, state)  # a group that ended: its branches' rows go with this checkpoint
        # the last checkpoint of a parent closes its children in its transaction; a child's wakes its parent after
        # the commit (durable_django.children)
        family = status in _ENDED and bool(state.get("children"))
        if self.commit and self.worker_id and self.db.features.data_modifying_ctes and kept is None and not family:
            self._write_one_statement(instance_id, columns, kinds, now)
        else:
            self._write(instance_id, state, columns, kinds, now, kept, ended=status if family else None)
        if not family and status in _ENDED and state.get("parent"):
            self._ended(instance_id, state, status, self._parent_of(state))
        if "lease_expires_at" in columns:
            self.lease_expires_at = columns["lease_expires_at"]
        self._written = {k: columns.get(k) for k in _STICKY}
        self._progress_written = progress
        self._consumed = []
        self._rejected = []
        self.last_status = status
        self.last_wait = wait if status == Status.PAUSED else None
        self.saves += 1
        self.transitions.extend((k.value, st.value, d) for k, st, d in kinds)
        if self._new_children:
            self._children_committed()
        self._check_cancel(instance_id, status)

    def _write_one_statement(self, instance_id: str, columns: dict, kinds: list, now: datetime) -> None:
        """A checkpoint under the executor's lease on PostgreSQL: row, consumed events and history in one
        statement (the last two only if the row was ours to update).

        When the step did no database work (no transaction open), it runs in autocommit: one round
        trip in all, instead of BEGIN, one per write and COMMIT. Otherwise it joins the step's
        transaction, which then commits. A lost lease updates nothing, and the executor rolls back.
        """
        with self.db.standalone() as committed:
            n = self._update_sql(instance_id, columns, self._consumed, kinds, now)
        if n != 1:
            raise self._lease_lost(instance_id)
        if not committed:
            transaction.commit(using=self.using)

    def _write(self, instance_id: str, state: SavedState, columns: dict, kinds: list, now: datetime,
               kept: tuple[int, int, bytes] | None = None, ended: str | None = None) -> None:
        """A checkpoint's writes (row, consumed events, history, the kept checkpoint when the instance keeps a
        history: ``kept`` = (how many, step, state blob)) and, when the executor owns it, the commit."""
        # The executor owns the transaction (commit=True): no savepoint, its rollback undoes everything
        # after a failed checkpoint. Otherwise the writes below are one unit in the caller's transaction.
        with nullcontext() if self.commit else transaction.atomic(using=self.using):
            parent = self._parent_of(state) if ended is not None else None
            if self.worker_id:
                n = self._update_sql(instance_id, columns)
            else:
                n = self._update_orm(instance_id, columns)
            if n != 1:
                if self.worker_id or DurableInstance.objects.using(self.using).filter(pk=instance_id).exists():
                    raise self._lease_lost(instance_id)
                assert self._context is not None  # save_state_sync() set it for this instance
                try:
                    with transaction.atomic(using=self.using):
                        DurableInstance.objects.using(self.using).create(
                            instance_id=instance_id, program=self._context[1], **columns)
                except IntegrityError:
                    raise LeaseLost(f"instance {instance_id!r} was created concurrently") from None
            if self._consumed:
                self.db.consume_events(self._consumed, now)
            for kind, st, detail in kinds:
                self.db.add_history(instance_id, kind, st, detail, self.worker_id, now)
            if kept is not None:
                assert self._context is not None  # save_state_sync() set it for this instance
                keep, step, blob = kept
                checkpoints.write(instance_id, step, state, keep,
                                  checkpoints.checkpoint_blob(instance_id, self._context[1], state_blob=blob),
                                  using=self.using)
            if ended is not None:
                self._ended(instance_id, state, ended, parent)
        if self.commit:
            transaction.commit(using=self.using)

    # -- kept checkpoints (history for forks, see durable_django.checkpoints) ----------
    async def list_checkpoints(self, instance_id: str) -> list[dict]:
        """The kept checkpoints, oldest first: ``step``, ``status``, ``position``, ``at`` (a datetime)."""
        return await sync_to_async(checkpoints.listing, thread_sensitive=True)(instance_id, using=self.using)

    async def load_checkpoint(self, instance_id: str, step: int) -> SavedState | None:
        """Kept checkpoint ``step``, its signature verified (``StateTamperedError`` otherwise), or None when it
        is not kept (the contract of :mod:`durable.history`)."""
        def load() -> SavedState | None:
            return checkpoints.load(instance_id, self._program_of(instance_id), step, using=self.using)
        return await sync_to_async(load, thread_sensitive=True)()

    def _program_of(self, instance_id: str) -> str:
        ctx = self._context
        if ctx is not None and ctx[0] == instance_id:
            return ctx[1]
        program = (DurableInstance.objects.using(self.using).filter(pk=instance_id)
                   .values_list("program", flat=True).first())
        return self.program or program or ""

    def _lease_lost(self, instance_id: str) -> LeaseLost:
        return LeaseLost(f"worker {self.worker_id or '-'} no longer owns durable instance {instance_id!r} "
                         "(lease taken over, or the instance was cancelled or suspended)")

    def _lease_due(self, now: datetime) -> bool:
        """Extend the lease at this checkpoint? Only once half of it has elapsed (the heartbeat covers
        long steps), so that most checkpoints change no indexed column (HOT updates on PostgreSQL)."""
        return extension_due(self.lease_expires_at, now)

    def _update_orm(self, instance_id: str, columns: dict) -> int:
        rows = DurableInstance.objects.using(self.using).filter(pk=instance_id).exclude(status__in=_FINAL)
        if self.worker_id:
            rows = rows.filter(lease_owner=self.worker_id)
        return rows.update(version=F("version") + 1, **columns)

    def _update_sql(self, instance_id: str, columns: dict, consumed: list | tuple = (), kinds: list | tuple = (),
                    now: datetime | None = None) -> int:
        """The checkpoint's UPDATE of the row under the lease, as one cached parameterized statement.

        Columns whose value is what this backend wrote at its previous checkpoint are left out, so the
        usual running checkpoint writes only non-indexed columns (state, steps, position, updated_at,
        version). ``consumed`` events and ``kinds`` of history entries (PostgreSQL) are written by the
        same statement, only when the row was updated. Returns how many rows were updated.
        """
        written = self._written
        if written:
            columns = {k: v for k, v in columns.items() if k not in written or written[k] != v}
        return self.db.checkpoint(instance_id, self.worker_id, columns, consumed, kinds, now)

    # -- events -----------------------------------------------------------
    async def wait_for_event(self, instance_id: str, event_name: str) -> Any:
        branch = current_branch.get()  # a parallel branch's wait: its own checkpoint consumes the event
        if self.inline:
            return hidden_loop_call(self.wait_for_event_sync, instance_id, event_name, branch)
        return await sync_to_async(self.wait_for_event_sync, thread_sensitive=True)(instance_id, event_name, branch)

    def wait_for_event_sync(self, instance_id: str, event_name: str, branch: str | None = None) -> Any:
        """Take the oldest unconsumed event of that name; it is marked consumed by the next checkpoint (of
        ``branch``, when a parallel branch waits)."""
        early, self.prefetched_event = self.prefetched_event, None
        if early is not None and early[0] == event_name and not self._consumed and branch is None:
            self._consumed.append(early[1])
            return self.db.event_payload(early[2])
        ev = self.db.next_event(instance_id, event_name, self._skip())
        if ev is None:
            raise PauseForEventException(event_name, instance_id=instance_id)
        self._took(ev[0], branch)
        return ev[1]

    async def wait_for_answer(self, instance_id: str, event_name: str, meta: dict) -> Any:
        """A wait with metadata: a human task (assignee or form, see :mod:`durable_django.humantasks`) takes
        only an event that answers it; any other wait is :meth:`wait_for_event`."""
        if not is_task_meta(meta):
            return await self.wait_for_event(instance_id, event_name)
        branch = current_branch.get()
        if self.inline:
            return hidden_loop_call(self.wait_for_answer_sync, instance_id, event_name, meta, branch)
        return await sync_to_async(self.wait_for_answer_sync, thread_sensitive=True)(instance_id, event_name, meta,
                                                                                   branch)

    def wait_for_answer_sync(self, instance_id: str, event_name: str, meta: dict, branch: str | None = None) -> Any:
        """Take the oldest unconsumed event of that name whose publisher may answer the wait and whose payload
        fits its form (both checked now, against the wait's signed metadata, however early the event was
        published); return the cleaned payload. Every older event that does not fit is rejected on the way:
        it leaves the inbox unused, with the reason on the event and in the history. A human-task wait is
        rarely reached, so this costs a query or two more than :meth:`wait_for_event` only there."""
        self.prefetched_event = None
        events = DurableEvent.objects.using(self.using)
        while True:
            skip = [*self._skip(), *(r[0] for r in self._rejected)]
            ev = (events.filter(instance_id=instance_id, name=event_name, consumed_at__isnull=True)
                  .exclude(pk__in=skip).order_by("id").values_list("id", "payload", "publisher_id").first())
            if ev is None:
                raise PauseForEventException(event_name, instance_id=instance_id)
            ok, value = judge_answer(meta, ev[2], ev[1])
            if ok:
                self._took(ev[0], branch)
                return value
            record = (ev[0], instance_id, event_name, str(value)[:2000])
            self._rejected.append(record)
            self._write_rejection(*record)
            if not self.commit:  # the caller's transaction (or autocommit) keeps it
                self._rejected.remove(record)

    def _write_rejection(self, event_id: int, instance_id: str, event_name: str, reason: str) -> None:
        now = timezone.now()
        n = (DurableEvent.objects.using(self.using).filter(pk=event_id, consumed_at__isnull=True)
             .update(consumed_at=now, rejected=reason))
        if n:
            self.db.add_history(instance_id, HistoryKind.EVENT_REJECTED, self.last_status or Status.RUNNING,
                                f"event {event_name!r} #{event_id} rejected: {reason}", self.worker_id, now)

    async def discard_step_writes(self, instance_id: str) -> None:
        """The core's hook when a step raised: roll back the step's uncommitted ORM writes (see
        :meth:`discard_step_writes_sync`)."""
        if self.inline:
            return hidden_loop_call(self.discard_step_writes_sync, instance_id)
        await sync_to_async(self.discard_step_writes_sync, thread_sensitive=True)(instance_id)

    def discard_step_writes_sync(self, instance_id: str) -> None:
        """Roll back what the failed step wrote, so that neither a retry attempt nor the program's ``except``
        commits half of it with the next checkpoint.

        Only in the transaction the executor manages (``commit``): it holds nothing but this step's writes,
        as the previous checkpoint committed. Inside a caller's ``atomic`` block the caller decides. Events a
        human-task wait rejected since the last checkpoint were written in the same transaction: they are
        written again, so that the rejected events do not come back to the inbox.
        """
        if not self.commit:
            return
        conn = self.db.connection
        if conn.connection is None or conn.get_autocommit() or conn.in_atomic_block:
            return
        conn.rollback()
        for record in self._rejected:
            self._write_rejection(*record)

    @property
    def uncommitted_rejections(self) -> bool:
        """Events rejected since the last checkpoint, in the executor's transaction (not committed yet)."""
        return bool(self._rejected)

    def commit_rejections(self) -> None:
        """Write the rejections again after the executor rolled back a run that paused without a
        checkpoint (the wait was not over), so the rejected events leave the inbox for good."""
        for record in self._rejected:
            self._write_rejection(*record)
        self._rejected = []

    def publish_event(self, instance_id: str, event_name: str, payload: Any = None) -> None:
        """Deliver an event (see :func:`durable_django.publish_event`)."""
        publish_event(instance_id, event_name, payload, using=self.using)
