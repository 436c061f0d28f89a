"""Child instances on the Django app: the backend's hooks behind ``durable.start_child`` and ``await child``.

A mixin of :class:`~durable_django.backend.DjangoOrchestrationBackend` (the
core calls ``start_child``, ``child_outcomes`` and ``cancel_child`` when it has
them, see :mod:`durable.children`).

**Starting.** ``start_child`` inserts the child's row (``pending``, its
program by its dotted path, ``parent`` and ``on_parent_close`` set) in the
parent's open transaction: the parent's next checkpoint, which records the
child in the parent's state, commits both, and the child's wake-up is sent
after that commit (one message per ``BATCH_SIZE`` children). A crash before
that checkpoint leaves neither. A start is idempotent by id: a row that is
already this parent's child is left as it is; any other row with that id is a
:class:`durable.DurableError` raised at the parent's ``await``.

**Awaiting.** ``child_outcomes`` reads the ended children among the awaited
ids in one query (their verified states, ``durable.state.ended_outcome``).

**Waking the parent** (the design, and what it costs). Once a child's last
checkpoint (completed, failed or cancelled) has committed, :meth:`ChildHooks._ended`
looks at its parent (after the commit, holding no lock: children that end
together do not wait for each other):

1. the parent's row is read; nothing more happens unless it is ``paused`` on
   a wait of kind ``child``, ``children`` or ``branches``;
2. its state is read and verified, and its wait decides: a ``child`` wait on
   this child, or a ``children`` wait with mode ``first``, wakes it; a
   ``children`` wait with mode ``all`` wakes it when this child failed or was
   cancelled (unless ``return_exceptions``), or when no other awaited child
   is unfinished (a few of the parent's unfinished children, through the
   parent-and-status index, usually settle it; else one ``EXISTS`` over the
   awaited ids, 500 per query). A ``branches`` wait is searched for
   such waits in every branch (nested groups too);
3. a wake sets the parent's ``wake_at`` to now (the sweep's "due" query finds
   it even if no message is ever sent) and sends it a wake-up after commit.

Looking after the commit makes the "no other unfinished" test safe: of two
children that end at once, the one that commits last sees the other's end
(READ COMMITTED on PostgreSQL and, as Django sets it, MySQL/MariaDB; SQLite
has one writer); both may wake the parent, which then finds its wait over
once. A parent that is still running when its child ends is not woken: the
worker checks a child wait once more after the pause it saved
(:func:`durable_django.worker`), which sees every child's end committed
before that check; a child that commits later sees the pause.

Cost: for a fan-out of N children awaited with ``gather``, each child's end
costs one SELECT of the parent row (with its state blob, verified and
unpickled) and one indexed query of a few unfinished children; the parent is
woken once (by the last child, or by the first failure), not N times. ``first`` and single ``await
child`` wake it once per ended child it waits for (the first one does it).
The sweep's safety net (:func:`parents_to_wake`) finds paused parents whose
children ended after the parent's last write, for wake-ups lost otherwise
(a child ended by a forced cancellation, a broker outage).

**Parent-close.** When the parent ends, its last checkpoint requests the
cancellation of its unfinished ``"cancel"`` children in the same transaction
(``cancel_requested_at`` and a history entry each; woken after commit), so a
crash after it loses none; the core's later ``cancel_child`` calls then find
the request made and do nothing. ``"abandon"`` children run on; ``"wait"``
children keep the parent paused (the core) and wake it as above.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.db import IntegrityError, models, transaction

from durable import DurableError, InstanceCancelled, StateTamperedError
from durable.state import ended_outcome

from . import clock, limits, programs, wakeups
from .conf import durable_settings
from .eventloop import hidden_loop_call
from .exceptions import InvalidPayload
from .models import FINISHED, DurableHistory, DurableInstance, HistoryKind, Status
from .signing import ARGUMENTS, STATE, blob_context, sign, unsign

#: Waits that may be waiting for a child (a ``branches`` wait holds its branches' waits).
CHILD_WAITS = ("child", "children", "branches")
#: Ids per ``IN (...)`` list (SQLite's variable limit).
CHUNK = 500
#: Unfinished children of a parent looked at first when one ends (see _wakes).
SAMPLE = 20
#: The statuses of an instance that has not ended (named, so that the parent-and-status index finds them).
UNFINISHED = [s for s in Status if s not in FINISHED]

#: (path, fn, args, kwargs, queue, priority) -> the flow-control columns of a new instance; set by
#: :func:`durable_django.flowcontrol.connect` (which sits above the backend).
start_fields: Callable[..., dict[str, Any]] | None = None


class ChildHooks:
    """The backend's child-instance hooks (see the module's docstring)."""

    using: str
    commit: bool
    inline: bool
    worker_id: str
    #: children whose cancellation this backend requested with their parent's last checkpoint
    _closed: set[str]
    #: children started since the last checkpoint, woken once it has committed (the executor's transaction)
    _new_children: list[str]

    async def _sync_call(self, func: Callable[..., Any], *args: Any) -> Any:
        if self.inline:
            return hidden_loop_call(func, *args)
        return await sync_to_async(func, thread_sensitive=True)(*args)

    # -- start ----------------------------------------------------------------------
    async def start_child(self, parent_id: str, child_id: str, program: Any, args: tuple[Any, ...],
                          kwargs: dict[str, Any], on_parent_close: str) -> None:
        """Create the child's row (pending) in the parent's open transaction; idempotent by id."""
        await self._sync_call(self.start_child_sync, parent_id, child_id, program, args, kwargs, on_parent_close)

    def start_child_sync(self, parent_id: str, child_id: str, program: Any, args: tuple[Any, ...],
                         kwargs: dict[str, Any], on_parent_close: str) -> None:
        path = limits.check_text(programs.path_of(program), "program path", limits.PROGRAM_COLUMN)
        limits.check_new_instance_id(child_id)  # InvalidInput (a DurableError): raised at the parent's await
        existing = _existing(child_id, self.using)
        if existing is not None:
            _check_own(child_id, parent_id, existing)
            return
        resolved = _resolved(path, program)
        fields = _child_fields(path, resolved, child_id, args, kwargs, parent_id, on_parent_close, clock.now())
        try:
            with transaction.atomic(using=self.using):  # a savepoint in the parent's step transaction
                DurableInstance.objects.using(self.using).create(instance_id=child_id, **fields)
                DurableHistory.objects.using(self.using).create(
                    instance_id=child_id, kind=HistoryKind.STARTED, status=Status.PENDING,
                    detail=f"child of {parent_id}", actor=self.worker_id)
        except IntegrityError:
            existing = _existing(child_id, self.using)
            if existing is None:
                raise
            _check_own(child_id, parent_id, existing)
            return
        self._started([child_id], path)

    async def start_children(self, parent_id: str, program: Any,
                             items: list[tuple[tuple[Any, ...], dict[str, Any], str]], on_parent_close: str) -> None:
        """Create many children's rows at once (``durable.start_children``): one query for the ids that exist, one
        INSERT of the rows and one of their history, in the parent's step transaction."""
        await self._sync_call(self.start_children_sync, parent_id, program, items, on_parent_close)

    def start_children_sync(self, parent_id: str, program: Any,
                            items: list[tuple[tuple[Any, ...], dict[str, Any], str]], on_parent_close: str) -> None:
        path = limits.check_text(programs.path_of(program), "program path", limits.PROGRAM_COLUMN)
        for _, _, child_id in items:
            limits.check_new_instance_id(child_id)
        existing: dict[str, str | None] = {}
        for chunk in _chunks([child_id for _, _, child_id in items]):
            existing.update(DurableInstance.objects.using(self.using).filter(pk__in=chunk)
                            .values_list("instance_id", "parent_id"))
        for child_id, parent in existing.items():
            _check_own(child_id, parent_id, (parent, path))
        resolved = _resolved(path, program)
        now = clock.now()
        new = [(child_id, _child_fields(path, resolved, child_id, args, kwargs, parent_id, on_parent_close, now))
               for args, kwargs, child_id in items if child_id not in existing]
        if not new:
            return
        try:
            with transaction.atomic(using=self.using):  # a savepoint in the parent's step transaction
                DurableInstance.objects.using(self.using).bulk_create(
                    [DurableInstance(instance_id=child_id, **fields) for child_id, fields in new], batch_size=CHUNK)
                DurableHistory.objects.using(self.using).bulk_create(
                    [DurableHistory(instance_id=child_id, kind=HistoryKind.STARTED, status=Status.PENDING,
                                    detail=f"child of {parent_id}", actor=self.worker_id) for child_id, _ in new],
                    batch_size=CHUNK)
        except IntegrityError:  # one was created concurrently: one by one, each idempotent
            for args, kwargs, child_id in items:
                self.start_child_sync(parent_id, child_id, program, args, kwargs, on_parent_close)
            return
        self._started([child_id for child_id, _ in new], path)

    def _started(self, ids: list[str], path: str) -> None:
        """New children: their signals after commit, and their wake-ups (after the checkpoint that records them)."""
        for child_id in ids:
            wakeups.signal_after_commit("started", child_id, Status.PENDING, path)
        if self.commit and self.worker_id and not durable_settings.RUN_INLINE:
            self._new_children.extend(ids)  # woken as soon as the checkpoint that records them commits
        else:
            for child_id in ids:
                wakeups.schedule(child_id)

    def _children_committed(self) -> None:
        """The checkpoint that records new children committed: wake them now (not at the end of the parent's
        run, which may go on for long), one message per ``BATCH_SIZE`` children."""
        ids, self._new_children = self._new_children, []
        wakeups.send_tasks(ids)

    # -- awaiting -------------------------------------------------------------------
    async def child_outcomes(self, ids: list[str]) -> dict[str, tuple[str, Any]]:
        """{child id: ("ok", result) | ("err", exception) | ("cancelled", exception)} of the ended ones."""
        found: dict[str, tuple[str, Any]] = await self._sync_call(self.child_outcomes_sync, ids)
        return found

    def child_outcomes_sync(self, ids: Sequence[str]) -> dict[str, tuple[str, Any]]:
        out: dict[str, tuple[str, Any]] = {}
        seen: set[str] = set()
        blob = models.Case(models.When(status__in=FINISHED, then=models.F("state")), default=models.Value(None),
                           output_field=models.BinaryField())
        for part in _chunks(list(dict.fromkeys(ids))):
            rows = (DurableInstance.objects.using(self.using).filter(pk__in=part).annotate(blob=blob)
                    .values_list("instance_id", "program", "status", "blob", "error"))
            for child_id, program, status, state, error in rows:
                seen.add(child_id)
                if status in FINISHED:
                    out[child_id] = outcome_of(child_id, program, status, state, error)
        for child_id in ids:
            if child_id not in seen:  # purged, or never created: the parent would wait for ever
                out[child_id] = ("err", DurableError(f"child instance {child_id!r} does not exist"))
        return out

    # -- cancel ---------------------------------------------------------------------
    async def cancel_child(self, child_id: str, reason: str) -> None:
        """Request the child's cancellation (it cleans up; see :mod:`durable_django.cancellation`)."""
        if child_id in self._closed:  # requested with the parent's last checkpoint
            return
        await self._sync_call(self.cancel_child_sync, child_id, reason)

    def cancel_child_sync(self, child_id: str, reason: str) -> None:
        with transaction.atomic(using=self.using):
            request_cancel([child_id], reason, self.worker_id, self.using)
        conn = transaction.get_connection(self.using)
        if self.commit and not conn.get_autocommit() and not conn.in_atomic_block:
            transaction.commit(using=self.using)  # the executor's transaction: the request outlives the run

    # -- the end of a child or a parent (inside its last checkpoint's transaction) ---------------
    def _parent_of(self, state: Mapping[str, Any]) -> tuple | None:
        """The parent of an instance whose last checkpoint is being written (looked at after it commits, see
        the module's docstring)."""
        parent = state.get("parent")
        return (parent[0],) if parent else None

    def _ended(self, instance_id: str, state: Mapping[str, Any], status: str, parent: tuple | None) -> None:
        """Called by the backend's last checkpoint of an instance, after its row's UPDATE, before the commit;
        ``parent``: the parent's row, locked by :meth:`_lock_parent`."""
        children = state.get("children") or {}
        doomed = [c for c, info in children.items() if info.get("on_parent_close") == "cancel"]
        if doomed:
            request_cancel(doomed, f"its parent {instance_id!r} ended", self.worker_id, self.using)
            self._closed.update(doomed)  # the core's cancel_child() calls that follow have nothing left to do
        if parent is not None:
            kind = "ok" if status == Status.COMPLETED else "err" if status == Status.FAILED else "cancelled"
            wakeups.after_commit(functools.partial(wake_parent, parent[0], instance_id, kind, self.using, lock=False))


def outcome_of(child_id: str, program: str, status: str, blob: Any, error: str) -> tuple[str, Any]:
    """An ended child's outcome from its row (a forced cancellation ends a row whose state did not end)."""
    state = None
    if blob is not None:
        try:
            state = unsign(blob, blob_context(child_id, program, STATE))
        except StateTamperedError as exc:
            return "err", exc
    ended = ended_outcome(state) if state is not None else None
    if ended is not None and (ended[0] == "cancelled") == (status == Status.CANCELLED):
        return ended
    if status == Status.CANCELLED:
        line = error.splitlines()[0] if error else ""
        return "cancelled", InstanceCancelled(f"instance {child_id!r} was cancelled" + (f": {line}" if line else ""))
    return "err", DurableError(f"child instance {child_id!r} {status}: {error[-2000:]}")


def request_cancel(ids: Sequence[str], reason: str, actor: str, using: str) -> list[str]:
    """Request the cancellation of the unfinished ones among ``ids`` that have no request yet (the caller's
    transaction); returns them. Each is woken after commit."""
    now = clock.now()
    asked: list[tuple[str, str, str]] = []
    for part in _chunks(list(ids)):
        rows = (DurableInstance.objects.using(using).select_for_update()
                .filter(pk__in=part, cancel_requested_at__isnull=True).exclude(status__in=FINISHED)
                .values_list("instance_id", "status", "program"))
        asked.extend(rows)
    if not asked:
        return []
    for part in _chunks([a[0] for a in asked]):
        DurableInstance.objects.using(using).filter(pk__in=part).update(
            cancel_requested_at=now, cancel_reason=reason, updated_at=now, version=models.F("version") + 1)
    DurableHistory.objects.using(using).bulk_create(
        [DurableHistory(instance_id=iid, kind=HistoryKind.CANCEL_REQUESTED, status=st, detail=reason, actor=actor)
         for iid, st, _ in asked])
    for iid, st, program in asked:
        wakeups.schedule_and_signal(iid, "cancel_requested", st, program, detail=reason)
    return [a[0] for a in asked]


def wake_parent(parent_id: str, child_id: str, kind: str, using: str, row: tuple | None = None, *,
                lock: bool = True) -> bool:
    """Wake ``parent_id`` if the end of ``child_id`` (``kind``: ok, err, cancelled) ends its wait (the caller's
    transaction; see the module's docstring). ``row``: the parent's (status, wait_kind, program, state), when the
    caller locked it already. Returns whether it did."""
    if row is None:
        rows = DurableInstance.objects.using(using)
        if not lock:
            siblings = rows.filter(parent_id=models.OuterRef("pk"))
            count = siblings.order_by().values("parent_id").annotate(n=models.Count("pk")).values("n")
            head = (rows.filter(pk=parent_id)
                    .annotate(n=models.Subquery(count),
                              running=models.Exists(siblings.filter(status__in=UNFINISHED).exclude(pk=child_id)))
                    .values_list("status", "wait_kind", "waiting_for", "n", "running").first())  # one query
            if head is None or head[0] != Status.PAUSED or head[1] not in CHILD_WAITS:
                return False
            awaited = head[2].partition(" children")[0] if head[1] == "children" and kind == "ok" else ""
            if awaited.isdigit() and head[3] == int(awaited) and head[4]:
                # a gather of all the parent's children ("N children"), and one of them still runs: the last one
                # wakes it (without reading the parent's state at every child's end)
                return False
        row = ((rows.select_for_update() if lock else rows).filter(pk=parent_id)
               .values_list("status", "wait_kind", "program", "state").first())
    if row is None:
        return False
    status, wait_kind, program, blob = row
    if status != Status.PAUSED or wait_kind not in CHILD_WAITS:
        return False
    try:
        wait = unsign(blob, blob_context(parent_id, program, STATE)).get("wait") if blob is not None else None
    except StateTamperedError:
        wait = None  # its run suspends it; waking it shows that
        wake = True
    else:
        wake = wait is not None and _wakes(wait, child_id, kind, using, parent_id)
    if wake:
        wake_now(parent_id, using)
    return wake


def wake_now(instance_id: str, using: str) -> None:
    """Make a paused instance due now (the sweep finds it) and wake it after commit."""
    DurableInstance.objects.using(using).filter(pk=instance_id, status=Status.PAUSED).update(wake_at=clock.now())
    wakeups.schedule(instance_id)


def _wakes(wait: Mapping[str, Any], child_id: str, kind: str, using: str, parent_id: str | None = None) -> bool:
    """Does the end of ``child_id`` end ``wait`` (or, for a ``branches`` wait, one branch's wait)?"""
    wait_kind = wait.get("kind")
    if wait_kind == "branches":
        return any(_wakes(w, child_id, kind, using, parent_id) for w in wait.get("waits") or ())
    if wait_kind == "child":
        return wait.get("child") == child_id
    if wait_kind != "children":
        return False
    ids = list(wait.get("children") or ())
    if child_id not in ids:
        return False
    if wait.get("mode") == "first" or (kind != "ok" and not wait.get("return_exceptions")):
        return True
    others = [c for c in ids if c != child_id]
    if parent_id is not None:
        # A fan-out awaits (nearly) all the parent's children: a few of its unfinished ones, through the parent
        # index, settle it without an IN list of every awaited id (which made each child's end O(children)).
        sample = list(DurableInstance.objects.using(using).filter(parent_id=parent_id, status__in=UNFINISHED)
                      .exclude(pk=child_id).values_list("pk", flat=True)[:SAMPLE])
        awaited = set(others)
        if any(c in awaited for c in sample):
            return False
        if len(sample) < SAMPLE:
            return True  # every unfinished child of the parent was seen, none is awaited
    return not _any_unfinished(others, using)


def wait_ready(wait: Mapping[str, Any], using: str | None = None) -> bool:
    """Would a child wait (or a branch's, in a ``branches`` wait) end now? The worker's check after a pause it
    saved: a child that ended while the parent was running did not wake it (see the module's docstring)."""
    kind = wait.get("kind")
    if kind == "branches":
        return any(wait_ready(w, using) for w in wait.get("waits") or ())
    if kind not in ("child", "children"):
        return False
    ids = [wait["child"]] if kind == "child" else list(wait.get("children") or ())
    ended: dict[str, str] = {}
    for part in _chunks(ids):
        ended.update(DurableInstance.objects.using(using).filter(pk__in=part, status__in=FINISHED)
                     .values_list("instance_id", "status"))
    if kind == "child" or wait.get("mode") == "first":
        return bool(ended)
    if not wait.get("return_exceptions") and any(st != Status.COMPLETED for st in ended.values()):
        return True
    return len(ended) == len(set(ids))


def _any_unfinished(ids: Iterable[str], using: str) -> bool:
    rows = DurableInstance.objects.using(using).exclude(status__in=FINISHED)
    return any(rows.filter(pk__in=part).exists() for part in _chunks(list(ids)))


def parents_to_wake(now: datetime, limit: int) -> list[str]:
    """The sweep's safety net: paused parents waiting on children, free, with a child that ended after the
    parent's last write and a wait that the ended children end (a wake-up that was lost, or a child ended by a
    forced cancellation). One query, then one verified state per candidate."""
    ended = DurableInstance.objects.filter(parent=models.OuterRef("pk"), status__in=FINISHED,
                                           finished_at__gte=models.OuterRef("updated_at"))
    free = models.Q(lease_expires_at__isnull=True) | models.Q(lease_expires_at__lt=now)
    rows = (DurableInstance.objects.filter(free, status=Status.PAUSED, wait_kind__in=CHILD_WAITS)
            .filter(models.Exists(ended)).order_by("updated_at").values_list("pk", "program", "state"))
    out = []
    for parent_id, program, blob in rows[:limit]:
        # only those whose wait would end: a gather of many children is not woken while most still run
        try:
            wait = unsign(blob, blob_context(parent_id, program, STATE)).get("wait") if blob is not None else None
        except Exception:  # noqa: BLE001 - unreadable (tampered, code gone): its run says why (it suspends)
            wait = None
            out.append(parent_id)
        if wait is not None and wait_ready(wait):
            out.append(parent_id)
    return out


def _resolved(path: str, program: Any) -> Any:
    resolved = programs.resolve(path)
    if resolved.fn is not getattr(program, "fn", program):
        raise DurableError(f"{path!r} does not import back to the program given to start_child()")
    return resolved


def _child_fields(path: str, resolved: Any, child_id: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                  parent_id: str, on_parent_close: str, now: datetime) -> dict[str, Any]:
    """A new child row's columns (its arguments checked against the program and signed)."""
    try:
        limits.bind_arguments(resolved.fn, path, args, kwargs)
    except TypeError as exc:
        raise InvalidPayload(f"start_child({path}): {exc}") from exc
    deadline = getattr(resolved, "deadline", None)
    fields: dict[str, Any] = {
        "program": path, "program_version": programs.program_version(resolved),
        "arguments": sign((args, kwargs), blob_context(child_id, path, ARGUMENTS)),
        "layout_hash": resolved.compiled.layout_hash, "status": Status.PENDING,
        "deadline": limits.check_deadline(deadline, now) if deadline is not None else None,
        "parent_id": parent_id, "on_parent_close": on_parent_close,
    }
    limits.check_arguments(fields["arguments"], path)
    if start_fields is not None:
        fields.update(start_fields(path, resolved.fn, args, kwargs, None, None))
    return fields


def _existing(child_id: str, using: str) -> tuple[str | None, str] | None:
    return (DurableInstance.objects.using(using).filter(pk=child_id)
            .values_list("parent_id", "program").first())


def _check_own(child_id: str, parent_id: str, existing: tuple[str | None, str]) -> None:
    if existing[0] != parent_id:
        raise DurableError(f"instance {child_id!r} already exists and is not a child of {parent_id!r}")


def _chunks(ids: list[str]) -> Iterable[list[str]]:
    for k in range(0, len(ids), CHUNK):
        yield ids[k:k + CHUNK]


__all__ = ["CHILD_WAITS", "ChildHooks", "outcome_of", "parents_to_wake", "request_cancel", "wait_ready",
           "wake_now", "wake_parent"]
