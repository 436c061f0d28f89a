"""The statements of flow control (:mod:`durable_django.flowcontrol`): concurrency slots and rate windows.

A slot row (limit key, slot number) names its holder; whether the holder
still holds it is read from the holder's instance row, so that a killed
worker's slot frees by itself when its lease expires (no write, no
janitor). Taking a slot is a compare-and-swap on the slot's ``version``:
the candidate is chosen from a snapshot, and the UPDATE only succeeds if
nobody took or re-took that slot since. Rate windows are counters updated
with a conditional UPDATE.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import IntegrityError
from django.db.models import F

from ..models import RUNNABLE, DurableInstance, DurableRateWindow, DurableSlot
from .operations import Operations, _quoted
from .postgresql import _claim_batch_sql

#: How a slot's holder still holds it: while it runs under a live lease, or until it finishes.
RUNNING, FINISHED = "running", "finished"


def _holding(qn, hold: str) -> str:
    """SQL: the instance row ``i`` holds its slot (one parameter, now, for ``running``)."""
    runnable = f"i.{qn('status')} IN ({_quoted(RUNNABLE)})"
    if hold == FINISHED:
        return runnable
    return f"{runnable} AND i.{qn('lease_owner')} <> '' AND i.{qn('lease_expires_at')} > %s"


def _slots_and_holders(qn) -> str:
    """FROM: the slots ``s``, each with its holder's instance row ``i`` (a primary-key lookup per slot)."""
    return (f"{qn(DurableSlot._meta.db_table)} s LEFT JOIN {qn(DurableInstance._meta.db_table)} i "
            f"ON i.{qn('instance_id')} = s.{qn('holder')}")


def _free(qn, hold: str) -> str:
    """SQL: slot ``s`` (holder row ``i``) may be taken by the instance in the first parameter (params: it, [now])."""
    return (f"(s.{qn('holder')} = '' OR s.{qn('holder')} = %s OR i.{qn('instance_id')} IS NULL "
            f"OR NOT COALESCE(({_holding(qn, hold)}), FALSE))")


def _candidates_sql(qn, hold: str) -> str:
    return (f"SELECT s.{qn('id')}, s.{qn('version')} FROM {_slots_and_holders(qn)} WHERE s.{qn('limit_key')} = %s "
            f"AND s.{qn('slot')} < %s AND {_free(qn, hold)} "
            f"ORDER BY CASE WHEN s.{qn('holder')} = %s THEN 0 ELSE 1 END, s.{qn('slot')}")


def _take_sql(qn, hold: str, detached: bool) -> str:
    """One statement: pick a free slot and take it, conditional on its version as the pick read it.

    ``detached`` (PostgreSQL, autocommit): it does not wait for its WAL flush, as the claim does not (see
    ``durable_django.db.postgresql``): a slot needs no durability, since the run's first checkpoint commits
    synchronously after it, and after a database crash the instance is simply claimed and given a slot again.
    """
    table = qn(DurableSlot._meta.db_table)
    nosync = "nosync AS (SELECT set_config('synchronous_commit', 'off', true)), " if detached else ""
    return (f"WITH {nosync}c AS ({_candidates_sql(qn, hold)} LIMIT 1) "
            f"UPDATE {table} SET {qn('holder')} = %s, {qn('version')} = {table}.{qn('version')} + 1, "
            f"{qn('taken_at')} = %s FROM c{', nosync' if detached else ''} "
            f"WHERE {table}.{qn('id')} = c.{qn('id')} AND {table}.{qn('version')} = c.{qn('version')} "
            f"RETURNING {table}.{qn('id')}")


def _params(hold: str, instance_id: str, now: Any) -> list:
    return [instance_id, now] if hold == RUNNING else [instance_id]


def take_slot(db: Operations, limit_key: str, size: int, instance_id: str, hold: str, now: datetime) -> int | None:
    """Try once to take a free slot of ``limit_key`` (slots 0..size-1) for ``instance_id``; the slot's id or None.

    The instance's own slot comes first (a run that resumes, or an instance recovered from a dead worker, takes
    back the slot it had). None also when another worker took the chosen slot first: see :func:`slot_counts`.
    """
    conn = db.connection
    at = conn.ops.adapt_datetimefield_value(now)
    head = [limit_key, size, *_params(hold, instance_id, at), instance_id]
    if db.features.update_returning and conn.vendor in ("postgresql", "sqlite"):
        detached = conn.vendor == "postgresql" and conn.get_autocommit() and not conn.in_atomic_block
        sql = db._statement(conn, "slot-take", _take_sql, hold, detached)
        with db.cursor(conn) as cur:
            cur.execute(sql, [*head, instance_id, at])
            row = cur.fetchone()
        return None if row is None else int(row[0])
    # The generic path: the pick, then the compare-and-swap (MySQL cannot UPDATE ... FROM its own table).
    sql = db._statement(conn, "slot-candidates", _candidates_sql, hold)
    with conn.cursor() as cur:
        cur.execute(sql + " LIMIT 1", head)
        row = cur.fetchone()
    if row is None:
        return None
    slot_id, version = row
    done = DurableSlot.objects.using(db.alias).filter(pk=slot_id, version=version).update(
        holder=instance_id, version=F("version") + 1, taken_at=now)
    return slot_id if done else None


def slot_counts(db: Operations, limit_key: str, size: int, hold: str, now: datetime,
                instance_id: str = "") -> tuple[int, int]:
    """(slot rows that exist, slots free now) of ``limit_key`` among slots 0..size-1."""
    conn = db.connection
    at = conn.ops.adapt_datetimefield_value(now)

    def build(qn, hold: str) -> str:
        return (f"SELECT COUNT(*), COALESCE(SUM(CASE WHEN {_free(qn, hold)} THEN 1 ELSE 0 END), 0) "
                f"FROM {_slots_and_holders(qn)} WHERE s.{qn('limit_key')} = %s AND s.{qn('slot')} < %s")

    sql = db._statement(conn, "slot-counts", build, hold)
    with conn.cursor() as cur:
        cur.execute(sql, [*_params(hold, instance_id, at), limit_key, size])
        total, free = cur.fetchone()
    return int(total), int(free)


def create_slots(db: Operations, limit_key: str, size: int) -> None:
    """Make sure slots 0..size-1 of ``limit_key`` exist (created at the first use of a limit or a key)."""
    DurableSlot.objects.using(db.alias).bulk_create(
        [DurableSlot(limit_key=limit_key, slot=n) for n in range(size)], ignore_conflicts=True)


def give_back(db: Operations, slot_ids: list[int], instance_id: str) -> None:
    """Free slots taken by ``instance_id`` that it will not use (another limit refused it)."""
    DurableSlot.objects.using(db.alias).filter(pk__in=slot_ids, holder=instance_id).update(
        holder="", version=F("version") + 1)


def holders(db: Operations, limit_key: str, size: int, hold: str, now: datetime) -> list[str]:
    """The instances holding a slot of ``limit_key`` now (for the admin and the tests)."""
    conn = db.connection
    at = conn.ops.adapt_datetimefield_value(now)

    def build(qn, hold: str) -> str:
        table, inst = qn(DurableSlot._meta.db_table), qn(DurableInstance._meta.db_table)
        return (f"SELECT s.{qn('holder')} FROM {table} s WHERE s.{qn('limit_key')} = %s AND s.{qn('slot')} < %s "
                f"AND EXISTS (SELECT 1 FROM {inst} i WHERE i.{qn('instance_id')} = s.{qn('holder')} "
                f"AND {_holding(qn, hold)}) ORDER BY s.{qn('slot')}")

    sql = db._statement(conn, "slot-holders", build, hold)
    with conn.cursor() as cur:
        cur.execute(sql, [limit_key, size, *([at] if hold == RUNNING else [])])
        return [r[0] for r in cur.fetchall()]


def take_rate(db: Operations, limit_key: str, window: int, count: int) -> bool:
    """Count one start in ``window`` of rate limit ``limit_key`` if fewer than ``count`` did; False when full."""
    rows = DurableRateWindow.objects.using(db.alias)
    for _ in range(2):
        if rows.filter(limit_key=limit_key, window=window, count__lt=count).update(count=F("count") + 1):
            return True
        if rows.filter(limit_key=limit_key, window=window).exists():
            return False
        try:
            with db.atomic():
                rows.create(limit_key=limit_key, window=window, count=1)
        except IntegrityError:  # another worker created it first: count in it
            continue
        rows.filter(limit_key=limit_key, window__lt=window - 10).delete()  # old windows (recent ones stay visible)
        return True
    return False


# -- PostgreSQL: the claim and the program's slot in one statement ---------------------------------------------------
def _claim_with_slot_sql(qn, detached: bool) -> str:
    """The claim's UPDATE (as :func:`durable_django.db.postgresql._claim_batch_sql`) and, for a program in the
    limits passed as arrays (program, size, hold), the take of a free slot, in one round trip; the slot's id is the
    last column (NULL: the program has no limit, no slot was free, or its slots do not exist yet)."""
    slot, inst = qn(DurableSlot._meta.db_table), qn(DurableInstance._meta.db_table)
    finished = f"i.{qn('status')} IN ({_quoted(RUNNABLE)})"
    running = (f"{finished} AND i.{qn('lease_owner')} <> '' AND i.{qn('lease_expires_at')} > %s")
    nosync = "nosync AS (SELECT set_config('synchronous_commit', 'off', true)), " if detached else ""
    return (
        f"WITH {nosync}claimed AS ({_claim_batch_sql(qn, False)}), "
        f"lim AS (SELECT c.{qn('instance_id')} AS iid, l.program, l.size, l.hold FROM claimed c "
        f"JOIN unnest(%s::text[], %s::int[], %s::text[]) AS l(program, size, hold) ON l.program = c.{qn('program')}), "
        f"pick AS (SELECT s.{qn('id')} AS id, s.{qn('version')} AS version, lim.iid FROM lim "
        f"JOIN {slot} s ON s.{qn('limit_key')} = lim.program AND s.{qn('slot')} < lim.size "
        f"LEFT JOIN {inst} i ON i.{qn('instance_id')} = s.{qn('holder')} "
        f"WHERE s.{qn('holder')} = '' OR s.{qn('holder')} = lim.iid OR i.{qn('instance_id')} IS NULL "
        f"OR NOT COALESCE(CASE WHEN lim.hold = '{FINISHED}' THEN {finished} ELSE {running} END, FALSE) "
        f"ORDER BY CASE WHEN s.{qn('holder')} = lim.iid THEN 0 ELSE 1 END, s.{qn('slot')} LIMIT 1), "
        f"took AS (UPDATE {slot} SET {qn('holder')} = pick.iid, {qn('version')} = {slot}.{qn('version')} + 1, "
        f"{qn('taken_at')} = %s FROM pick WHERE {slot}.{qn('id')} = pick.id AND {slot}.{qn('version')} = pick.version "
        f"RETURNING {slot}.{qn('id')}) "
        f"SELECT claimed.*, (SELECT took.{qn('id')} FROM took) FROM claimed{', nosync' if detached else ''}")


def claim_with_slot(db: Operations, instance_id: str, worker_id: str, now: datetime, expires: datetime,
                    max_attempts: int, limits: Sequence[tuple[str, int, str]]) -> list[tuple]:
    """PostgreSQL: claim ``instance_id`` and take a slot of its program's concurrency limit (one of ``limits``:
    (program, size, hold)) in one statement: what the claim of a limited program costs instead of two round
    trips. Rows as ``claim_batch``'s, plus the slot's id (or None)."""
    conn = db.connection
    detached = conn.get_autocommit() and not conn.in_atomic_block
    sql = db._statement(conn, "claim-slot", _claim_with_slot_sql, detached)
    adapt = conn.ops.adapt_datetimefield_value
    programs, sizes, holds = (list(x) for x in zip(*limits, strict=True))
    with db.cursor(conn) as cur:
        cur.execute(sql, [worker_id, adapt(expires), adapt(now), [instance_id], max_attempts, programs, sizes, holds,
                          adapt(now), adapt(now)])
        return cur.fetchall()
