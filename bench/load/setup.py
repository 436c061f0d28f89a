"""Set-up of the load suite: its sizes, which instance plays which part, and the 100,000 waiting instances
(template rows run through the app, then cloned with ``COPY``)."""

from __future__ import annotations

import argparse
import datetime
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .programs import EFFECT_TABLE, EVENT, StopHere, prepare_then_record, sleep_then_record, wait_then_record


@dataclass(frozen=True)
class LoadConfig:
    quick: bool
    instances: int        # rows in the database, all waiting
    targets: int          # instances the publishers send "go" to
    publishers: int
    workers: int
    due_each: int         # per kind of due row: expired lease, due timer, event without wake-up
    future_timers: int    # instances paused on a timer that is not due
    admin_repeats: int
    sweep_repeats: int
    timeout_s: float      # deadline for the workers to complete what was sent
    rate: float           # events/s over all publishers; 0: as fast as they can
    wakeup_samples: int   # instances woken in process (half with, half without the human-task receivers)
    repeat_share: float = 0.10      # targets sent twice in a row by one publisher (same idempotency key)
    concurrent_share: float = 0.10  # targets sent by two publishers at about the same moment
    late_share: float = 0.05        # targets sent again at the end (usually finished by then)


def make_config(args: argparse.Namespace) -> LoadConfig:
    """The sizes of a run from its command line (``--quick`` picks smaller defaults)."""
    quick = args.quick
    instances = args.instances or (5_000 if quick else 100_000)
    targets = args.targets or (200 if quick else 1_000)
    due = args.due or (20 if quick else 100)
    future = min(1_000 if not quick else 100, instances // 20)
    if targets + 3 * due + future > instances:
        raise SystemExit(f"--instances {instances} is too small for {targets} targets and {3 * due + future} "
                         "due/timer rows")
    return LoadConfig(quick=quick, instances=instances, targets=targets, publishers=args.publishers,
                      workers=args.workers, due_each=due, future_timers=future, admin_repeats=3 if quick else 7,
                      sweep_repeats=3 if quick else 5, timeout_s=args.timeout or (120.0 if quick else 900.0),
                      rate=args.rate, wakeup_samples=40 if quick else 200)


class Timer:
    """Seconds since it was made (:attr:`s`)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def s(self) -> float:
        return time.perf_counter() - self.t0


def log(msg: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(f"  [load] {msg}", file=sys.stderr, flush=True)


@dataclass
class Roles:
    """Which instance ids play which part (fixed by the seed)."""

    targets: list[str]
    due_timers: list[str]
    expired_leases: list[str]
    lost_wakeups: list[str]
    future_timers: list[str]
    waiting: list[str]   # plain event waiters nobody touches

    @property
    def due(self) -> set[str]:
        return {*self.due_timers, *self.expired_leases, *self.lost_wakeups}


def assign_roles(cfg: LoadConfig, seed: int = 5) -> Roles:
    width = max(6, len(str(cfg.instances - 1)))
    ids = [f"load-{i:0{width}d}" for i in range(cfg.instances)]
    order = ids[:]
    random.Random(seed).shuffle(order)
    cut = [cfg.targets, cfg.due_each, cfg.due_each, cfg.due_each, cfg.future_timers]
    parts, at = [], 0
    for n in cut:
        parts.append(order[at:at + n])
        at += n
    rest = set(order[at:])
    return Roles(*parts, waiting=[i for i in ids if i in rest])


def _templates() -> dict[str, dict[str, Any]]:
    """Run one instance of each kind through the app until it waits; return their rows and decoded states.

    * ``event``: ``wait_then_record`` paused on ``"go"`` (started with ``start()``, run inline);
    * ``timer``: ``sleep_then_record`` paused on its timer;
    * ``running``: ``prepare_then_record`` stopped right after the checkpoint of its first step (its
      worker "died" between the two steps): status ``running``.
    """
    from django.db import connection
    from django.test import override_settings

    import durable_django as dd
    from durable_django.backend import STATE, blob_context, unsign
    from durable_django.conf import durable_settings
    from durable_django.models import DurableHistory, DurableInstance

    base = durable_settings.user_settings()
    with override_settings(DURABLE={**base, "RUN_INLINE": True}):
        dd.start(wait_then_record, "load-template-event", instance_id="load-template-event")
        dd.start(sleep_then_record, "load-template-timer", instance_id="load-template-timer")
    stop = "bench.load.programs.stop_after_first_step"
    with override_settings(DURABLE={**base, "RUN_INLINE": True, "ON_CHECKPOINT": stop}):
        try:
            dd.start(prepare_then_record, "load-template-running", instance_id="load-template-running")
        except StopHere:
            pass
    out = {}
    for kind in ("event", "timer", "running"):
        iid = f"load-template-{kind}"
        row = DurableInstance.objects.filter(pk=iid).values().get()
        expected = {"event": "paused", "timer": "paused", "running": "running"}[kind]
        if row["status"] != expected:
            raise RuntimeError(f"template {iid} is {row['status']}, expected {expected}")
        history = list(DurableHistory.objects.filter(instance_id=iid).order_by("id").values("kind", "status",
                                                                                            "detail"))
        state = unsign(row["state"], blob_context(iid, row["program"], STATE))
        out[kind] = {"row": row, "state": state, "history": history}
    # The templates leave no rows behind: the database holds exactly the clones.
    DurableInstance.objects.filter(pk__startswith="load-template-").delete()
    with connection.cursor() as cur:
        cur.execute(f"TRUNCATE {EFFECT_TABLE}")
    return out


def _create_effect_table() -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {EFFECT_TABLE} (id bigserial PRIMARY KEY, instance_key text NOT NULL, "
                    "target text, at timestamptz NOT NULL)")


def populate(cfg: LoadConfig, roles: Roles) -> dict[str, Any]:
    """Create ``cfg.instances`` waiting instances by cloning the template rows with ``COPY``; timed."""
    from django.db import connection, transaction
    from django.utils import timezone

    from durable_django.backend import ARGUMENTS, STATE, blob_context, sign
    from durable_django.models import DurableHistory, DurableInstance

    t_all = Timer()
    _create_effect_table()
    t = Timer()
    tpl = _templates()
    template_s = t.s

    kind_of: dict[str, str] = {}
    for iid in roles.due_timers + roles.future_timers:
        kind_of[iid] = "timer"
    for iid in roles.expired_leases:
        kind_of[iid] = "running"
    now = timezone.now()
    fields = [f for f in DurableInstance._meta.concrete_fields]
    columns = [f.column for f in fields]
    attnames = [f.attname for f in fields]
    due_timers = set(roles.due_timers)
    expired = set(roles.expired_leases)
    all_ids = sorted([*roles.targets, *roles.due_timers, *roles.expired_leases, *roles.lost_wakeups,
                      *roles.future_timers, *roles.waiting])
    assert len(all_ids) == cfg.instances and len(set(all_ids)) == cfg.instances, "roles overlap"

    sign_s = 0.0
    copy_t = Timer()
    raw_rows = 0
    with transaction.atomic():
        connection.ensure_connection()
        raw = connection.connection
        with raw.cursor() as cur:
            with cur.copy(f"COPY {DurableInstance._meta.db_table} ({', '.join(columns)}) FROM STDIN") as cp:
                for n, iid in enumerate(all_ids):
                    kind = kind_of.get(iid, "event")
                    t_sign = time.perf_counter()
                    state = tpl[kind]["state"]
                    for frame in state["stack"]:  # the key, and a payload computed from it (also in a temporary)
                        for name, value in list(frame.locals.items()):
                            if name == "key":
                                frame.locals[name] = iid
                            elif isinstance(value, dict) and "target" in value:
                                frame.locals[name] = {**value, "target": iid}
                    row = dict(tpl[kind]["row"])
                    if kind == "timer":
                        due = (now - datetime.timedelta(minutes=5) if iid in due_timers
                               else now + datetime.timedelta(hours=1, seconds=n % 3600))
                        state["wait"] = {**state["wait"], "due": due.timestamp()}
                        row["wake_at"] = due
                    row["state"] = sign(state, blob_context(iid, row["program"], STATE))
                    row["arguments"] = sign(((iid,), {}), blob_context(iid, row["program"], ARGUMENTS))
                    sign_s += time.perf_counter() - t_sign
                    created = now - datetime.timedelta(seconds=(cfg.instances - n) * 0.5)
                    row.update(instance_id=iid, created_at=created, updated_at=created, version=0)
                    if iid in expired:
                        row.update(lease_owner="load-dead-worker:1", lease_expires_at=now - datetime.timedelta(
                            minutes=10), attempts=1)
                    cp.write_row([row[a] for a in attnames])
                    raw_rows += 1
        hist_cols = ["instance_id", "kind", "status", "detail", "actor", "at"]
        with raw.cursor() as cur:
            with cur.copy(f"COPY {DurableHistory._meta.db_table} ({', '.join(hist_cols)}) FROM STDIN") as cp:
                for n, iid in enumerate(all_ids):
                    created = now - datetime.timedelta(seconds=(cfg.instances - n) * 0.5)
                    for h in tpl[kind_of.get(iid, "event")]["history"]:
                        cp.write_row([iid, h["kind"], h["status"], h["detail"], "load-clone", created])
    copy_s = copy_t.s - sign_s
    # Events whose wake-up was lost (the sweep must find them): rows only, no Celery message.
    from durable_django.models import DurableEvent

    DurableEvent.objects.bulk_create([DurableEvent(instance_id=iid, name=EVENT, payload={"target": iid},
                                                   idempotency_key=f"{EVENT}-{iid}") for iid in roles.lost_wakeups])
    t = Timer()
    with connection.cursor() as cur:
        cur.execute("VACUUM ANALYZE")  # what autovacuum does after a bulk load, now rather than at a random moment
    analyze_s = t.s
    counts = dict(Counter(DurableInstance.objects.values_list("status", flat=True).order_by()))
    return {"seconds": t_all.s, "template_runs_s": template_s, "sign_s": sign_s, "copy_s": copy_s,
            "analyze_s": analyze_s, "rows": raw_rows, "rows_per_s": raw_rows / t_all.s, "status_counts": counts,
            "history_rows": DurableHistory.objects.count(),
            "state_bytes": {k: len(v["row"]["state"]) for k, v in tpl.items()},
            "method": "one instance of each kind run through start()/the executor until it waits; its row and "
                      "history cloned with COPY, locals and arguments re-signed per clone (sign())"}

