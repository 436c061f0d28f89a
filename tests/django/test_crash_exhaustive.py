"""Exhaustive crash testing with real processes and real SIGKILLs.

The runtime knows every checkpoint, so instead of killing a worker at random
moments and hoping to hit the interesting ones, these tests kill it at every
checkpoint of a process in turn: for a process with K checkpoints, instance n
is run by a process whose ``DURABLE["ON_CHECKPOINT"]`` hook SIGKILLs its own
process right after checkpoint n commits (n = 1..K). Each db_step also kills
its process once after its write and before its checkpoint, so both sides of
every commit are covered. A fresh process then recovers the instance, and the
test asserts the result, that every side-effect row exists exactly once and
that both events were consumed.

The program (``crash_course`` in the test app) mixes db_step side effects, an
event published before its wait, a short durable timer and an event published
while no process runs. The sweep over all n uses ``manage.py durable_resume
--sync <ids>`` subprocesses (one process per kill; each runs the instances in
turn until one of them kills it); a smaller variant does the same with Celery
worker processes. See tests/django/testapp/durable_programs.py for the hook.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.db import connection, connections
from django.db.models import Count
from django.utils import timezone

import durable_django as dd
from durable_django import worker
from durable_django.models import FINISHED, DurableEvent, DurableInstance, Status
from tests.django.conftest import ROOT
from tests.django.testapp import durable_programs as progs
from tests.django.testapp.models import SideEffect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

NAP = 0.2  # the durable timer of the program, seconds
LEASE = "1"  # lease of the crashing processes: a killed run is taken over one second later
ROW = ("status", "wait_kind", "waiting_for", "wake_at", "lease_expires_at", "steps")


@dataclass
class Kill:
    """A process that died by SIGKILL at a planned point, and what its instance's row looked like right after."""

    instance_id: str
    where: str
    status: str
    wait_kind: str
    steps: int
    effects: list[str]


@pytest.fixture
def dead_queue(settings):
    """Wake-up messages of the test process go to a queue no worker reads: the tests run instances themselves."""
    queue = f"{settings.DURABLE['QUEUE']}-crash-unread"
    settings.DURABLE = {**settings.DURABLE, "QUEUE": queue}
    yield queue
    from example_project.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)


def rows(ids: list[str]) -> dict[str, dict]:
    return {r["instance_id"]: r for r in DurableInstance.objects.filter(pk__in=ids).values("instance_id", *ROW)}


def effects_of(iid: str) -> list[str]:
    return sorted(SideEffect.objects.filter(key=iid).values_list("note", flat=True))


def publish_late_events(current: dict[str, dict]) -> int:
    """Publish "late" to every instance waiting for it (called only while no process runs an instance)."""
    n = 0
    for iid, r in current.items():
        if r["status"] == Status.PAUSED and r["waiting_for"] == "late":
            if not DurableEvent.objects.filter(instance_id=iid, name="late").exists():
                dd.publish_event(iid, "late", {"late": iid})
                n += 1
    return n


def runnable(current: dict[str, dict]) -> list[str]:
    """Instances a run would advance now: not finished, lease free, timer due, awaited event present."""
    now = timezone.now()
    out = []
    for iid, r in current.items():
        if r["status"] in FINISHED:
            continue
        if r["lease_expires_at"] is not None and r["lease_expires_at"] > now:
            continue
        if r["status"] == Status.PAUSED:
            if r["wait_kind"] == "timer" and r["wake_at"] > now:
                continue
            if r["wait_kind"] == "event" and not DurableEvent.objects.filter(
                    instance_id=iid, name=r["waiting_for"], consumed_at__isnull=True).exists():
                continue
        out.append(iid)
    return out


def drive(ids: list[str], run: Callable[[list[str]], int], on_kill: Callable[[], None] | None = None,
          timeout: float = 150) -> None:
    """Run ``ids`` to completion: publish "late" while nothing runs, wait for timers and leases, call ``run``."""
    deadline = time.monotonic() + timeout
    while True:
        current = rows(ids)
        if all(r["status"] in FINISHED for r in current.values()):
            return
        assert time.monotonic() < deadline, f"instances did not complete: {current}"
        publish_late_events(current)
        todo = runnable(rows(ids))
        if not todo:
            time.sleep(0.05)  # a timer or a dead process's lease: both expire within a second
            continue
        rc = run(todo)
        if rc == -signal.SIGKILL and on_kill is not None:
            on_kill()
        else:
            assert rc == 0, f"run exited with {rc}"


def reference_run(uid: str) -> tuple[str, dict]:
    """One crash-free instance run in this process; returns its id and its row with ``pauses`` {steps: wait}."""
    iid = f"{uid}-ref"
    dd.start(progs.crash_course, iid, NAP, instance_id=iid)
    dd.publish_event(iid, "early", {"early": iid})
    pauses: dict[int, str] = {}

    def run(todo: list[str]) -> int:
        for i in todo:
            if worker.run_instance(i) == Status.PAUSED:
                r = rows([i])[i]
                pauses[r["steps"]] = r["wait_kind"] if r["wait_kind"] == "timer" else r["waiting_for"]
        return 0

    drive([iid], run)
    row = rows([iid])[iid]
    assert row["status"] == Status.COMPLETED
    return iid, {**row, "pauses": pauses}


def expected_result(iid: str) -> dict:
    """Every step saw exactly the rows written so far (1..5); both payloads arrived."""
    return {"seen": [1, 2, 3, 4, 5], "early": {"early": iid}, "late": {"late": iid}}


def assert_exactly_once(ids: list[str]) -> None:
    for iid in ids:
        assert dd.result(iid) == expected_result(iid), iid
        assert effects_of(iid) == sorted(progs.CRASH_LABELS), iid
        events = list(DurableEvent.objects.filter(instance_id=iid).values_list("name", "consumed_at"))
        assert sorted(n for n, _ in events) == ["early", "late"], iid
        assert all(c is not None for _, c in events), f"{iid}: event not consumed: {events}"
    dupes = (SideEffect.objects.filter(key__in=ids).values("key", "note").annotate(n=Count("id")).filter(n__gt=1))
    assert not list(dupes)


class Crasher:
    """Subprocesses on the test database whose crash plan kills them at chosen points (once per instance)."""

    def __init__(self, plan: dict[str, str], crash_dir: Path, queue: str) -> None:
        self.plan, self.crash_dir = plan, crash_dir
        self.env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django.settings",
                    "DURABLE_TEST_DB_NAME": str(connection.settings_dict["NAME"]), "DURABLE_TEST_QUEUE": queue,
                    "DURABLE_LEASE_SECONDS": LEASE, "DURABLE_TEST_CRASH_PLAN": json.dumps(plan),
                    "DURABLE_TEST_CRASH_DIR": str(crash_dir),
                    "DURABLE_TEST_ON_CHECKPOINT": "tests.django.testapp.durable_programs.crash_hook"}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.kills: list[Kill] = []
        self.processes = 0
        self.lock = threading.Lock()

    def drive_in_parallel(self, groups: list[list[str]]) -> None:
        """One driver thread per group (each runs its own processes): the machine's cores share the kills."""
        errors: list[BaseException] = []

        def one(group: list[str]) -> None:
            try:
                drive(group, self.durable_resume, on_kill=lambda: self.record_kill(group))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                errors.append(exc)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=one, args=(g,)) for g in groups]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def crashed(self) -> set[str]:
        return {p.name.removesuffix(".crashed") for p in self.crash_dir.glob("*.crashed")}

    def record_kill(self, ids: list[str]) -> None:
        """A process running ``ids`` died by SIGKILL: find the instance that killed it and look at its row."""
        new = (self.crashed() & set(ids)) - {k.instance_id for k in self.kills}
        assert len(new) == 1, f"a SIGKILL without exactly one new crash marker: {new}"
        iid = new.pop()
        where = (self.crash_dir / f"{iid}.crashed").read_text()
        assert where == self.plan[iid]
        r = rows([iid])[iid]
        self.kills.append(Kill(iid, where, r["status"], r["wait_kind"], r["steps"], effects_of(iid)))

    def durable_resume(self, ids: list[str]) -> int:
        with self.lock:
            self.processes += 1
        out = subprocess.run([sys.executable, "manage.py", "durable_resume", "--sync", *ids], cwd=ROOT, env=self.env,
                             capture_output=True, text=True, timeout=120)
        if out.returncode not in (0, -signal.SIGKILL):
            print(out.stdout, out.stderr)
        return out.returncode


def test_kill_at_every_checkpoint_and_inside_every_step(uid, tmp_path, dead_queue):
    t0 = time.monotonic()
    ref, ref_row = reference_run(uid)
    assert dd.result(ref) == expected_result(ref)
    k = ref_row["steps"]
    pauses = ref_row["pauses"]
    assert 8 <= k <= 14 and sorted(pauses.values()) == ["late", "timer"], ref_row

    plan = {f"{uid}-cp{n}": f"checkpoint:{n}" for n in range(1, k + 1)}
    plan |= {f"{uid}-in-{label}": f"step:{label}" for label in progs.CRASH_LABELS}
    ids = list(plan)
    for iid in ids:
        dd.start(progs.crash_course, iid, NAP, instance_id=iid)
        dd.publish_event(iid, "early", {"early": iid})  # before the process reaches its wait
    crasher = Crasher(plan, tmp_path / "crashes", dead_queue)
    crasher.crash_dir.mkdir()
    crasher.drive_in_parallel([ids[0::2], ids[1::2]])

    # Every planned kill happened, once, where planned.
    assert sorted(k_.instance_id for k_ in crasher.kills) == sorted(ids)
    ref_effects_at: dict[str, int] = {}  # step label -> checkpoints committed before the step
    for kill in crasher.kills:
        kind, _, point = kill.where.partition(":")
        if kind == "checkpoint":
            # The hook runs after the commit: the row holds checkpoint n, whatever kind of checkpoint it was.
            n = int(point)
            assert kill.steps == n, kill
            if n in pauses:
                assert (kill.status, kill.wait_kind) == (Status.PAUSED, "timer" if pauses[n] == "timer" else "event")
            elif n == k:
                assert kill.status == Status.COMPLETED, kill
            else:
                assert kill.status == Status.RUNNING, kill
        else:
            # Killed inside the step after its write: the write died with the process's transaction.
            assert point not in kill.effects, kill
            assert kill.status in (Status.RUNNING, Status.PENDING, Status.PAUSED), kill
            ref_effects_at[point] = kill.steps
    # The in-step kills happened before five different checkpoints, in program order.
    assert [ref_effects_at[label] for label in progs.CRASH_LABELS] == sorted(set(ref_effects_at.values()))
    kinds = {(k_.status, k_.wait_kind) for k_ in crasher.kills if k_.where.startswith("checkpoint")}
    assert kinds == {(Status.RUNNING, ""), (Status.PAUSED, "timer"), (Status.PAUSED, "event"), (Status.COMPLETED, "")}

    assert_exactly_once([ref, *ids])
    print(f"\n{k} checkpoints, {len(crasher.kills)} SIGKILLs ({k} after a commit, {len(progs.CRASH_LABELS)} inside "
          f"a step), {crasher.processes} durable_resume processes, {time.monotonic() - t0:.1f}s")


def test_celery_worker_killed_at_chosen_checkpoints(worker_factory, uid, tmp_path, settings):
    ref, ref_row = reference_run(uid)
    pauses = ref_row["pauses"]
    late_pause = next(n for n, w in pauses.items() if w == "late")
    plan = {f"{uid}-cp2": "checkpoint:2",  # after the first step and the early event
            f"{uid}-late": f"checkpoint:{late_pause}",  # right after the pause on "late": published while down
            f"{uid}-in-d": "step:d"}
    ids = list(plan)
    crasher = Crasher(plan, tmp_path / "crashes", settings.DURABLE["QUEUE"])
    crasher.crash_dir.mkdir()
    env = {key: crasher.env[key] for key in ("DURABLE_LEASE_SECONDS", "DURABLE_TEST_CRASH_PLAN",
                                              "DURABLE_TEST_CRASH_DIR", "DURABLE_TEST_ON_CHECKPOINT")}
    for iid in ids:
        dd.start(progs.crash_course, iid, NAP, instance_id=iid)
        dd.publish_event(iid, "early", {"early": iid})
    # Not waiting for "ready": a worker may pick up an instance and die by the plan before it says so.
    worker = worker_factory("crash-1", extra_env=env, wait=False)
    worker_factory.scheduler(0.3)  # re-sends the wake-ups the killed workers took with them
    down_publishes = 0
    deadline = time.monotonic() + 150
    while not all(r["status"] in FINISHED for r in rows(ids).values()):
        assert time.monotonic() < deadline, f"instances did not complete: {rows(ids)}"
        if worker.proc.poll() is not None:
            assert worker.proc.returncode == -signal.SIGKILL, worker.output()[-3000:]
            crasher.record_kill(ids)
            down_publishes += publish_late_events(rows(ids))  # while no worker runs
            worker = worker_factory(f"crash-{len(crasher.kills) + 1}", extra_env=env, wait=False)
        else:  # the instance planned to die at its pause on "late" gets it only once its worker is gone
            killed = {k_.instance_id for k_ in crasher.kills}
            publish_late_events(rows([i for i in ids if i != f"{uid}-late" or i in killed]))
        time.sleep(0.1)

    assert sorted(k_.instance_id for k_ in crasher.kills) == sorted(ids)
    late_kill = next(k_ for k_ in crasher.kills if k_.instance_id == f"{uid}-late")
    assert (late_kill.status, late_kill.steps) == (Status.PAUSED, late_pause)
    assert down_publishes >= 1
    assert "d" not in next(k_ for k_ in crasher.kills if k_.instance_id == f"{uid}-in-d").effects
    assert_exactly_once([ref, *ids])


def test_kill_at_every_checkpoint_of_a_saga_with_retries(uid, tmp_path, dead_queue):
    """The same sweep over a program with a retried step (two failed attempts, each followed by a durable backoff
    timer), a step that fails for good and its compensation in ``except`` and ``finally``: after a SIGKILL at
    any checkpoint or inside any step, the recovered instance ends as plain Python would, with each side
    effect exactly once and none of the failed attempts' writes."""
    ref = f"{uid}-ref"
    dd.start(progs.crash_saga, ref, NAP, instance_id=ref)
    timers: list[int] = []

    def run_here(todo: list[str]) -> int:
        for i in todo:
            if worker.run_instance(i) == Status.PAUSED:
                timers.append(rows([i])[i]["steps"])
        return 0

    drive([ref], run_here)
    k = rows([ref])[ref]["steps"]
    expected = {"seen": [1, 2, 3, 4]}  # s1, s2 (third attempt), comp, fin: the rows written so far
    assert dd.result(ref) == expected and len(timers) == 2, (k, timers)

    plan = {f"{uid}-cp{n}": f"checkpoint:{n}" for n in range(1, k + 1)}
    plan |= {f"{uid}-in-{label}": f"step:{label}" for label in progs.SAGA_LABELS}
    ids = list(plan)
    for iid in ids:
        dd.start(progs.crash_saga, iid, NAP, instance_id=iid)
    crasher = Crasher(plan, tmp_path / "crashes", dead_queue)
    crasher.crash_dir.mkdir()
    crasher.drive_in_parallel([ids[0::2], ids[1::2]])

    assert sorted(k_.instance_id for k_ in crasher.kills) == sorted(ids)
    for kill in crasher.kills:
        kind, _, point = kill.where.partition(":")
        if kind == "checkpoint":
            assert kill.steps == int(point), kill
            if int(point) in timers:  # killed right after a backoff's checkpoint: paused on its timer
                assert (kill.status, kill.wait_kind) == (Status.PAUSED, "timer"), kill
        else:
            assert point not in kill.effects, kill  # the write died with the process's transaction
    for iid in [ref, *ids]:
        assert dd.result(iid) == expected, iid
        assert effects_of(iid) == sorted(progs.SAGA_LABELS), iid  # no "s3", no second "s2"
