"""Exhaustive crash test over a process with two parallel branches and a child, with real processes and SIGKILLs.

As tests/django/test_crash_exhaustive.py does for a sequential process: a reference run records every checkpoint
of the parent, of each of its branches (``checkpoint:<branch>:<steps>``) and of its child; then one instance per
checkpoint is run by ``durable_resume --sync`` subprocesses that SIGKILL themselves right after that checkpoint
commits (or inside a step, after its write), and fresh subprocesses recover it. Every instance must end as the
reference did, each side effect exactly once (the parent's and the child's), both events consumed.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
from django.db.models import Count
from django.utils import timezone

import durable_django as dd
from durable_django import children, worker
from durable_django.models import FINISHED, DurableEvent, Status
from tests.django.test_crash_exhaustive import LEASE, Crasher, dead_queue, effects_of, rows  # noqa: F401
from tests.django.testapp import family_programs as fam
from tests.django.testapp.models import SideEffect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

NAP = 0.2
assert LEASE


def runnable(current: dict[str, dict]) -> list[str]:
    """Instances a run would advance now (a parent paused on its child or its branches only when woken or due, or
    found by the sweep's safety net: a child killed between its last commit and its parent's wake-up)."""
    now = timezone.now()
    swept = set(children.parents_to_wake(now, 1000))
    out = []
    for iid, r in current.items():
        if r["status"] in FINISHED or (r["lease_expires_at"] is not None and r["lease_expires_at"] > now):
            continue
        if r["status"] == Status.PAUSED and (r["wake_at"] is None or r["wake_at"] > now) and iid not in swept:
            if r["wait_kind"] != "branches" or not DurableEvent.objects.filter(
                    instance_id=iid, name="right", consumed_at__isnull=True).exists():
                continue
        out.append(iid)
    return out


def drive(ids: list[str], run: Callable[[list[str]], int], on_kill: Callable[[], None] | None = None,
          timeout: float = 200) -> None:
    """Run the parents and their children to their ends; "right" is published once a parent waits on branches."""
    deadline = time.monotonic() + timeout
    while True:
        current = rows(ids)
        if all(r["status"] in FINISHED for r in current.values()):
            return
        assert time.monotonic() < deadline, "instances did not complete: " + "; ".join(
            f"{i} {r['status']} {r['wait_kind']} {r['waiting_for']} wake={r['wake_at']}" for i, r in current.items()
            if r["status"] not in FINISHED)
        for iid, r in current.items():
            if r["wait_kind"] == "branches" and not DurableEvent.objects.filter(instance_id=iid, name="right").exists():
                dd.publish_event(iid, "right", {"right": iid})
        todo = runnable(rows(ids))
        if not todo:
            time.sleep(0.05)
            continue
        rc = run(todo)
        if rc == -signal.SIGKILL and on_kill is not None:
            on_kill()
        else:
            assert rc == 0, f"run exited with {rc}"


def start(iid: str) -> list[str]:
    dd.start(fam.crash_family, iid, NAP, instance_id=iid)
    dd.publish_event(iid, "left", {"left": iid})  # before its branch gets there; "right" comes while it waits
    return [iid, f"{iid}-kid"]


def test_kill_at_every_checkpoint_of_branches_and_a_child(uid, tmp_path, request, settings):
    queue = request.getfixturevalue("dead_queue")
    t0 = time.monotonic()
    ref = f"{uid}-ref"
    settings.DURABLE = {**settings.DURABLE, "ON_CHECKPOINT": "tests.django.testapp.family_programs.record_hook"}
    fam.RECORDED.clear()

    def run_here(todo: list[str]) -> int:
        for i in todo:
            worker.run_instance(i)
        return 0

    # the child may start before its rows exist in `ids`: drive both from the start
    dd.start(fam.crash_family, ref, NAP, instance_id=ref)
    dd.publish_event(ref, "left", {"left": ref})
    drive([ref, f"{ref}-kid"], run_here)
    assert dd.result(ref) == fam.expected(ref)
    points = {(iid, branch, steps) for iid, branch, steps in fam.RECORDED}
    parent_points = sorted((b, s) for i, b, s in points if i == ref)
    kid_points = sorted((b, s) for i, b, s in points if i == f"{ref}-kid")
    branches = {b for b, _ in parent_points}
    assert {"-", "0.0", "0.1"} <= branches, parent_points  # the instance and both branches checkpointed
    assert kid_points and {b for b, _ in kid_points} == {"-"}, kid_points
    settings.DURABLE = {**settings.DURABLE, "ON_CHECKPOINT": None}
    plan_steps = {f"{uid}-in-{label}": f"step:{label}" for label in fam.FAMILY_LABELS}
    plan_steps |= {f"{uid}-kin-{label}-kid": f"step:{label}" for label in fam.KID_LABELS}

    plan = {f"{uid}-p{n}": f"checkpoint:{b}:{s}" for n, (b, s) in enumerate(parent_points)}
    plan |= {f"{uid}-k{n}-kid": f"checkpoint:{b}:{s}" for n, (b, s) in enumerate(kid_points)}

    plan |= plan_steps
    parents = sorted({iid.removesuffix("-kid") for iid in plan})
    for p in parents:
        start(p)
    crasher = Crasher(plan, tmp_path / "crashes", queue)
    crasher.env["DURABLE_TEST_ON_CHECKPOINT"] = "tests.django.testapp.family_programs.crash_hook"
    crasher.crash_dir.mkdir()
    groups = [[i for p in parents[k::2] for i in (p, f"{p}-kid")] for k in (0, 1)]
    errors = []
    for group in groups:  # one after the other: each group's kills are attributed to its own processes
        try:
            drive(group, crasher.durable_resume, on_kill=lambda g=group: crasher.record_kill(g))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
    assert not errors, errors[0]
    assert sorted(k.instance_id for k in crasher.kills) == sorted(plan), (
        sorted(set(plan) - {k.instance_id for k in crasher.kills}))
    for kill in crasher.kills:
        if kill.where.startswith("step:"):
            assert kill.where.removeprefix("step:") not in kill.effects, kill  # died with its transaction

    for p in [ref, *parents]:
        assert dd.result(p) == fam.expected(p), p
        assert effects_of(p) == sorted(fam.FAMILY_LABELS), p
        assert effects_of(f"{p}-kid") == sorted(fam.KID_LABELS), p
        events = list(DurableEvent.objects.filter(instance_id=p).values_list("name", "consumed_at"))
        assert sorted(n for n, _ in events) == ["left", "right"] and all(c for _, c in events), (p, events)
    dupes = SideEffect.objects.filter(key__startswith=uid).values("key", "note").annotate(n=Count("id")).filter(n__gt=1)
    assert not list(dupes)
    print(f"\n{len(parent_points)} checkpoints of the instance and its branches, {len(kid_points)} of the child, "
          f"{len(crasher.kills)} SIGKILLs, {crasher.processes} processes, {time.monotonic() - t0:.1f}s")

