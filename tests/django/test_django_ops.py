"""Management commands, system checks, settings and migrations."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.checks import run_checks
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

import durable_django as dd
from durable_django.conf import DEFAULTS, derive_key, durable_settings
from durable_django.models import DurableInstance, Status
from tests.django.testapp import durable_programs as progs

pytestmark = pytest.mark.django_db(transaction=True)


def cmd(*args, **kwargs) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO(), **kwargs)
    return out.getvalue()


def test_status_list_and_detail(inline, uid):
    dd.start(progs.approval, 8, instance_id=uid)
    listing = cmd("durable_status")
    assert uid in listing and "paused" in listing and "1 instance(s)." in listing
    rows = json.loads(cmd("durable_status", "--json", "--status", "paused"))
    assert [r["instance_id"] for r in rows] == [uid]
    assert json.loads(cmd("durable_status", "--json", "--status", "completed")) == []
    detail = json.loads(cmd("durable_status", uid, "--json"))
    assert detail["waiting_for"] == "approved"
    assert detail["stack"][0]["locals"]["order_id"] == "8"
    assert [h["kind"] for h in detail["history"]] == ["started", "paused"]
    text = cmd("durable_status", uid)
    assert "wait_for_event('approved')" in text and "order_id = 8" in text
    with pytest.raises(CommandError, match="no durable instance"):
        cmd("durable_status", "missing")


def test_status_detail_of_tampered_state_does_not_unpickle(inline, uid):
    dd.start(progs.approval, 9, instance_id=uid)
    DurableInstance.objects.filter(pk=uid).update(state=b"DS1" + b"\0" * 32 + b"not a pickle")
    detail = json.loads(cmd("durable_status", uid, "--json"))
    assert "signature" in detail["stack"]["error"]


def test_publish_and_cancel_commands(inline, uid):
    dd.start(progs.two_events, uid, instance_id=uid)
    with pytest.raises(CommandError, match="not valid JSON"):
        cmd("durable_publish", uid, "first", "--payload", "{nope")
    with pytest.raises(CommandError, match="no durable instance"):
        cmd("durable_publish", "missing", "first")
    assert "stored" in cmd("durable_publish", uid, "first", "--payload", "[1, 2]", "--idempotency-key", "x")
    assert DurableInstance.objects.get(pk=uid).waiting_for == "second"
    assert "cancelled" in cmd("durable_cancel", uid, "--reason", "test")
    with pytest.raises(CommandError, match="could not be cancelled"):
        cmd("durable_cancel", uid)


def test_resume_command_modes(uid, settings):
    sent = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("durable_django.wakeups.send_task", lambda iid, **kw: sent.append(iid))
        dd.start(progs.sleeper, 0.0, instance_id=uid)  # scheduled through Celery (captured)
        assert sent == [uid]
        # Nobody ran it; once its wake-up is overdue the sweep finds it.
        DurableInstance.objects.filter(pk=uid).update(updated_at=timezone.now() - timedelta(hours=1))
        assert uid in cmd("durable_resume", "--dry-run")
        assert "1 instance(s) scheduled" in cmd("durable_resume")
        assert sent == [uid, uid]
        out = cmd("durable_resume", "--sync")
        assert "1 instance(s) ran" in out
    assert DurableInstance.objects.get(pk=uid).status == Status.COMPLETED
    assert "0 instance(s)" in cmd("durable_resume", "--loop", "--interval", "0.01", "--iterations", "2", "--sync")
    with pytest.raises(CommandError, match="could not be resumed"):
        cmd("durable_resume", uid)  # finished
    with pytest.raises(CommandError):
        cmd("durable_resume", "missing")


def test_resume_one_instance_synchronously(uid):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("durable_django.wakeups.send_task", lambda iid, **kw: None)
        dd.start(progs.approval, 12, instance_id=uid)
        assert "dry" not in cmd("durable_resume", uid, "--dry-run")
        assert cmd("durable_resume", uid, "--sync").strip() == f"{uid}: paused"
        dd.publish_event(uid, "approved", "ok")
    assert cmd("durable_resume", uid, "--sync").strip() == f"{uid}: completed"


def test_purge(inline, uid):
    dd.start(progs.double, 1, instance_id=uid)
    dd.start(progs.approval, 13, instance_id=uid + "-open")
    assert "0 instance(s) deleted" in cmd("durable_purge", "--days", "1")
    DurableInstance.objects.filter(pk=uid).update(finished_at=timezone.now() - timedelta(days=2))
    assert "1 instance(s) would be deleted" in cmd("durable_purge", "--days", "1", "--dry-run")
    assert "1 instance(s) deleted" in cmd("durable_purge", "--days", "1")
    assert list(DurableInstance.objects.values_list("pk", flat=True)) == [uid + "-open"]


def test_versions_command(inline, uid):
    dd.start(progs.two_events, uid, instance_id=uid)
    dd.start(progs.two_events, uid + "b", instance_id=uid + "b")
    DurableInstance.objects.filter(pk=uid + "b").update(layout_hash="0ld")
    rows = json.loads(cmd("durable_versions", "--json"))
    verdicts = {r["layout_hash"]: r["verdict"] for r in rows}
    assert verdicts["0ld"].startswith("CODE CHANGED") and "current" in verdicts.values()
    DurableInstance.objects.filter(pk=uid).update(program="gone.module.prog")
    assert "PROGRAM MISSING" in cmd("durable_versions")


def _ids(settings_dict) -> set[str]:
    with override_settings(DURABLE=settings_dict):
        return {m.id for m in run_checks() if m.id.startswith("durable_django")}


@pytest.mark.django_db(transaction=True, databases=["default", "other"])  # Django 6.1's model checks query each
def test_system_checks():
    # W004: the example's in-memory channel layer with separate workers (the example silences it)
    assert _ids({}) - {"durable_django.W004"} == set()
    assert _ids({"CHANNEL_LAYER": None}) == set()
    assert "durable_django.E001" in _ids({"LEASE_SECOND": 5})
    assert "durable_django.E002" in _ids({"SIGNING_KEY": "short"})
    assert "durable_django.E003" in _ids({"LEASE_SECONDS": 0})
    assert "durable_django.E003" in _ids({"MAX_ATTEMPTS": "3"})
    assert "durable_django.E004" in _ids({"QUEUE": ""})
    assert "durable_django.E005" in _ids({"PROGRAMS": "tests.django"})


def test_sqlite_check(monkeypatch):
    from types import SimpleNamespace

    from durable_django.checks import check_database

    bare = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "x"}}
    monkeypatch.setattr("durable_django.checks.settings", SimpleNamespace(DATABASES=bare))
    assert [m.id for m in check_database()] == ["durable_django.W002"]
    tuned = {"default": {**bare["default"], "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20}}}
    monkeypatch.setattr("durable_django.checks.settings", SimpleNamespace(DATABASES=tuned))
    assert check_database() == []


def test_sqlite_check_hint_fits_the_django_version(monkeypatch):
    """Django < 5.1 has no 'transaction_mode' (sqlite3.connect() rejects it): the hint says to upgrade instead."""
    from types import SimpleNamespace

    from durable_django.checks import check_database

    bare = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "x"}}
    monkeypatch.setattr("durable_django.checks.settings", SimpleNamespace(DATABASES=bare))
    assert "'transaction_mode': 'IMMEDIATE'" in check_database()[0].hint
    monkeypatch.setattr("django.VERSION", (5, 0, 14, "final", 0))
    (warning,) = check_database()
    assert warning.id == "durable_django.W002"
    assert "OPTIONS=" not in warning.hint and "Upgrade Django" in warning.hint


def test_unsupported_django_check(monkeypatch):
    from durable_django.checks import check_django_version

    assert check_django_version() == []
    monkeypatch.setattr("django.VERSION", (5, 1, 15, "final", 0))
    monkeypatch.setattr("django.get_version", lambda: "5.1.15")
    (error,) = check_django_version()
    assert error.id == "durable_django.E030" and "5.1.15" in error.msg and "django>=5.2" in error.hint


def test_celery_connection_reuse_check(monkeypatch):
    from types import SimpleNamespace

    from durable_django.checks import check_celery

    pg = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "x"}}
    monkeypatch.setattr("durable_django.checks.settings", SimpleNamespace(DATABASES=pg, DURABLE={}))
    assert [m.id for m in check_celery()] == ["durable_django.W005"]
    monkeypatch.setattr("durable_django.checks.settings",
                        SimpleNamespace(DATABASES=pg, DURABLE={}, CELERY_DB_REUSE_MAX=1000))
    assert check_celery() == []
    monkeypatch.setattr("durable_django.checks.settings",
                        SimpleNamespace(DATABASES=pg, DURABLE={"RUN_INLINE": True}))
    assert check_celery() == []  # no workers
    lite = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "x"}}
    monkeypatch.setattr("durable_django.checks.settings", SimpleNamespace(DATABASES=lite, DURABLE={}))
    assert check_celery() == []  # opening a SQLite connection costs next to nothing


def test_settings_defaults_strictness_and_reload(settings):
    assert durable_settings.LEASE_SECONDS == settings.DURABLE["LEASE_SECONDS"]
    assert durable_settings.MAX_ATTEMPTS == DEFAULTS["MAX_ATTEMPTS"]
    with pytest.raises(AttributeError, match="Invalid DURABLE setting"):
        durable_settings.LEASE_SECOND  # noqa: B018
    settings.DURABLE = {"LEASE_SECONDS": 7}
    assert durable_settings.LEASE_SECONDS == 7
    assert durable_settings.signing_key == derive_key(settings.SECRET_KEY) != settings.SECRET_KEY.encode()
    settings.DURABLE = {"SIGNING_KEY": "0123456789abcdef-explicit"}
    assert durable_settings.signing_key == b"0123456789abcdef-explicit"


def test_migrations_are_complete():
    out = StringIO()
    call_command("makemigrations", "durable_django", "--check", "--dry-run", stdout=out)
    with override_settings(DEFAULT_AUTO_FIELD="django.db.models.AutoField"):
        call_command("makemigrations", "durable_django", "--check", "--dry-run", stdout=out)


def test_sweep_task_and_beat_schedule(inline, uid):
    from durable_django.conf import beat_schedule
    from durable_django.tasks import sweep

    entry = beat_schedule(5)["durable-django-sweep"]
    assert entry == {"task": "durable_django.sweep", "schedule": 5.0}
    assert sweep.name == "durable_django.sweep"
    assert sweep.run() == 0


def test_core_never_imports_django():
    import subprocess
    import sys

    code = "import sys; sys.modules['django'] = None; import durable; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
