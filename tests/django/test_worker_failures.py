"""Issue 10, bad input on the worker's side and in the operator's views.

Whatever fails while a worker runs an instance ends in a final state with the
reason recorded (never a loop of retries by every sweep); migrations that fail
suspend; unreadable state is shown, not a 500; the claim shows ``running``.
Real Celery workers where a worker is the point, inline runs otherwise.
"""

from __future__ import annotations

import json
import math
from io import StringIO

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.db import OperationalError, connection
from django.test import Client
from django.urls import reverse

import durable_django as dd
from durable_django import programs
from durable_django import worker as durable_worker
from durable_django.models import DurableEvent, DurableHistory, DurableInstance, Status
from tests.django.conftest import wait_until
from tests.django.testapp import durable_programs as progs

pytestmark = pytest.mark.django_db(transaction=True)

FINAL = (Status.COMPLETED, Status.FAILED, Status.SUSPENDED, Status.CANCELLED)
TAMPERED = b"DS1" + b"\0" * 32 + b"not a pickle"


def reload(iid: str) -> DurableInstance:
    return DurableInstance.objects.get(pk=iid)


def history(iid: str) -> list[tuple[str, str]]:
    return list(DurableHistory.objects.filter(instance_id=iid).order_by("id").values_list("kind", "detail"))


def wait_final(iid: str, timeout: float = 60) -> DurableInstance:
    wait_until(lambda: reload(iid).status in FINAL, timeout=timeout,
               message=lambda: f"{iid} to end (it is {reload(iid).status}, error {reload(iid).error[-300:]!r})")
    return reload(iid)


def cmd(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


# -- failures outside a step, on a real worker -------------------------------------------------------------------
def test_bad_sleeps_and_timeouts_end_failed_on_a_worker_and_the_sweep_leaves_them(worker_factory, uid):
    worker = worker_factory()
    cases = {f"{uid}-big": (progs.bad_sleep, 1e12, "year 9999"),
             f"{uid}-nan": (progs.bad_sleep, math.nan, "finite"),
             f"{uid}-neg": (progs.bad_sleep, -5, ">= 0"),
             f"{uid}-inf": (progs.bad_timeout, math.inf, "finite")}
    for iid, (program, value, _) in cases.items():
        dd.start(program, value, instance_id=iid)
    for iid, (_, _, why) in cases.items():
        row = wait_final(iid)
        assert row.status == Status.FAILED, (iid, row.status, row.error)
        assert "ValueError" in row.error and why in row.error
        assert [k for k, _ in history(iid)][-1] == "failed"
        with pytest.raises(ValueError, match=why):  # the program's own error, raised again
            dd.result(iid)
    assert not set(cases) & set(durable_worker.due_instances())
    assert not set(cases) & set(durable_worker.sweep(dry_run=True))
    assert "raised unexpected" not in worker.output()


def test_arguments_the_worker_cannot_load_or_bind_suspend_the_instance(worker_factory, uid, tmp_path, monkeypatch):
    """Code deployed to the web process but not to the worker: the arguments cannot be unpickled there; and a
    worker whose program gained a required argument since the instance was started cannot bind them."""
    only_here = tmp_path / "only_here"
    only_here.mkdir()
    name = f"ghost_{uid}"
    (only_here / f"{name}.py").write_text("class Ghost:\n    pass\n")
    monkeypatch.syspath_prepend(str(only_here))
    ghost = __import__(name).Ghost()
    worker = worker_factory(extra_env={"DURABLE_TEST_NEW_LAYOUT": "1"})
    dd.start(progs.resigned, "k", instance_id=f"{uid}-sig")  # fits the signature of this process's code
    dd.start(progs.echo_arg, ghost, instance_id=uid)
    sig = wait_final(f"{uid}-sig")
    assert sig.status == Status.SUSPENDED and "outside the program's code" in sig.error
    assert "TypeError" in sig.error and "required" in sig.error
    assert f"{uid}-sig" not in durable_worker.due_instances()
    row = wait_final(uid)
    assert row.status == Status.SUSPENDED
    assert "outside the program's code" in row.error and "ModuleNotFoundError" in row.error and name in row.error
    kind, detail = history(uid)[-1]
    assert kind == "suspended" and "ModuleNotFoundError" in detail
    assert uid not in durable_worker.due_instances() and uid not in durable_worker.sweep(dry_run=True)
    wait_until(lambda: worker.output().count("succeeded") >= 2, message="both tasks to end normally")
    assert "raised unexpected" not in worker.output()
    assert row.attempts == 1 and not row.lease_owner


# -- database errors: retried, counted -----------------------------------------------------------------------------
def _fail_checkpoints(iid: str) -> None:
    """A real database-side fault: every checkpoint of ``iid`` (an UPDATE that changes ``steps``) fails with an
    OperationalError; the claim (which leaves ``steps`` alone) goes through."""
    table = DurableInstance._meta.db_table
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute("CREATE OR REPLACE FUNCTION durable_test_fault() RETURNS trigger AS $$ BEGIN "
                        "RAISE EXCEPTION 'simulated connection failure' USING ERRCODE = '08006'; END $$ "
                        "LANGUAGE plpgsql")
            cur.execute(f"CREATE TRIGGER durable_test_fault BEFORE UPDATE ON {table} FOR EACH ROW "
                        f"WHEN (NEW.instance_id = '{iid}' AND NEW.steps <> OLD.steps) "
                        "EXECUTE FUNCTION durable_test_fault()")
        elif connection.vendor == "mysql":  # SIGNAL: an error the driver reports as an OperationalError
            cur.execute(f"CREATE TRIGGER durable_test_fault BEFORE UPDATE ON {table} FOR EACH ROW BEGIN "
                        f"IF NEW.instance_id = '{iid}' AND NEW.steps <> OLD.steps THEN "
                        "SIGNAL SQLSTATE '08S01' SET MESSAGE_TEXT = 'simulated connection failure'; END IF; END")
        else:  # an exception in an SQL function is an OperationalError on SQLite
            def fault():
                raise RuntimeError("simulated I/O failure")

            connection.connection.create_function("durable_test_fault", 0, fault)
            cur.execute(f"CREATE TRIGGER durable_test_fault BEFORE UPDATE ON {table} "
                        f"WHEN NEW.instance_id = '{iid}' AND NEW.steps <> OLD.steps "
                        "BEGIN SELECT durable_test_fault(); END")


def _heal() -> None:
    with connection.cursor() as cur:
        cur.execute(f"DROP TRIGGER IF EXISTS durable_test_fault"
                    f"{' ON ' + DurableInstance._meta.db_table if connection.vendor == 'postgresql' else ''}")


def test_database_errors_propagate_for_retries_and_count_to_max_attempts(uid, settings, monkeypatch):
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": False, "MAX_ATTEMPTS": 3, "HEARTBEAT": False}
    monkeypatch.setattr("durable_django.wakeups.send_task", lambda *a, **k: None)
    dd.start(progs.steps_then_wait, uid, instance_id=uid)
    _fail_checkpoints(uid)
    try:
        for attempt in range(1, 4):
            with pytest.raises(OperationalError, match="simulated|user-defined function"):  # Celery retries it
                durable_worker.run_instance(uid)
            row = reload(uid)
            assert (row.status, row.attempts, row.lease_owner, row.steps) == (Status.RUNNING, attempt, "", 0)
            assert uid in durable_worker.due_instances()  # still to be retried
        assert durable_worker.run_instance(uid) == durable_worker.SKIPPED  # the claim after MAX_ATTEMPTS suspends it
        row = reload(uid)
        assert row.status == Status.SUSPENDED and "MAX_ATTEMPTS" in row.error and "database error" in row.error
        assert uid not in durable_worker.due_instances()
    finally:
        _heal()
    assert not progs.SideEffect.objects.filter(key=uid).exists()  # each try's write was rolled back
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": True}
    dd.resume(uid)  # the fault is gone: an operator resumes it, nothing was lost
    row = reload(uid)
    assert (row.status, row.waiting_for, row.attempts) == (Status.PAUSED, "go", 0)
    assert progs.SideEffect.objects.filter(key=uid).count() == 1


def test_database_errors_on_a_worker_are_retried_by_celery_then_suspended(worker_factory, uid):
    if connection.vendor != "postgresql":
        pytest.skip("the fault is a PostgreSQL trigger here (SQLite's needs a function in the worker process)")
    worker = worker_factory(extra_env={})
    _fail_checkpoints(uid)
    try:
        dd.start(progs.steps_then_wait, uid, instance_id=uid)
        row = wait_final(uid, timeout=120)
    finally:
        _heal()
    assert row.status == Status.SUSPENDED and "MAX_ATTEMPTS" in row.error
    assert "Retry in" in worker.output()  # Celery's autoretry, as before
    assert not progs.SideEffect.objects.filter(key=uid).exists()


# -- migrations ------------------------------------------------------------------------------------------------------
def test_a_failing_migration_suspends_on_a_worker_and_a_fixed_one_resumes(worker_factory, uid, settings):
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": True}
    dd.start(progs.relayout, uid, instance_id=uid)  # this process has the old code: it pauses on "go"
    assert reload(uid).waiting_for == "go"
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": False}
    new_code = {"DURABLE_TEST_NEW_LAYOUT": "1"}
    bad = worker_factory("bad-migration", extra_env={**new_code, "DURABLE_TEST_MIGRATE_TO": 'wait_for_event("nope"'})
    dd.publish_event(uid, "go", 7)
    row = wait_final(uid)
    assert row.status == Status.SUSPENDED, row.error
    assert "CodeChangedError" in row.error and "migration" in row.error
    assert "no await matching 'wait_for_event(\"nope\"'" in row.error and "resume points are" in row.error
    assert history(uid)[-1][0] == "suspended" and "no await matching" in history(uid)[-1][1]
    assert DurableEvent.objects.get(instance_id=uid, name="go").consumed_at is None  # kept for later
    wait_until(lambda: "succeeded" in bad.output(), message="the task to end normally")
    assert "raised unexpected" not in bad.output()
    bad.stop()
    # the migration fixed to name the await as the file writes it (double quotes): the instance resumes
    worker_factory("good-migration", extra_env={**new_code, "DURABLE_TEST_MIGRATE_TO": 'wait_for_event("go"'})
    cmd("durable_resume", uid)
    row = wait_final(uid)
    assert row.status == Status.COMPLETED and row.result == ["new", 7]  # the new code ran on, from the old frame
    assert "migrated" in [k for k, _ in history(uid)]  # also when the run that migrated it completed it


def test_durable_resume_sync_reports_a_failing_migration_as_a_command_error(inline, uid, monkeypatch):
    dd.start(progs.relayout, uid, instance_id=uid)
    monkeypatch.setattr(progs.relayout.compiled, "layout_hash", "changed")  # as if the code had a new layout

    def bad_migration(frame):
        frame.move_to("no such await")
        return True

    dd.register_migration(progs.relayout, bad_migration)
    try:
        dd.publish_event(uid, "go", 1)  # runs inline: the migration raises
        row = reload(uid)
        assert row.status == Status.SUSPENDED and "no await matching 'no such await'" in row.error
        with pytest.raises(CommandError) as info:
            cmd("durable_resume", "--sync", uid)
        msg = str(info.value)
        assert uid in msg and "suspended" in msg and "no await matching 'no such await'" in msg
        assert reload(uid).status == Status.SUSPENDED
        assert DurableEvent.objects.get(instance_id=uid, name="go").consumed_at is None
    finally:
        programs._migrations.clear()


# -- status while the first step runs ----------------------------------------------------------------------------
def test_an_instance_reads_running_while_its_first_step_runs(worker_factory, uid, tmp_path):
    hang = tmp_path / "hang"
    hang.mkdir()
    admin = Client()  # logged in before the step holds SQLite's write lock
    admin.force_login(User.objects.create_superuser("root", password="pw"))
    worker = worker_factory("hangs", extra_env={"DURABLE_TEST_HANG_DIR": str(hang)})
    dd.start(progs.effect_then_finish, uid, instance_id=uid)
    assert reload(uid).status in (Status.PENDING, Status.RUNNING)
    wait_until(lambda: (hang / f"{uid}.entered").exists(), timeout=60, message="the first step to start")
    row = reload(uid)
    assert row.status == Status.RUNNING and row.lease_owner and row.steps == 0
    page = admin.get(reverse("admin:durable_django_durableinstance_changelist")).content.decode()
    assert uid in page and ">running<" in page.replace("Running", "running")
    assert json.loads(cmd("durable_status", "--json", "--status", "running"))[0]["instance_id"] == uid
    assert uid not in durable_worker.due_instances()  # a live lease: the sweep leaves it alone
    first = async_to_sync(_first_messages)(f"/ws/durable/instances/{uid}/", User.objects.get(username="root"), 1)
    assert first[0]["type"] == "status" and first[0]["instance"]["status"] == Status.RUNNING
    worker.kill()


async def _first_messages(path: str, user, n: int) -> list[dict]:
    from channels.routing import URLRouter
    from channels.testing.websocket import WebsocketCommunicator

    from durable_django.routing import websocket_urlpatterns

    c = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    c.scope["user"] = user
    assert (await c.connect(timeout=10))[0]
    try:
        return [await c.receive_json_from(timeout=10) for _ in range(n)]
    finally:
        await c.disconnect()


def test_websocket_messages_are_the_documented_ones(inline, uid):
    """The list stream starts with one ``snapshot`` message; one instance's stream with its ``status``."""
    root = User.objects.create_superuser("root", password="pw")
    dd.start(progs.two_events, uid, instance_id=uid)
    (snap,) = async_to_sync(_first_messages)("/ws/durable/instances/", root, 1)
    assert set(snap) == {"type", "instances"} and snap["type"] == "snapshot"
    assert [i["instance_id"] for i in snap["instances"]] == [uid]
    fields = {"instance_id", "program", "status", "wait_kind", "waiting_for", "wake_at", "position", "steps",
              "version", "updated_at"}
    assert fields <= set(snap["instances"][0])
    (one,) = async_to_sync(_first_messages)(f"/ws/durable/instances/{uid}/", root, 1)
    assert set(one) == {"type", "instance"} and one["type"] == "status" and one["instance"] == snap["instances"][0]
    (gone,) = async_to_sync(_first_messages)(f"/ws/durable/instances/{uid}-purged/", root, 1)
    assert gone == {"type": "gone", "instance_id": f"{uid}-purged"}


# -- unreadable state ---------------------------------------------------------------------------------------------
@pytest.fixture
def tampered(inline, uid):
    dd.start(progs.two_events, uid, instance_id=uid)
    assert reload(uid).status == Status.PAUSED
    DurableInstance.objects.filter(pk=uid).update(state=TAMPERED)
    return uid


def _user(name: str, *codenames: str) -> Client:
    user = User.objects.create_user(name, password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="durable_django", codename__in=("view_durableinstance", *codenames)))
    c = Client()
    c.force_login(user)
    return c


def test_publish_view_refuses_an_unreadable_wait_with_409(tampered):
    pub = _user("publisher", "publish_durableevent")
    pub.get(reverse("durable:tasks"))  # a page that sets the CSRF cookie, as a browser would have
    r = pub.post(reverse("durable:publish", args=[tampered]), data={"event": "first", "payload": "1"},
                 HTTP_X_CSRFTOKEN=pub.cookies["csrftoken"].value)
    assert r.status_code == 409
    body = r.json()
    assert "state unreadable" in body["error"] and "signature" in body["error"] and body["status"] == "paused"
    assert not DurableEvent.objects.filter(instance_id=tampered).exists()  # nothing stored


def test_admin_publish_and_edit_locals_show_the_reason_instead_of_a_500(tampered):
    admin = _user("operator", "publish_durableevent", "edit_locals_durableinstance")
    r = admin.post(reverse("admin:durable_django_durableinstance_publish", args=[tampered]),
                   {"event": "first", "payload": "1"})
    page = r.content.decode()
    assert r.status_code == 400 and "state unreadable" in page and tampered in page
    assert "failed its signature check" in page  # the detail page's own note on the stack
    r = admin.post(reverse("admin:durable_django_durableinstance_locals", args=[tampered]),
                   {"frame": 0, "name": "key", "value": "1"}, follow=True)
    assert r.status_code == 200
    msgs = [str(m) for m in r.context["messages"]]
    assert any("state unreadable" in m and tampered in m for m in msgs), msgs
    assert bytes(reload(tampered).state) == TAMPERED  # nothing written


def test_durable_status_prints_the_row_and_why_the_state_is_unreadable(tampered):
    text = cmd("durable_status", tampered)
    assert tampered in text and "paused" in text
    assert "state unreadable:" in text and "signature" in text
    assert "history:" in text  # the rest of the row is still shown


def test_publish_event_api_keeps_the_event_and_the_run_suspends(tampered):
    ev = dd.publish_event(tampered, "first", 1)  # no human-task check here: nothing to unpickle before storing
    row = reload(tampered)
    assert row.status == Status.SUSPENDED and "StateTamperedError" in row.error
    assert DurableEvent.objects.get(pk=ev.pk).consumed_at is None
