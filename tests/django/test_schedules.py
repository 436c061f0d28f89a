"""Schedules (durable_django.schedules, docs/schedules.md): ticks across DST, exactly one instance per tick with
two schedulers at once and after a restart mid-tick, overlap and catch-up policies, sync of the schedules
declared in code, the admin, and a real Celery worker completing what a scheduler loop fires."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connections, transaction
from django.test import Client
from django.urls import reverse

from durable.testing import FakeClock
from durable_django import api, clock, db, schedules
from durable_django.models import DurableHistory, DurableInstance, DurableSchedule, HistoryKind, Status
from durable_django.schedules import Timing, instance_id_for
from tests.django.conftest import wait_until

PAUSER = "tests.django.testapp.durable_programs.two_events"      # waits for an event: never finishes alone
QUICK = "tests.django.testapp.durable_programs.effect_then_finish"  # one step, then completes
PARIS = ZoneInfo("Europe/Paris")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def make(name: str, *, program: str = PAUSER, args: list | None = None, at: datetime | None = None,
         **fields) -> DurableSchedule:
    """A schedule row whose next tick after ``at`` is computed as the admin and sync compute it."""
    fields.setdefault("interval_seconds", None if fields.get("cron") else 60)
    row = DurableSchedule(name=name, program=program, args=[name] if args is None else args, **fields)
    row.next_run_at = schedules.timing_of(row).next_after(at or clock.now())
    row.save()
    return row


@pytest.fixture
def no_schedules(db):
    """Start from an empty table (the example project's declared schedule is synced after migrate)."""
    DurableSchedule.objects.all().delete()


# -- when ---------------------------------------------------------------------------------------
def test_cron_next_times_across_dst_changes():
    # 02:30 every day in Paris: on 29 March 2026 02:30 does not exist (clocks jump 02:00 -> 03:00): it runs at
    # 03:00 CEST, right after the gap; on 25 October 02:30 happens twice: it runs once, at the first one.
    t = Timing("30 2 * * *", tz="Europe/Paris")
    ticks, at = [], utc(2026, 3, 27, 12)
    for _ in range(4):
        at = t.next_after(at)
        ticks.append(at)
    assert ticks == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30), utc(2026, 3, 31, 0, 30)]
    assert [x.astimezone(PARIS).strftime("%H:%M") for x in ticks] == ["02:30", "03:00", "02:30", "02:30"]
    ticks, at = [], utc(2026, 10, 23, 12)
    for _ in range(4):
        at = t.next_after(at)
        ticks.append(at)
    assert ticks == [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30),
                     utc(2026, 10, 27, 1, 30)]
    # A weekly 09:00 in Paris stays at 09:00 local time: 07:00 UTC in summer, 08:00 UTC in winter.
    weekly = Timing("0 9 * * MON", tz="Europe/Paris")
    assert weekly.next_after(utc(2026, 10, 13)) == utc(2026, 10, 19, 7)
    assert weekly.next_after(utc(2026, 10, 20)) == utc(2026, 10, 26, 8)
    # New York changes on another date (1 November): the same cron in UTC moves a week later there.
    ny = Timing("0 9 * * MON", tz="America/New_York")
    assert ny.next_after(utc(2026, 10, 27)) == utc(2026, 11, 2, 14)
    assert ny.next_after(utc(2026, 10, 20)) == utc(2026, 10, 26, 13)
    # latest(): the missed ticks in a window, oldest first, across the change too.
    assert weekly.latest(utc(2026, 10, 19), utc(2026, 11, 3), 5) == [utc(2026, 10, 19, 7), utc(2026, 10, 26, 8),
                                                                     utc(2026, 11, 2, 8)]
    assert weekly.latest(utc(2026, 10, 19), utc(2026, 11, 3), 1) == [utc(2026, 11, 2, 8)]


def test_interval_ticks_are_elapsed_seconds_across_dst():
    # Every hour over the October change in Paris: 25 hours that day, ticks 3,600 s apart, the local hour 02:00
    # seen twice; aligned on the epoch (whole hours UTC), whatever the time zone.
    t = Timing(interval=3600, tz="Europe/Paris")
    at, ticks = utc(2026, 10, 24, 22, 10), []
    for _ in range(5):
        at = t.next_after(at)
        ticks.append(at)
    assert [(b - a).total_seconds() for a, b in zip(ticks, ticks[1:], strict=False)] == [3600.0] * 4
    assert ticks[0] == utc(2026, 10, 24, 23)
    assert [x.astimezone(PARIS).strftime("%H:%M%z") for x in ticks] == [
        "01:00+0200", "02:00+0200", "02:00+0100", "03:00+0100", "04:00+0100"]
    assert t.next_after(utc(2026, 10, 25, 1)) == utc(2026, 10, 25, 2)  # strictly after
    assert t.latest(utc(2026, 10, 25, 0), utc(2026, 10, 25, 3, 30), 10) == [
        utc(2026, 10, 25, h) for h in range(4)]


@pytest.mark.parametrize("kwargs", [
    {"cron": "61 * * * *"}, {"cron": "0 9 * * MON", "interval": 60}, {}, {"interval": 0},
    {"cron": "0 9 * * *", "tz": "Mars/Olympus"}, {"cron": "0 0 30 2 *"},
])
def test_bad_timing_is_refused(kwargs):
    with pytest.raises(ValueError):
        Timing(kwargs.get("cron", ""), kwargs.get("interval"), kwargs.get("tz", "UTC"))


# -- exactly once -----------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_two_schedulers_at_once_over_50_ticks_none_doubled_or_lost():
    DurableSchedule.objects.all().delete()
    fake = FakeClock(utc(2026, 12, 1, 8, 0, 0))
    names = [f"pair-{i}" for i in range(6)]
    with clock.override(fake):
        for name in names:
            make(name, program=QUICK, args=[name], interval_seconds=60, overlap="allow")
        ticks = 50
        barrier = threading.Barrier(2)
        fired: dict[int, list[str]] = {0: [], 1: []}
        errors: list[BaseException] = []
        done = threading.Event()

        def scheduler(n: int) -> None:
            try:
                for _ in range(ticks):
                    barrier.wait(timeout=60)  # both fire the same tick together
                    if n == 0:
                        fake.advance(60)
                    barrier.wait(timeout=60)
                    fired[n].extend(schedules.fire_due())
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                barrier.abort()
            finally:
                connections.close_all()
                done.set()

        threads = [threading.Thread(target=scheduler, args=(n,)) for n in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    assert not errors, errors
    both = fired[0] + fired[1]
    expected = {instance_id_for(name, utc(2026, 12, 1, 8, 0) + timedelta(minutes=k))
                for name in names for k in range(1, ticks + 1)}
    assert len(both) == len(set(both)), "a tick was fired by both schedulers"
    assert set(both) == expected, "a tick was lost"
    assert fired[0] and fired[1], "one scheduler did all the work: the race was not exercised"
    rows = DurableInstance.objects.filter(pk__in=expected)
    assert rows.count() == len(expected)
    assert DurableHistory.objects.filter(kind=HistoryKind.STARTED, instance__in=rows).count() == len(expected)
    for row in DurableSchedule.objects.all():
        assert row.next_run_at == utc(2026, 12, 1, 8, 0) + timedelta(minutes=ticks + 1)
        assert row.last_instance_id == instance_id_for(row.name, utc(2026, 12, 1, 8, 0) + timedelta(minutes=ticks))


def test_restart_mid_tick_does_not_double_it(no_schedules):
    # The tick's instance committed, then the scheduler died before next_run_at moved (as if they had not been
    # in one transaction): the restarted scheduler finds the instance by its id and starts nothing new.
    t0 = utc(2026, 12, 1, 8, 0)
    row = make("restart", at=t0 - timedelta(seconds=1), interval_seconds=60)
    assert row.next_run_at == t0
    iid = instance_id_for("restart", t0)
    api.start(PAUSER, "restart", instance_id=iid)
    assert schedules.fire_due(now=t0 + timedelta(seconds=3)) == [iid]  # the same instance, not a second one
    assert DurableInstance.objects.filter(instance_id__startswith="restart@").count() == 1
    assert DurableHistory.objects.filter(instance_id=iid, kind=HistoryKind.STARTED).count() == 1
    row.refresh_from_db()
    assert row.next_run_at == t0 + timedelta(minutes=1) and row.last_instance_id == iid
    assert schedules.fire_due(now=t0 + timedelta(seconds=30)) == []


def test_a_scheduler_that_lost_the_race_rolls_its_starts_back(no_schedules):
    # Scheduler B read the row (next_run_at = T) before scheduler A fired T and moved it on; B's firing a
    # minute later computes tick T+1min from its stale row, starts it, fails the compare-and-set: rolled back.
    t0 = utc(2026, 12, 1, 8, 0)
    make("race", at=t0 - timedelta(seconds=1), interval_seconds=60, overlap="allow")
    stale = DurableSchedule.objects.get(name="race")
    assert schedules.fire_due(now=t0) == [instance_id_for("race", t0)]
    later = t0 + timedelta(minutes=1)
    with transaction.atomic():
        assert schedules._fire_one(stale, later, db.alias()) == []
    assert not DurableInstance.objects.filter(pk=instance_id_for("race", later)).exists()
    assert schedules.fire_due(now=later) == [instance_id_for("race", later)]


KILLER = """
import os, signal, django
django.setup()
from django.db.models.signals import post_save
from django.core.management import call_command
from durable_django.models import DurableInstance

def die(sender, instance, created, **kwargs):
    if created and instance.instance_id.startswith("crash-1@"):  # 2nd schedule of the chunk: inserted, uncommitted
        os.kill(os.getpid(), signal.SIGKILL)

post_save.connect(die, sender=DurableInstance)
call_command("durable_schedules", "fire")
"""


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_scheduler_process_killed_mid_tick_then_restarted_fires_each_tick_once():
    import os
    import subprocess
    import sys

    from tests.django.conftest import ROOT

    DurableSchedule.objects.all().delete()
    now = clock.now()
    for i in range(3):
        make(f"crash-{i}", at=now - timedelta(seconds=61), interval_seconds=60, catchup="all", overlap="allow")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django.settings",
           "DURABLE_TEST_DB_NAME": str(connections["default"].settings_dict["NAME"])}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    killed = subprocess.run([sys.executable, "-c", KILLER], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=100)
    assert killed.returncode == -9, killed.stderr[-3000:]
    # Killed inside the firing's transaction: nothing of it committed, not even crash-0's start (before it).
    assert not DurableInstance.objects.filter(instance_id__startswith="crash-").exists()
    before = {r.name: r.next_run_at for r in DurableSchedule.objects.all()}
    restarted = subprocess.run([sys.executable, "manage.py", "durable_schedules", "fire", "-v", "2"], cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=100)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    fired = [line for line in restarted.stdout.splitlines() if line.startswith("crash-")]
    for name, tick in before.items():
        assert instance_id_for(name, tick) in fired  # the tick the killed scheduler was firing
    assert len(fired) == len(set(fired))
    rows = DurableInstance.objects.filter(instance_id__startswith="crash-")
    assert sorted(rows.values_list("instance_id", flat=True)) == sorted(fired)
    assert DurableHistory.objects.filter(instance__in=rows, kind=HistoryKind.STARTED).count() == len(fired)
    assert all(r.next_run_at > clock.now() for r in DurableSchedule.objects.all())


# -- policies ---------------------------------------------------------------------------------------
def test_overlap_skip_allow_and_cancel_previous(no_schedules):
    t0 = utc(2026, 12, 1, 8, 0)
    for name, overlap in (("ov-skip", "skip"), ("ov-allow", "allow"), ("ov-cancel", "cancel_previous")):
        make(name, at=t0 - timedelta(seconds=1), interval_seconds=60, overlap=overlap)
    first = schedules.fire_due(now=t0)
    assert sorted(first) == sorted(instance_id_for(n, t0) for n in ("ov-skip", "ov-allow", "ov-cancel"))
    t1 = t0 + timedelta(minutes=1)
    second = schedules.fire_due(now=t1)  # every first instance is still pending (waits for events)
    assert sorted(second) == sorted([instance_id_for("ov-allow", t1), instance_id_for("ov-cancel", t1)])
    skip = DurableSchedule.objects.get(name="ov-skip")
    assert "still pending" in skip.last_note and skip.last_instance_id == instance_id_for("ov-skip", t0)
    assert skip.next_run_at == t1 + timedelta(minutes=1)
    assert api.get_instance(instance_id_for("ov-allow", t0)).status == Status.PENDING
    # cancel_previous asks the previous instance to cancel (its except/finally run when it wakes up; it ends
    # cancelled), and starts the tick's instance without waiting for that.
    cancelled = api.get_instance(instance_id_for("ov-cancel", t0))
    assert cancelled.cancel_requested_at is not None or cancelled.status == Status.CANCELLED
    assert DurableHistory.objects.filter(instance_id=instance_id_for("ov-cancel", t0), actor="schedule:ov-cancel",
                                         kind__in=(HistoryKind.CANCEL_REQUESTED, HistoryKind.CANCELLED)).exists()
    # Once the previous one finished, a skip schedule fires again.
    api.cancel(instance_id_for("ov-skip", t0), force=True)
    assert instance_id_for("ov-skip", t1 + timedelta(minutes=1)) in schedules.fire_due(now=t1 + timedelta(minutes=1))


def test_catchup_after_downtime_skip_latest_all(no_schedules, settings):
    settings.DURABLE = {**settings.DURABLE, "SCHEDULE_GRACE_SECONDS": 60}
    t0 = utc(2026, 12, 1, 8, 0)
    for name, catchup in (("cu-skip", "skip"), ("cu-latest", "latest"), ("cu-all", "all")):
        make(name, at=t0 - timedelta(seconds=1), interval_seconds=600, catchup=catchup, max_catchup=4,
             overlap="allow")
    # Down for an hour and five minutes: ticks 08:00, 08:10, ... 09:00 (7) were missed; it is 09:05.
    now = t0 + timedelta(minutes=65)
    fired = schedules.fire_due(now=now)
    mine = {n: sorted(i for i in fired if i.startswith(n + "@")) for n in ("cu-skip", "cu-latest", "cu-all")}
    assert mine["cu-skip"] == []
    assert mine["cu-latest"] == [instance_id_for("cu-latest", t0 + timedelta(minutes=60))]
    assert mine["cu-all"] == [instance_id_for("cu-all", t0 + timedelta(minutes=m)) for m in (30, 40, 50, 60)]
    for row in DurableSchedule.objects.all():
        assert row.next_run_at == t0 + timedelta(minutes=70)
    assert "skipped missed tick" in DurableSchedule.objects.get(name="cu-skip").last_note
    # On time (within the grace), a skip schedule fires its tick.
    assert sorted(schedules.fire_due(now=t0 + timedelta(minutes=70, seconds=20))) == [
        instance_id_for(n, t0 + timedelta(minutes=70)) for n in ("cu-all", "cu-latest", "cu-skip")]


def test_paused_schedules_do_not_fire_and_resume_from_the_next_tick(no_schedules):
    t0 = utc(2026, 12, 1, 8, 0)
    make("pz", at=t0 - timedelta(seconds=1), interval_seconds=60)
    assert schedules.pause("pz") and not schedules.pause("nope")
    assert schedules.fire_due(now=t0 + timedelta(minutes=5)) == []
    assert schedules.resume("pz", now=t0 + timedelta(minutes=5, seconds=10))
    assert DurableSchedule.objects.get(name="pz").next_run_at == t0 + timedelta(minutes=6)
    assert schedules.fire_due(now=t0 + timedelta(minutes=6)) == [instance_id_for("pz", t0 + timedelta(minutes=6))]


def test_a_schedule_whose_program_is_gone_notes_the_error_and_goes_on(no_schedules):
    t0 = utc(2026, 12, 1, 8, 0)
    make("gone", program="tests.django.testapp.durable_programs.no_such_program", at=t0 - timedelta(seconds=1))
    make("fine", at=t0 - timedelta(seconds=1))
    assert schedules.fire_due(now=t0) == [instance_id_for("fine", t0)]
    gone = DurableSchedule.objects.get(name="gone")
    assert gone.last_note.startswith("error: UnknownProgram") and gone.next_run_at == t0 + timedelta(minutes=1)


# -- declared in code -----------------------------------------------------------------------------------
def test_decorator_and_setting_sync_added_changed_removed(no_schedules, settings, monkeypatch):
    from tests.django.testapp import durable_programs as progs

    monkeypatch.setattr(schedules, "_declared", {})
    settings.DURABLE = {**settings.DURABLE, "SCHEDULES": {
        "nightly": {"program": QUICK, "cron": "0 3 * * *", "tz": "Europe/Paris", "args": ["n"]}}}
    assert schedules.schedule("0 9 * * MON", tz="Europe/Paris", name="weekly", args=["w"])(progs.two_events) \
        is progs.two_events
    schedules.schedule(interval=300)(progs.effect_then_finish)  # named after the program's path
    make("by-hand", at=utc(2026, 12, 1))  # created in the admin: sync leaves it alone
    now = utc(2026, 12, 1, 12)  # a Tuesday
    res = schedules.sync(now=now)
    assert sorted(res.added) == sorted(["nightly", "weekly", QUICK]) and not res.changed and not res.removed
    weekly = DurableSchedule.objects.get(name="weekly")
    assert weekly.declared and weekly.args == ["w"] and weekly.next_run_at == utc(2026, 12, 7, 8)
    assert DurableSchedule.objects.get(name="nightly").next_run_at == utc(2026, 12, 2, 2)
    assert schedules.sync(now=now).changed == []  # nothing to do the second time

    # Changed: a new cron moves next_run_at; paused (an operator's choice) survives the sync.
    schedules.pause("weekly")
    monkeypatch.setattr(schedules, "_declared", {})
    schedules.schedule("0 10 * * FRI", tz="Europe/Paris", name="weekly", args=["w"])(progs.two_events)
    res = schedules.sync(now=now)
    assert res.changed == ["weekly"] and res.removed == [QUICK]
    weekly.refresh_from_db()
    assert weekly.cron == "0 10 * * FRI" and weekly.paused and weekly.next_run_at == utc(2026, 12, 4, 9)
    # Removed from the setting: deleted; the hand-made one stays.
    settings.DURABLE = {**settings.DURABLE, "SCHEDULES": {}}
    assert schedules.sync(now=now).removed == ["nightly"]
    assert set(DurableSchedule.objects.values_list("name", flat=True)) == {"weekly", "by-hand"}


def test_declaring_a_bad_schedule_fails_at_once():
    from tests.django.testapp import durable_programs as progs

    with pytest.raises(ValueError, match="cron"):
        schedules.schedule("every monday")(progs.two_events)
    with pytest.raises(ValueError, match="name"):
        schedules.schedule(interval=60, name="a@b")(progs.two_events)
    with pytest.raises(ValueError, match="JSON"):
        schedules.schedule(interval=60, name="x", args=[object()])(progs.two_events)


def test_system_check_reports_bad_schedule_settings(settings):
    from durable_django.checks import check_schedules

    settings.DURABLE = {**settings.DURABLE, "SCHEDULES": {"bad": {"program": QUICK, "cron": "0 25 * * *"}},
                        "SCHEDULE_INTERVAL": 0}
    ids = sorted(e.id for e in check_schedules())
    assert ids == ["durable_django.E040", "durable_django.E041"]


def test_sync_command_and_list(no_schedules, settings, monkeypatch):
    from io import StringIO

    from django.core.management import call_command

    monkeypatch.setattr(schedules, "_declared", {})
    settings.DURABLE = {**settings.DURABLE, "SCHEDULES": {"cmd": {"program": QUICK, "interval": 30}}}
    out = StringIO()
    call_command("durable_schedules", "sync", stdout=out)
    assert "added: cmd" in out.getvalue()
    out = StringIO()
    call_command("durable_schedules", "list", stdout=out)
    assert "cmd" in out.getvalue() and "every 30s" in out.getvalue()


# -- admin --------------------------------------------------------------------------------------------
def _staff(username: str, *codenames: str) -> Client:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="durable_django",
                                                         codename__in=codenames))
    c = Client()
    c.force_login(user)
    return c


def test_admin_list_shows_next_runs_and_pause_resume_need_the_change_permission(no_schedules):
    row = make("adm", cron="0 9 * * MON", timezone="Europe/Paris")
    changelist = reverse("admin:durable_django_durableschedule_changelist")
    viewer = _staff("viewer", "view_durableschedule")
    page = viewer.get(changelist)
    assert page.status_code == 200
    local = row.next_run_at.astimezone(PARIS)
    assert f"{local:%Y-%m-%d %H:%M:%S}" in page.content.decode() and "09:00:00 CE" in page.content.decode()
    # Without the change permission the actions are not offered, and posting one changes nothing.
    assert "pause_selected" not in page.content.decode()
    viewer.post(changelist, {"action": "pause_selected", "_selected_action": [row.pk]})
    row.refresh_from_db()
    assert not row.paused

    editor = _staff("editor", "view_durableschedule", "change_durableschedule")
    r = editor.post(changelist, {"action": "pause_selected", "_selected_action": [row.pk]})
    assert r.status_code == 302
    row.refresh_from_db()
    assert row.paused and "paused by editor" in row.last_note
    assert "paused" in editor.get(changelist).content.decode()
    editor.post(changelist, {"action": "resume_selected", "_selected_action": [row.pk]})
    row.refresh_from_db()
    assert not row.paused and row.next_run_at > clock.now()


def test_admin_edit_checks_the_timing_and_recomputes_the_next_run(no_schedules):
    row = make("edit", interval_seconds=3600)
    su = User.objects.create_superuser("root", password="pw")
    c = Client()
    c.force_login(su)
    url = reverse("admin:durable_django_durableschedule_change", args=[row.pk])
    page = c.get(url).content.decode()
    assert "upcoming ticks" in page.lower()
    form = {"name": "edit", "program": PAUSER, "args": '["edit"]', "kwargs": "{}", "cron": "0 61 * * *",
            "interval_seconds": "", "timezone": "UTC", "overlap": "skip", "catchup": "skip", "max_catchup": "10"}
    r = c.post(url, form)
    assert r.status_code == 200 and "bad cron expression" in r.content.decode()
    r = c.post(url, {**form, "cron": "15 4 * * *"})
    assert r.status_code == 302, r.content.decode()[:2000]
    row.refresh_from_db()
    assert row.cron == "15 4 * * *" and row.interval_seconds is None
    assert row.next_run_at == Timing("15 4 * * *").next_after(clock.now())
    # A schedule declared in code shows its definition read-only.
    DurableSchedule.objects.filter(pk=row.pk).update(declared=True)
    page = c.get(url).content.decode()
    assert 'name="cron"' not in page


# -- real worker ---------------------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_real_worker_and_two_scheduler_loops_run_a_schedule_every_two_seconds(worker_factory, uid):
    # Two `durable_resume --loop` processes (what two beat processes would do) fire the same schedule on the
    # real clock; a real Celery worker runs the instances. Every tick once, none lost, all completed.
    DurableSchedule.objects.all().delete()
    name = f"every2-{uid}"
    make(name, program=QUICK, args=[name], interval_seconds=2, overlap="allow", catchup="all")
    worker_factory()
    loops = [worker_factory.scheduler(interval=0.3), worker_factory.scheduler(interval=0.3)]

    def completed() -> list[str]:
        return list(DurableInstance.objects.filter(instance_id__startswith=name + "@", status=Status.COMPLETED)
                    .order_by("instance_id").values_list("instance_id", flat=True))

    done = wait_until(lambda: len(completed()) >= 4 and completed(), timeout=120,
                      message=lambda: f"4 scheduled instances completed; have {completed()}")
    ticks = [datetime.strptime(i.split("@")[1], "%Y-%m-%dT%H:%M:%SZ") for i in done]
    assert all((b - a).total_seconds() == 2 for a, b in zip(ticks, ticks[1:], strict=False)), done
    assert not DurableInstance.objects.filter(instance_id__startswith=name + "@", status=Status.FAILED).exists()
    # Each started instance was reported by exactly one of the two loops ("N scheduled instance(s) started.").
    for w in loops:
        w.stop()
    reported = sum(int(line.split()[0]) for w in loops for line in w.output().splitlines()
                   if line.endswith("scheduled instance(s) started."))
    assert reported == DurableInstance.objects.filter(instance_id__startswith=name + "@").count(), \
        [w.output()[-2000:] for w in loops]


# -- the example project ---------------------------------------------------------------------------
def test_example_weekly_reminder_is_synced_and_counts_waiting_expenses(db):
    from durable_django.worker import run_instance
    from example_project.expenses.models import Expense

    schedules.sync()
    row = DurableSchedule.objects.get(name="expenses-weekly-reminder")
    assert row.declared and row.cron == "0 9 * * MON" and row.timezone == "Europe/Paris"
    assert row.next_run_at.astimezone(PARIS).strftime("%a %H:%M") == "Mon 09:00"
    user = User.objects.create_user("emp")
    Expense.objects.create(employee=user, amount=10, description="taxi", state=Expense.State.AWAITING_MANAGER)
    Expense.objects.create(employee=user, amount=20, description="hotel", state=Expense.State.PAID)
    tick = row.next_run_at
    assert schedules.fire_due(now=tick) == [instance_id_for(row.name, tick)]
    assert run_instance(instance_id_for(row.name, tick)) == Status.COMPLETED  # (the test's transaction never commits)
    assert api.result(instance_id_for(row.name, tick))["count"] == 1


def test_beat_entry_and_task_fire_what_is_due(no_schedules, monkeypatch):
    from durable_django.conf import beat_schedule

    # (it would close the test's connection, which is inside the test's transaction)
    monkeypatch.setattr(schedules, "drop_broken_connections", lambda: None)

    entry = beat_schedule(30, schedules_interval=2)["durable-django-schedules"]
    assert entry == {"task": "durable_django.fire_schedules", "schedule": 2.0}
    make("beat", at=clock.now() - timedelta(minutes=2))  # due a minute ago, within the grace
    assert schedules.fire_schedules.apply().get() == 1
    assert DurableInstance.objects.filter(instance_id__startswith="beat@").count() == 1
