"""Child of the peer benchmark: django-durable on SQLite or PostgreSQL.

``python bench/peer_dd.py --db sqlite|pg --workdir DIR --out FILE [--quick]``
(started by :mod:`bench.peers`; settings in ``bench/peer_django_durable_settings.py``).

django-durable workflows are plain functions ``fn(ctx, **input)`` that call
``ctx.activity(name, *args)``; every time the workflow moves on, its engine
(``step_workflow``) runs the function again from the start and answers each
earlier activity from the event log (``HistoryEvent``). Its worker command is
not in the 0.1.1 package, so :func:`drive` does what a worker does, in this
process: ``step_workflow``, then ``execute_activity`` for the queued activity
tasks, until the workflow completes or waits for a signal.

Resume after K steps: building a K-step history by running it costs about
K²/2 event-log reads (each step replays all earlier ones), hours at K=10,000.
So the instances are *written*: the rows the engine writes for K completed
activities and a wait for the signal ``go``. Every run checks, at the
smallest K, that these rows equal those of a real run field by field, and the
resumed workflow must return the right value.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import peer_common as pc

MARKS: dict[int, float] = {}
#: N of the per-step figure (the other systems use 200; see main()).
DD_MAX_STEPS = 40


def _setup(db: str, workdir: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.peer_django_durable_settings"
    os.environ["PEERS_DD_DB"] = db
    os.environ["PEERS_DD_SQLITE"] = os.path.join(workdir, "dd.sqlite3")
    if db == "pg":
        pc.recreate_pg_database(pc.PG_DATABASES["dd"])
    else:
        for suffix in ("", "-wal", "-shm"):
            p = os.environ["PEERS_DD_SQLITE"] + suffix
            if os.path.exists(p):
                os.remove(p)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)  # the package ships no migrations


def _register() -> None:
    from django_durable.registry import register

    @register.activity(name="step")
    def step(acc: int, i: int) -> int:
        return acc + i

    @register.activity(name="mark")
    def mark(v: int) -> int:
        MARKS[v] = time.perf_counter()
        return v

    @register.workflow(name="many_steps")
    def many_steps(ctx: Any, n: int) -> int:
        acc = 0
        for i in range(n):
            acc = ctx.activity("step", acc, i)
        return acc

    @register.workflow(name="steps_then_wait")
    def steps_then_wait(ctx: Any, k: int) -> int:
        acc = 0
        for i in range(k):
            acc = ctx.activity("step", acc, i)
        extra = ctx.wait_signal("go")
        return ctx.activity("step", acc, extra)

    @register.workflow(name="event_loop")
    def event_loop(ctx: Any, rounds: int) -> int:
        total = 0
        for _ in range(rounds):
            v = ctx.wait_signal("go")
            total += ctx.activity("mark", v)
        return total


def drive(ex: Any) -> str:
    """What django-durable's worker does for one execution: step it and run its due activities until it rests."""
    from django.utils import timezone
    from django_durable.engine import execute_activity, step_workflow
    from django_durable.models import ActivityTask, WorkflowExecution

    while True:
        step_workflow(ex)
        ex.refresh_from_db()
        if ex.status not in (WorkflowExecution.Status.PENDING, WorkflowExecution.Status.RUNNING,
                             WorkflowExecution.Status.WAITING):
            return ex.status
        tasks = list(ActivityTask.objects.filter(execution=ex, status=ActivityTask.Status.QUEUED,
                                                 after_time__lte=timezone.now()).order_by("pos"))
        if not tasks:
            return ex.status
        for t in tasks:
            execute_activity(t)


def start(name: str, **inp: Any) -> Any:
    from django_durable.models import WorkflowExecution

    return WorkflowExecution.objects.create(workflow_name=name, input=inp)


def run_to_end(name: str, **inp: Any) -> Any:
    ex = start(name, **inp)
    status = drive(ex)
    pc.check(status, "COMPLETED", f"{name}{inp}")
    return ex.result


def write_waiting(k: int) -> Any:
    """The rows django-durable's engine leaves for ``steps_then_wait(k)`` paused on its signal, written directly."""
    from django.utils import timezone
    from django_durable.models import ActivityTask, HistoryEvent, WorkflowExecution

    ex = WorkflowExecution.objects.create(workflow_name="steps_then_wait", input={"k": k},
                                          status=WorkflowExecution.Status.WAITING)
    events = [HistoryEvent(execution=ex, type="workflow_started", pos=0, details={"input": {"k": k}})]
    tasks = []
    acc, now = 0, timezone.now()
    for i in range(k):
        events.append(HistoryEvent(execution=ex, type="activity_scheduled", pos=i,
                                   details={"activity_name": "step", "args": [acc, i], "kwargs": {}}))
        tasks.append(ActivityTask(execution=ex, activity_name="step", pos=i, args=[acc, i], kwargs={},
                                  status=ActivityTask.Status.COMPLETED, attempt=1, max_attempts=0, result=acc + i,
                                  after_time=now, started_at=now, finished_at=now))
        acc += i
        events.append(HistoryEvent(execution=ex, type="activity_completed", pos=i,
                                   details={"activity_name": "step", "result": acc}))
    events.append(HistoryEvent(execution=ex, type="signal_wait", pos=k, details={"name": "go"}))
    HistoryEvent.objects.bulk_create(events, batch_size=2000)
    ActivityTask.objects.bulk_create(tasks, batch_size=2000)
    return ex


def _rows(ex: Any) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], tuple[Any, ...]]:
    from django_durable.models import ActivityTask, HistoryEvent, WorkflowExecution

    events = list(HistoryEvent.objects.filter(execution=ex).order_by("id").values_list("type", "pos", "details"))
    tasks = list(ActivityTask.objects.filter(execution=ex).order_by("pos").values_list(
        "activity_name", "pos", "args", "kwargs", "status", "attempt", "max_attempts", "result", "error"))
    row = WorkflowExecution.objects.filter(pk=ex.pk).values_list("workflow_name", "input", "status", "result").get()
    return events, tasks, row


def check_written_equals_real(k: int) -> None:
    """The written rows of a K-step paused workflow must equal those a real run leaves."""
    real = start("steps_then_wait", k=k)
    pc.check(drive(real), "WAITING", f"real steps_then_wait({k}) before its signal")
    pc.check(_rows(write_waiting(k)), _rows(real), f"rows written for K={k} against a real run")


def _state_bytes(ex: Any) -> int:
    from django_durable.models import ActivityTask, HistoryEvent, WorkflowExecution

    rows: list[tuple[Any, ...]] = []
    for model, flt in ((WorkflowExecution, {"pk": ex.pk}), (HistoryEvent, {"execution": ex}),
                       (ActivityTask, {"execution": ex})):
        names = [f.attname for f in model._meta.concrete_fields]
        rows += list(model.objects.filter(**flt).values_list(*names))
    return pc.payload_bytes(rows)


def main() -> None:
    args = pc.child_args(__doc__.splitlines()[0], ("sqlite", "pg"))
    sz = pc.sizes(args.quick)
    _setup(args.db, args.workdir)
    _register()
    from importlib.metadata import version

    import django
    from django_durable.engine import send_signal

    floor = (pc.Floor("pg", pg_name=pc.PG_DATABASES["dd"]) if args.db == "pg"
             else pc.Floor("sqlite", sqlite_path=os.path.join(args.workdir, "floor.sqlite3")))
    res: dict[str, Any] = {"system": "django-durable", "db": args.db, "version": version("django-durable"),
                           "django": django.get_version(), "settings": {"floor": floor.settings}}
    # every step replays all earlier ones, so a run of N steps costs ~N²: a shorter run keeps the full run in
    # minutes, and only flatters django-durable (its mean per step grows with N)
    n = min(sz.steps_db, DD_MAX_STEPS)

    def plain() -> float:
        acc, t0 = 0, pc.now()
        for i in range(n):
            acc = acc + i
        return (pc.now() - t0) / n

    def timed(m: int) -> float:
        t0 = pc.now()
        got = run_to_end("many_steps", n=m)
        dt = pc.now() - t0
        pc.check(got, sum(range(m)), f"many_steps({m})")
        return dt

    s = pc.rounds({"floor": lambda: floor.batch_s(sz.floor_batch), "plain": plain, "long": lambda: timed(n),
                   "short": lambda: timed(1)}, sz.step_rounds, sz.warmup)
    floor.close()
    per = pc.slope_us(s["long"], s["short"], n)
    res["per_step"] = {"n": n, "us": pc.median(per), "floor_us": pc.median(s["floor"]) * 1e6,
                       "plain_us": pc.median(s["plain"]) * 1e6, "run1_ms": pc.median(s["short"]) * 1e3,
                       "samples_us": per,
                       "note": f"mean per step over a run of {n} steps; replay makes it grow with the run's length"}

    def start_batch() -> float:
        t0 = pc.now()
        for _ in range(sz.start_batch):
            pc.check(run_to_end("many_steps", n=1), 0, "many_steps(1)")
        return sz.start_batch / (pc.now() - t0)

    st = pc.rounds({"batch": start_batch}, sz.start_rounds, 1)
    res["start"] = {"per_s": pc.median(st["batch"]), "samples": st["batch"],
                    "method": "WorkflowExecution created and driven to completion (1 activity), one after the other"}

    lat: list[float] = []
    v = 0
    while len(lat) < sz.latency_samples:
        per_i, expected = sz.latency_per_instance, 0
        ex = start("event_loop", rounds=per_i)
        pc.check(drive(ex), "WAITING", "event_loop before its first signal")
        for i in range(per_i):
            v += 1
            expected += v
            t0 = pc.now()
            send_signal(ex, "go", v)
            drive(ex)
            if i >= 1:
                lat.append(MARKS[v] - t0)
        ex.refresh_from_db()
        pc.check(ex.result, expected, "event_loop")
    lat = lat[: sz.latency_samples]
    res["latency"] = {"p50_ms": pc.median(lat) * 1e3, "p90_ms": pc.pct(lat, 90) * 1e3, "samples": len(lat),
                      "method": ("send_signal, then the worker's loop in this process (step_workflow replays, "
                                 "consumes the signal, schedules the activity; execute_activity) -> the activity runs")}

    check_written_equals_real(sz.k_values[0])
    ids: dict[int, list[Any]] = {}
    build_s: dict[int, float] = {}
    for k in sz.k_values:
        t0 = pc.now()
        ids[k] = [write_waiting(k) for _ in range(sz.resume_repeats)]
        build_s[k] = (pc.now() - t0) / sz.resume_repeats
    state_b = {k: _state_bytes(ids[k][0]) for k in sz.k_values}
    samples: dict[int, list[float]] = {k: [] for k in sz.k_values}
    for r in range(sz.resume_repeats):
        for name in pc.rotate([str(k) for k in sz.k_values], r):
            k = int(name)
            ex = ids[k][r]
            t0 = pc.now()
            send_signal(ex, "go", 7)
            status = drive(ex)
            samples[k].append(pc.now() - t0)
            pc.check(status, "COMPLETED", f"resumed steps_then_wait({k})")
            pc.check(ex.result, sum(range(k)) + 7, f"resumed steps_then_wait({k})")
    res["resume"] = {"points": [{"k": k, "ms": pc.median(samples[k]) * 1e3, "state_bytes": state_b[k],
                                 "build_s": build_s[k], "samples_ms": [x * 1e3 for x in samples[k]]}
                                for k in sz.k_values],
                     "method": ("send_signal + the worker's loop: step_workflow replays K activities from the "
                                "event log, consumes the signal and schedules one more activity; execute_activity; "
                                "step_workflow replays again and completes. Instances written, not run "
                                "(see the docstring)")}
    pc.write_result(args.out, res, sz)


if __name__ == "__main__":
    main()
