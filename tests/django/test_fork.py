"""Kept checkpoints and forks (issue 13): history rows, operations.fork, the admin's fork page, durable_fork.

The program (tests/django/testapp/fork_programs.py) runs eight db_step steps; each writes a SideEffect row
noted with its step number, so a test counts how often each step ran. Checkpoint k is the one saved after
step k (checkpoint 9 is the completion).
"""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client, override_settings
from django.urls import reverse

import durable_django as dd
from durable_django import operations
from durable_django.checks import check_settings
from durable_django.exceptions import InstanceExists, StateUnreadable, UnknownInstance
from durable_django.forks import ForkRefused, kept_checkpoints
from durable_django.models import DurableCheckpoint, DurableHistory, DurableInstance, HistoryKind, Status
from tests.django.conftest import wait_until
from tests.django.testapp import fork_programs as progs
from tests.django.testapp.models import SideEffect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

RESULT = {"total": 36, "factor": 1}  # 1 + 2 + ... + 8
EDITED = 6 + (4 + 5 + 6 + 7 + 8) * 10  # steps 1-3 with factor 1, then factor 10


def runs(key: str) -> dict[int, int]:
    """How many times each step ran (its SideEffect rows)."""
    out: dict[int, int] = {}
    for note in SideEffect.objects.filter(key=key).values_list("note", flat=True):
        out[int(note)] = out.get(int(note), 0) + 1
    return out


def kept(iid: str) -> list[int]:
    return list(DurableCheckpoint.objects.filter(instance_id=iid).order_by("step").values_list("step", flat=True))


def status(iid: str) -> str | None:
    return DurableInstance.objects.filter(pk=iid).values_list("status", flat=True).first()


def cmd(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


# -- history ----------------------------------------------------------------------------------
def test_without_history_no_checkpoint_rows(inline, uid):
    dd.start(progs.eight_steps_plain, uid, instance_id=uid)
    assert status(uid) == Status.COMPLETED
    assert dd.result(uid) == {"key": uid, **RESULT}
    assert DurableCheckpoint.objects.count() == 0
    with pytest.raises(ForkRefused, match="keeps no history"):
        operations.fork(uid, 3)


def test_program_history_keeps_every_checkpoint_with_status_and_position(inline, uid):
    dd.start(progs.eight_steps, uid, instance_id=uid)
    assert dd.result(uid) == {"key": uid, **RESULT}
    assert kept(uid) == list(range(1, 10))
    rows = kept_checkpoints(uid)
    assert [r["status"] for r in rows] == ["running"] * 8 + ["completed"]
    assert "add_step" in rows[2]["position"] or "line" in rows[2]["position"]
    assert rows[0]["at"] <= rows[-1]["at"]


def test_setting_history_applies_to_programs_without_their_own(inline, uid, settings):
    settings.DURABLE = {**settings.DURABLE, "HISTORY": 3}
    dd.start(progs.eight_steps_plain, uid, instance_id=uid)
    assert dd.result(uid) == {"key": uid, **RESULT}
    assert kept(uid) == [7, 8, 9]  # pruned to the last three
    settings.DURABLE = {**settings.DURABLE, "HISTORY": True}
    dd.start(progs.eight_steps_plain, uid + "-all", instance_id=uid + "-all")
    assert kept(uid + "-all") == list(range(1, 10))


def test_program_history_n_is_pruned_to_n_rows_with_one_delete_per_checkpoint(inline, uid):
    statements: list[str] = []

    def spy(execute, sql, params, many, context):  # sees the statement text also where query logging does not
        statements.append(sql)                     # (PostgreSQL's prepared statements log no text)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(spy):
        dd.start(progs.eight_steps_last3, uid, instance_id=uid)
    assert dd.result(uid) == {"key": uid, **RESULT}
    assert kept(uid) == [7, 8, 9]
    table = DurableCheckpoint._meta.db_table
    touching = [sql.split()[0].upper() for sql in statements if table in sql]
    assert touching == ["DELETE", "INSERT"] * 9  # no read of the history on the checkpoint path


@pytest.mark.parametrize("atomic_steps", [True, False])
def test_a_kept_checkpoint_commits_with_its_checkpoint_or_not_at_all(inline, uid, settings, monkeypatch,
                                                                     atomic_steps):
    """A failure after the kept row was inserted rolls back the checkpoint too, and the step's writes."""
    from durable_django import checkpoints

    original = checkpoints.write

    def write_then_fail(instance_id, step, *args, **kwargs):
        original(instance_id, step, *args, **kwargs)
        if step == 3:
            raise RuntimeError("the database went away after the kept checkpoint")

    monkeypatch.setattr(checkpoints, "write", write_then_fail)
    settings.DURABLE = {**settings.DURABLE, "ATOMIC_STEPS": atomic_steps}
    dd.start(progs.eight_steps, uid, instance_id=uid)
    row = DurableInstance.objects.get(pk=uid)
    assert row.steps == 2 and row.status != Status.COMPLETED
    assert kept(uid) == [1, 2]  # checkpoint 3 and its kept copy: both or neither
    if atomic_steps:
        assert runs(uid) == {1: 1, 2: 1}  # and the step's own writes went with them
    monkeypatch.setattr(checkpoints, "write", original)
    dd.resume(uid)
    assert dd.result(uid) == {"key": uid, **RESULT}
    assert kept(uid) == list(range(1, 10))


# -- fork ---------------------------------------------------------------------------------------
def test_fork_from_checkpoint_3_reproduces_the_result_without_running_steps_1_to_3(inline, uid):
    dd.start(progs.eight_steps, uid, instance_id=uid)
    assert dd.result(uid) == {"key": uid, **RESULT}
    fork = operations.fork(uid, 3, new_instance_id=uid + "-f", actor="alice")
    assert fork.instance_id == uid + "-f" and fork.program == DurableInstance.objects.get(pk=uid).program
    assert status(uid + "-f") == Status.COMPLETED  # inline: ran when the fork committed
    assert dd.result(uid + "-f") == {"key": uid, **RESULT}
    assert runs(uid) == {1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 2, 7: 2, 8: 2}
    mine = DurableHistory.objects.filter(instance_id=uid + "-f", kind=HistoryKind.FORKED).get()
    assert mine.actor == "alice" and repr(uid) in mine.detail and "checkpoint 3" in mine.detail
    theirs = DurableHistory.objects.filter(instance_id=uid, kind=HistoryKind.FORKED).get()
    assert repr(uid + "-f") in theirs.detail
    assert status(uid) == Status.COMPLETED  # the source is left as it was
    assert kept(uid + "-f") == list(range(3, 10))  # the fork keeps its own history from where it started


def test_fork_with_an_edited_local_gives_the_new_result(inline, uid):
    dd.start(progs.eight_steps, uid, instance_id=uid)
    fork = operations.fork(uid, 3, locals={"factor": 10}, actor="bob")
    assert dd.result(fork.instance_id) == {"key": uid, "total": EDITED, "factor": 10}
    assert runs(uid) == {1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 2, 7: 2, 8: 2}
    detail = DurableHistory.objects.get(instance_id=fork.instance_id, kind=HistoryKind.FORKED).detail
    assert "'factor'" in detail and "to 10" in detail
    # the frame-qualified form, and the source's result is untouched
    fork2 = operations.fork(uid, 3, locals={"0.factor": 2})
    assert dd.result(fork2.instance_id)["total"] == 6 + 30 * 2
    assert dd.result(uid) == {"key": uid, **RESULT}


def test_fork_from_a_paused_checkpoint_waits_again(inline, uid):
    dd.start(progs.eight_steps_paused, uid, instance_id=uid)
    assert status(uid) == Status.PAUSED
    step = DurableInstance.objects.get(pk=uid).steps
    dd.publish_event(uid, "go", 100)
    assert dd.result(uid)["total"] == 136
    fork = operations.fork(uid, step, new_instance_id=uid + "-p")
    row = DurableInstance.objects.get(pk=uid + "-p")
    assert (row.status, row.wait_kind, row.waiting_for) == (Status.PAUSED, "event", "go")
    dd.publish_event(uid + "-p", "go", 1)
    assert dd.result(fork.instance_id)["total"] == 37
    assert runs(uid) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 2, 6: 2, 7: 2, 8: 2}


def test_fork_of_a_failed_instance_from_its_failed_checkpoint(inline, uid):
    dd.start(progs.eight_steps_failing, uid, 5, instance_id=uid)
    assert status(uid) == Status.FAILED
    rows = kept_checkpoints(uid)
    assert rows[-1]["status"] == "failed" and [r["status"] for r in rows[:-1]] == ["running"] * 5
    fork = operations.fork(uid, rows[-1]["step"], locals={"fail_at": 0})
    assert dd.result(fork.instance_id) == {"key": uid, "total": 36}
    assert runs(uid) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1}  # nothing ran twice
    assert DurableInstance.objects.get(pk=fork.instance_id).error == ""


def test_fork_refusals(inline, uid):
    dd.start(progs.eight_steps, uid, instance_id=uid)
    dd.start(progs.eight_steps, uid + "-taken", instance_id=uid + "-taken")
    with pytest.raises(UnknownInstance):
        operations.fork("nope-" + uid, 3)
    with pytest.raises(ForkRefused, match="no kept checkpoint 42; kept: 1, 2"):
        operations.fork(uid, 42)
    with pytest.raises(InstanceExists):
        operations.fork(uid, 3, new_instance_id=uid + "-taken")
    with pytest.raises(ForkRefused, match="has no local 'nope'.*factor"):
        operations.fork(uid, 3, locals={"nope": 1})
    with pytest.raises(ForkRefused, match="no frame 5"):
        operations.fork(uid, 3, locals={"5.total": 1})
    with pytest.raises(ForkRefused, match="JSON-compatible"):
        operations.fork(uid, 3, locals={"total": object()})
    with pytest.raises(ForkRefused, match="completed"):
        operations.fork(uid, 9)
    assert DurableInstance.objects.count() == 2  # nothing was created by a refused fork


def test_a_tampered_checkpoint_is_refused_before_unpickling(inline, uid):
    dd.start(progs.eight_steps, uid, instance_id=uid)
    DurableCheckpoint.objects.filter(instance_id=uid, step=3).update(state=b"DS1" + b"\0" * 32 + b"not a pickle")
    with pytest.raises(StateUnreadable, match="signature"):
        operations.fork(uid, 3)
    # a live state copied into a checkpoint row does not verify there (another signing field)
    live = DurableInstance.objects.get(pk=uid).state
    DurableCheckpoint.objects.filter(instance_id=uid, step=4).update(state=live)
    with pytest.raises(StateUnreadable, match="signature"):
        operations.fork(uid, 4)


def test_key_rotation_re_signs_kept_checkpoints(inline, uid, settings):
    old, new = "an-old-signing-key-0123456789", "the-new-signing-key-0123456789"
    settings.DURABLE = {**settings.DURABLE, "SIGNING_KEY": old}
    dd.start(progs.eight_steps, uid, instance_id=uid)
    settings.DURABLE = {**settings.DURABLE, "SIGNING_KEY": new, "SIGNING_KEY_FALLBACKS": [old]}
    assert "11 blob(s) re-signed" in cmd("durable_resign")  # arguments, the last state and 9 checkpoints
    settings.DURABLE = {**settings.DURABLE, "SIGNING_KEY": new, "SIGNING_KEY_FALLBACKS": []}
    fork = operations.fork(uid, 3)
    assert dd.result(fork.instance_id) == {"key": uid, **RESULT}


# -- the command ----------------------------------------------------------------------------------
def test_durable_fork_command(inline, uid):
    dd.start(progs.eight_steps, uid, instance_id=uid)
    listing = cmd("durable_fork", uid, "--list")
    assert len(listing.strip().splitlines()) == 9 and "completed" in listing.splitlines()[-1]
    out = cmd("durable_fork", uid, "--step", "3", "--new-id", uid + "-c", "--set", "factor=10")
    assert f"{uid}-c: forked from {uid} at checkpoint 3" in out
    assert dd.result(uid + "-c")["total"] == EDITED
    actor = DurableHistory.objects.get(instance_id=uid + "-c", kind=HistoryKind.FORKED).actor
    assert actor.startswith("manage.py durable_fork")
    with pytest.raises(CommandError, match="not valid JSON"):
        cmd("durable_fork", uid, "--step", "3", "--set", "factor={x")
    with pytest.raises(CommandError, match="--step"):
        cmd("durable_fork", uid)
    with pytest.raises(CommandError, match="no kept checkpoint 77"):
        cmd("durable_fork", uid, "--step", "77")
    dd.start(progs.eight_steps_plain, uid + "-plain", instance_id=uid + "-plain")
    assert "no kept checkpoints" in cmd("durable_fork", uid + "-plain", "--list")


def test_history_setting_check():
    def ids(value):
        with override_settings(DURABLE={"HISTORY": value}):
            return {m.id for m in check_settings()}

    for good in (None, True, 1, 50):
        assert "durable_django.E003" not in ids(good), good
    for bad in (0, -2, False, "10", 2.5):
        assert "durable_django.E003" in ids(bad), bad


# -- the admin -------------------------------------------------------------------------------------
def detail_url(iid: str) -> str:
    return reverse("admin:durable_django_durableinstance_change", args=[iid])


def fork_url(iid: str, step: int) -> str:
    return reverse("admin:durable_django_durableinstance_fork", args=[iid, step])


def staff(username: str, *codenames: str, csrf: bool = False) -> Client:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="durable_django",
                                                         codename__in=("view_durableinstance", *codenames)))
    c = Client(enforce_csrf_checks=csrf)
    c.force_login(user)
    return c


def test_admin_checkpoints_section_and_fork_page_need_the_permission(inline, uid):
    dd.start(progs.eight_steps, uid, instance_id=uid)
    dd.start(progs.eight_steps_plain, uid + "-plain", instance_id=uid + "-plain")
    viewer = staff("viewer")
    page = viewer.get(detail_url(uid)).content.decode()
    assert 'id="checkpoints"' in page and "fork from here" not in page
    assert viewer.get(fork_url(uid, 3)).status_code == 403
    assert viewer.post(fork_url(uid, 3), {"confirm": "1"}).status_code == 403
    assert DurableInstance.objects.count() == 2
    assert 'id="checkpoints"' not in viewer.get(detail_url(uid + "-plain")).content.decode()

    forker = staff("forker", "fork_durableinstance")
    page = forker.get(detail_url(uid)).content.decode()
    assert page.count("fork from here") == 8  # not the completion
    assert fork_url(uid, 3) in page
    form = forker.get(fork_url(uid, 3))
    assert form.status_code == 200
    text = form.content.decode()
    # total is still 3 at checkpoint 3: the result of step 3 (6) is assigned to it when the run goes on
    assert 'name="local-0-factor" value="1"' in text and 'name="local-0-total" value="3"' in text
    # without the confirmation nothing happens
    r = forker.post(fork_url(uid, 3), {"local-0-factor": "10"})
    assert r.status_code == 400 and "confirmation" in r.content.decode()
    r = forker.post(fork_url(uid, 3), {"local-0-factor": "{bad", "confirm": "1"})
    assert r.status_code == 400 and "not valid JSON" in r.content.decode()
    assert DurableInstance.objects.count() == 2
    r = forker.post(fork_url(uid, 3), {"local-0-factor": "10", "local-0-total": "3", "confirm": "1",
                                        "new_instance_id": uid + "-adm"})
    assert r.status_code == 302 and r["Location"] == detail_url(uid + "-adm")
    assert dd.result(uid + "-adm")["total"] == EDITED
    entry = DurableHistory.objects.get(instance_id=uid + "-adm", kind=HistoryKind.FORKED)
    assert entry.actor == "forker" and "'factor'" in entry.detail and "'total'" not in entry.detail
    r = forker.post(fork_url(uid, 3), {"confirm": "1", "new_instance_id": uid + "-adm"})
    assert r.status_code == 400 and "already exists" in r.content.decode()
    assert forker.get(fork_url(uid, 99)).status_code == 302  # no such checkpoint: back, with the message


def test_admin_fork_post_needs_the_csrf_token(inline, uid):
    dd.start(progs.eight_steps, uid, instance_id=uid)
    client = staff("carol", "fork_durableinstance", csrf=True)
    page = client.get(fork_url(uid, 3))
    assert page.status_code == 200
    assert client.post(fork_url(uid, 3), {"confirm": "1", "new_instance_id": uid + "-x"}).status_code == 403
    assert not DurableInstance.objects.filter(pk=uid + "-x").exists()
    token = client.cookies["csrftoken"].value
    r = client.post(fork_url(uid, 3), {"confirm": "1", "new_instance_id": uid + "-x", "csrfmiddlewaretoken": token})
    assert r.status_code == 302
    assert dd.result(uid + "-x") == {"key": uid, **RESULT}


# -- real Celery workers ------------------------------------------------------------------------------
def test_fork_runs_on_real_celery_workers(worker_factory, uid):
    worker_factory()
    worker_factory()
    dd.start(progs.eight_steps, uid, instance_id=uid)
    wait_until(lambda: status(uid) == Status.COMPLETED, timeout=90, message=lambda: f"{uid} completed ({status(uid)})")
    assert dd.result(uid) == {"key": uid, **RESULT}
    assert kept(uid) == list(range(1, 10))
    same = operations.fork(uid, 3, new_instance_id=uid + "-same", actor="ops")
    edited = operations.fork(uid, 3, new_instance_id=uid + "-ten", locals={"factor": 10}, actor="ops")
    for iid in (same.instance_id, edited.instance_id):
        wait_until(lambda iid=iid: status(iid) == Status.COMPLETED, timeout=90,
                   message=lambda iid=iid: f"{iid} completed ({status(iid)})")
    assert dd.result(uid + "-same") == {"key": uid, **RESULT}
    assert dd.result(uid + "-ten") == {"key": uid, "total": EDITED, "factor": 10}
    assert runs(uid) == {1: 1, 2: 1, 3: 1, 4: 3, 5: 3, 6: 3, 7: 3, 8: 3}  # steps 1-3 never ran again
    workers = set(DurableHistory.objects.filter(instance_id__in=[uid + "-same", uid + "-ten"],
                                                kind=HistoryKind.COMPLETED).values_list("actor", flat=True))
    assert workers and all("@" in w for w in workers)  # completed by the worker processes
