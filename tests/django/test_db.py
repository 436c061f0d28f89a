"""The database package: the routers pick the database, one statement cache, and every operation on this vendor.

The suite runs on SQLite and on PostgreSQL (``DATABASE_URL``), so each
operation is checked on both, on the default database and on a second one
("other", see tests/django/settings.py).
"""

from __future__ import annotations

import importlib
import pkgutil
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

import durable_django
import durable_django as dd
from durable_django import db, worker
from durable_django.db import statements
from durable_django.models import DurableEvent, DurableHistory, DurableInstance, HistoryKind, Status
from tests.django.testapp import durable_programs as progs

BOTH = ["default", "other"]


class ToOther:
    """A router that keeps the app's rows in the "other" database."""

    def db_for_write(self, model, **hints):
        return "other" if model._meta.app_label == "durable_django" else None

    db_for_read = db_for_write

    def allow_relation(self, *args, **hints):
        return True


def _row(alias: str, iid: str, **fields) -> DurableInstance:
    fields = {"program": "tests.django.testapp.durable_programs.two_events", **fields}
    return DurableInstance.objects.using(alias).create(instance_id=iid, **fields)


def _kinds(alias: str, iid: str) -> list[str]:
    rows = DurableHistory.objects.using(alias).filter(instance_id=iid).order_by("id")
    return list(rows.values_list("kind", flat=True))


@pytest.mark.django_db(databases=BOTH)
def test_ops_picks_the_routers_database(settings):
    assert db.alias() == "default" and db.ops().alias == "default"
    settings.DATABASE_ROUTERS = [f"{__name__}.ToOther"]
    assert db.alias() == "other"
    assert db.ops().alias == "other" and db.ops() is db.ops("other")
    assert db.ops("default").alias == "default"  # a named database wins over the routers
    assert db.connection() is connections["other"]
    assert type(db.ops()).__name__ == {"postgresql": "PostgreSQLOperations", "sqlite": "SQLiteOperations",
                                       "mysql": "MySQLOperations"}[connections["other"].vendor]


@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_a_process_routed_to_another_database_runs_there(settings, uid, monkeypatch):
    monkeypatch.setattr("durable_django.wakeups.send_task", lambda *a, **k: None)
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": False}
    settings.DATABASE_ROUTERS = [f"{__name__}.ToOther"]
    dd.start(progs.two_events, "k", instance_id=uid)
    assert worker.run_instance(uid) == Status.PAUSED
    dd.publish_event(uid, "first", 1)
    dd.publish_event(uid, "second", 2, idempotency_key="once")
    assert worker.run_instance(uid) == Status.COMPLETED
    row = DurableInstance.objects.using("other").get(pk=uid)
    assert row.status == Status.COMPLETED and row.result == [1, 2] and row.lease_owner == ""
    assert _kinds("other", uid) == ["started", "paused", "event_published", "event_published", "resumed",
                                    "completed"]
    assert not DurableInstance.objects.using("default").filter(pk=uid).exists()
    assert not DurableHistory.objects.using("default").filter(instance_id=uid).exists()


@pytest.mark.django_db(databases=BOTH)
def test_one_statement_cache():
    for module in pkgutil.walk_packages(durable_django.__path__, "durable_django."):
        if ".migrations." in module.name or module.name.endswith("tests"):
            continue
        mod = importlib.import_module(module.name)
        assert not {"_SQL", "_SQL_CACHE", "_claim_sql"} & set(vars(mod)), f"{module.name} keeps its own SQL cache"
    ops = db.ops()
    ops.event_pending("nobody", "x")
    before = statements.cached()
    ops.event_pending("nobody", "x")
    db.ops("other").event_pending("nobody", "x")  # same vendor, same tables: the same statement
    assert statements.cached() == before
    vendor = connections["default"].vendor
    assert all(key[0] == vendor and key[2] == statements.tables() for key in before)
    assert any(key[1] == "event-pending" for key in before)


@pytest.mark.django_db(databases=BOTH)
@pytest.mark.parametrize("alias", BOTH)
def test_claims_release_and_extend(alias, uid):
    ops = db.ops(alias)
    now = timezone.now()
    expires = now + timedelta(seconds=30)
    for i in range(3):
        _row(alias, f"{uid}-{i}", status=Status.PENDING if i else Status.COMPLETED)
    rows = ops.claim_batch([f"{uid}-{i}" for i in range(3)], "w1", now, expires, 5)
    if ops.features.update_returning or connections[alias].vendor == "mysql":
        assert sorted(r[0] for r in rows) == [f"{uid}-1", f"{uid}-2"]  # the finished one is not runnable
        assert {r[3] for r in rows} == {Status.RUNNING} and {r[5] for r in rows} == {"w1"}
        assert ops.claim_batch([f"{uid}-1"], "w2", now, expires, 5) == []  # held
        assert ops.release_unstarted([f"{uid}-1", f"{uid}-2"], "w1", now) == 2
        back = DurableInstance.objects.using(alias).get(pk=f"{uid}-1")
        assert (back.status, back.lease_owner, back.attempts) == (Status.PENDING, "", 0)
    else:
        assert rows == []  # no UPDATE ... RETURNING: each goes through claim_read + claim
    read = ops.claim_read(f"{uid}-1")
    assert read[0] == f"{uid}-1" and read[3] == Status.PENDING
    assert ops.claim_read(f"{uid}-missing") is None
    version = read[4]
    assert ops.claim(f"{uid}-1", "w3", now, expires, version)
    assert not ops.claim(f"{uid}-1", "w4", now, expires, version)  # the version moved on
    assert ops.extend(f"{uid}-1", "w3", expires + timedelta(seconds=5))
    assert not ops.extend(f"{uid}-1", "w4", expires)
    assert ops.release(f"{uid}-1", "w3", now, count_attempt=True) == 1
    row = DurableInstance.objects.using(alias).get(pk=f"{uid}-1")
    assert (row.status, row.lease_owner, row.lease_expires_at, row.attempts) == (Status.RUNNING, "", None, 1)


@pytest.mark.django_db(databases=BOTH)
@pytest.mark.parametrize("alias", BOTH)
def test_checkpoint_events_and_history(alias, uid):
    ops = db.ops(alias)
    now = timezone.now()
    _row(alias, uid, status=Status.RUNNING, lease_owner="w1")
    first = ops.insert_event(uid, "go", {"n": 1}, '{"n": 1}')
    second = ops.insert_event(uid, "go", [2], "[2]")
    assert first.pk and first._state.db == alias
    assert ops.event_pending(uid, "go") and not ops.event_pending(uid, "stop")
    assert ops.next_event(uid, "go") == (first.pk, {"n": 1})
    assert ops.next_event(uid, "go", [first.pk]) == (second.pk, [2])
    columns = {"state": b"blob", "steps": 3, "status": Status.PAUSED, "updated_at": now, "result": {"a": [1]}}
    assert ops.checkpoint(uid, "w2", columns) == 0  # not the lease's owner
    assert ops.checkpoint(uid, "w1", columns) == 1
    ops.consume_events([first.pk], now)
    ops.add_history(uid, HistoryKind.PAUSED, Status.PAUSED, "detail", "w1", now)
    if ops.features.data_modifying_ctes:  # PostgreSQL: all of it in one statement
        assert ops.checkpoint(uid, "w1", {"steps": 4}, [second.pk], [(HistoryKind.RESUMED, Status.RUNNING, "")],
                              now) == 1
    else:
        with pytest.raises(NotImplementedError):
            ops.checkpoint(uid, "w1", {"steps": 4}, [second.pk], [], now)
        ops.checkpoint(uid, "w1", {"steps": 4})
        ops.consume_events([second.pk], now)
        ops.add_history(uid, HistoryKind.RESUMED, Status.RUNNING, "", "w1", now)
    row = DurableInstance.objects.using(alias).get(pk=uid)
    assert (bytes(row.state), row.steps, row.status, row.result, row.version) == (b"blob", 4, "paused", {"a": [1]}, 2)
    assert not ops.event_pending(uid, "go") and ops.next_event(uid, "go") is None
    assert _kinds(alias, uid) == ["paused", "resumed"]
    row.status = Status.CANCELLED
    row.save(using=alias)
    assert ops.checkpoint(uid, "w1", {"steps": 5}) == 0  # never over a finished or cancelled instance


@pytest.mark.django_db(databases=BOTH)
@pytest.mark.parametrize("alias", BOTH)
def test_publish_status_programs_and_clock(alias, uid):
    ops = db.ops(alias)
    _row(alias, uid, status=Status.PAUSED, program="b.prog")
    _row(alias, f"{uid}-done", status=Status.COMPLETED, program="a.prog")
    assert ops.instance_status(uid) == (Status.PAUSED, "b.prog") and ops.instance_status("nobody") is None
    status, program, event = ops.publish(uid, "go", {"x": 1}, '{"x": 1}', None, "alice")
    assert (status, program) == (Status.PAUSED, "b.prog")
    assert DurableEvent.objects.using(alias).get(pk=event.pk).payload == {"x": 1} and event._state.db == alias
    assert ops.publish(f"{uid}-done", "go", None, "null", None, "") == (Status.COMPLETED, "a.prog", None)
    assert ops.publish("nobody", "go", None, "null", None, "") is None
    history = DurableHistory.objects.using(alias).get(instance_id=uid)
    assert (history.kind, history.status, history.detail, history.actor) == ("event_published", "paused", "go",
                                                                              "alice")
    assert not DurableEvent.objects.using(alias).filter(instance_id=f"{uid}-done").exists()
    assert ops.distinct_programs(10) == ["a.prog", "b.prog"]
    assert abs(ops.database_time() - timezone.now().timestamp()) < 5
