"""Glue between the app and its admin/live/human-task parts: receivers, settings, checks, actors, repairs."""

from __future__ import annotations

from io import StringIO

import pytest
from channels.layers import InMemoryChannelLayer
from django.apps import apps
from django.contrib.auth.models import AnonymousUser, Group, Permission, User
from django.core.management import call_command
from django.db.models import F
from django.test import override_settings
from django.utils import timezone

import durable_django as dd
from durable import make_durable, wait_for_event
from durable_django import consumers, live, signals
from durable_django.checks import check_channel_layer, check_settings
from durable_django.humantasks import sync
from durable_django.humantasks.models import HumanTask, RepairCursor
from durable_django.humantasks.sync import answer
from durable_django.models import DurableHistory, DurableInstance, HistoryKind

pytestmark = pytest.mark.django_db(transaction=True)

IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
REDIS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": ["redis://x:1/0"]}}}


@make_durable
async def reviewed():
    return await wait_for_event("review", group="reviewers", title="Review it")


@make_durable
async def plain():
    return await wait_for_event("go")


class LocalLayer(InMemoryChannelLayer):
    """A project's own in-memory layer (still per process)."""


def _receivers(signal, uid: str) -> int:
    return sum(1 for entry in signal.receivers if entry[0][0] == uid)


# -- 1. the live push is connected by durable_django itself, once ------------------------------------
def _push_after_task_sync() -> bool:
    """The push goes out after the task row is synced (pages re-read the task when the push arrives)."""
    order = [entry[0][0] for entry in signals.instance_transition.receivers]
    return order.index("durable_django.humantasks.sync") < order.index("durable_django.live.on_transition")


def test_live_push_connected_once_by_the_app_even_after_repeated_ready():
    assert _push_after_task_sync()  # as django.setup() left it
    apps.get_app_config("durable_django").ready()
    apps.get_app_config("durable_humantasks").ready()
    assert _push_after_task_sync()
    live.connect()
    assert _receivers(signals.instance_transition, "durable_django.live.on_transition") == 1
    assert _receivers(signals.instance_transition, "durable_django.humantasks.sync") == 1
    assert _receivers(signals.sweep_finished, "durable_django.humantasks.repair") == 1


def test_live_push_is_connected_without_the_humantasks_app():
    import subprocess
    import sys

    from tests.django.conftest import ROOT

    code = (
        "import django; from django.conf import settings\n"
        "settings.configure(SECRET_KEY='x' * 32, INSTALLED_APPS=['django.contrib.contenttypes',"
        " 'django.contrib.auth', 'durable_django'], DATABASES={})\n"
        "django.setup()\n"
        "from durable_django import signals\n"
        "print(sorted(e[0][0] for e in signals.instance_transition.receivers if isinstance(e[0][0], str)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.stdout.strip() == "['durable_django.live.on_transition']", out.stderr


def test_a_transition_is_pushed_exactly_once(monkeypatch):
    pushed = []
    monkeypatch.setattr(live, "notify", lambda iid, **kw: pushed.append((iid, kw)))
    apps.get_app_config("durable_django").ready()
    signals.send_transition("paused", "some-id", "paused", "x.y")
    assert pushed == [("some-id", {"kind": "paused", "status": "paused"})]


def test_push_goes_to_the_configured_layer_alias(settings):
    settings.CHANNEL_LAYERS = {"default": IN_MEMORY["default"], "status": IN_MEMORY["default"]}
    from channels.layers import channel_layers

    settings.DURABLE = {**settings.DURABLE, "CHANNEL_LAYER": "status"}
    assert live.get_layer() is channel_layers["status"] is not channel_layers["default"]
    assert consumers.InstanceStatusConsumer().channel_layer_alias == "status"
    settings.DURABLE = {**settings.DURABLE, "CHANNEL_LAYER": None}
    assert live.get_layer() is None
    live.notify("anything")  # no layer: nothing to push, never raises


# -- 3. settings and the in-memory layer check -------------------------------------------------------
def test_status_poll_interval_setting(settings, monkeypatch):
    settings.DURABLE = {**settings.DURABLE, "STATUS_POLL_INTERVAL": 0.25}
    assert consumers.poll_interval(None) == 0.25
    assert consumers.poll_interval(InMemoryChannelLayer()) == 0.25
    cross = object()  # anything that is not the in-memory layer crosses processes
    assert consumers.poll_interval(cross) == consumers.SAFETY_POLL_INTERVAL
    settings.DURABLE = {**settings.DURABLE, "STATUS_POLL_INTERVAL": 30}
    assert consumers.poll_interval(cross) == 30.0
    monkeypatch.setattr(consumers, "SAFETY_POLL_INTERVAL", 600.0)
    assert consumers.poll_interval(cross) == 600.0


def _ids(check, **overrides) -> list[str]:
    with override_settings(**overrides):
        return [m.id for m in check()]


def test_in_memory_layer_with_separate_workers_warns():
    assert _ids(check_channel_layer, CHANNEL_LAYERS=IN_MEMORY, DURABLE={}) == ["durable_django.W004"]
    # a subclass of the in-memory layer is just as process-local
    sub = {"default": {"BACKEND": "tests.django.test_integration.LocalLayer"}}
    assert _ids(check_channel_layer, CHANNEL_LAYERS=sub, DURABLE={}) == ["durable_django.W004"]
    # instances run in the web process: its own layer reaches its consumers
    assert _ids(check_channel_layer, CHANNEL_LAYERS=IN_MEMORY, DURABLE={"RUN_INLINE": True}) == []
    assert _ids(check_channel_layer, CHANNEL_LAYERS=REDIS, DURABLE={}) == []
    # the check follows DURABLE["CHANNEL_LAYER"]
    both = {**REDIS, "local": IN_MEMORY["default"]}
    assert _ids(check_channel_layer, CHANNEL_LAYERS=both, DURABLE={}) == []
    assert _ids(check_channel_layer, CHANNEL_LAYERS=both, DURABLE={"CHANNEL_LAYER": "local"}) == [
        "durable_django.W004"]
    assert _ids(check_channel_layer, CHANNEL_LAYERS=IN_MEMORY, DURABLE={"CHANNEL_LAYER": None}) == []
    assert _ids(check_channel_layer, CHANNEL_LAYERS={}, DURABLE={}) == []


def test_new_settings_are_validated():
    assert "durable_django.E003" in _ids(check_settings, DURABLE={"STATUS_POLL_INTERVAL": 0})
    assert "durable_django.E006" in _ids(check_settings, DURABLE={"CHANNEL_LAYER": ""})
    assert _ids(check_settings, DURABLE={"STATUS_POLL_INTERVAL": 2, "CHANNEL_LAYER": None}) == []


# -- 2. the edit-locals permission belongs to the model ----------------------------------------------
def test_edit_locals_permission_is_a_model_permission_and_migrations_are_complete():
    assert ("edit_locals_durableinstance", "Can edit the locals of paused durable instances") in \
        DurableInstance._meta.permissions
    assert Permission.objects.filter(content_type__app_label="durable_django",
                                     codename="edit_locals_durableinstance").count() == 1
    out = StringIO()
    call_command("makemigrations", "durable_django", "durable_humantasks", "--check", "--dry-run", stdout=out)


# -- 4. publish_event(actor=...) -----------------------------------------------------------------------
def test_publish_event_records_the_actor(inline, uid):
    dd.start(plain, instance_id=uid)
    user = User.objects.create_user("pat", password="pw")
    dd.publish_event(uid, "go", 1, actor=user)
    entry = DurableHistory.objects.get(instance_id=uid, kind=HistoryKind.EVENT_PUBLISHED)
    assert (entry.detail, entry.actor) == ("go", "pat")


def test_publish_event_without_actor_and_with_anonymous(inline, uid):
    dd.start(plain, instance_id=uid)
    dd.publish_event(uid, "early", 1)
    dd.publish_event(uid, "later", 2, actor=AnonymousUser())
    assert list(DurableHistory.objects.filter(instance_id=uid, kind=HistoryKind.EVENT_PUBLISHED)
                .values_list("actor", flat=True)) == ["", ""]
    with pytest.raises(TypeError):
        dd.publish_event(uid, "go", 1, actor=42)


def test_answer_writes_one_history_entry_with_the_user_as_actor(inline, uid):
    rita = User.objects.create_user("rita", password="pw")
    rita.groups.add(Group.objects.create(name="reviewers"))
    dd.start(reviewed, instance_id=uid)
    answer(rita, uid, "review", {"ok": True})
    rows = list(DurableHistory.objects.filter(instance_id=uid).values_list("kind", "actor"))
    assert [r for r in rows if r[0] == HistoryKind.EVENT_PUBLISHED or r[1] == "rita"] == [
        (HistoryKind.EVENT_PUBLISHED, "rita")]
    assert not DurableHistory.objects.filter(instance_id=uid, kind=HistoryKind.OPERATOR).exists()
    assert dd.result(uid) == {"ok": True}


# -- 6. the sweep repairs human-task rows ---------------------------------------------------------------
def test_sweep_finished_repairs_task_rows(inline, uid, monkeypatch):
    Group.objects.create(name="reviewers")
    dd.start(reviewed, instance_id=uid)
    dd.start(reviewed, instance_id=f"{uid}-b")
    assert HumanTask.objects.filter(instance__instance_id__startswith=uid).count() == 2
    # lost signals: one row gone, one row out of date
    HumanTask.objects.filter(instance_id=uid).delete()
    HumanTask.objects.filter(instance_id=f"{uid}-b").update(title="stale", instance_version=F("instance_version") + 7)
    signals.send_sweep_finished([])
    assert HumanTask.objects.get(instance_id=uid).title == "Review it"
    assert HumanTask.objects.get(instance_id=f"{uid}-b").title == "Review it"
    cursor = RepairCursor.objects.get(name="sweep")
    assert cursor.updated_at is not None and cursor.updated_at < timezone.now()
    # later sweeps look at recently changed instances and at rows that disagree with their instance
    HumanTask.objects.filter(instance_id=f"{uid}-b").update(instance_version=0, title="stale")
    DurableInstance.objects.filter(pk=uid).update(status="cancelled")
    assert sync.repair(since=cursor.updated_at) == 2
    assert not HumanTask.objects.filter(instance_id=uid).exists()
    assert HumanTask.objects.get(instance_id=f"{uid}-b").title == "Review it"


def test_repair_walks_a_backlog_in_batches_from_a_cursor_in_the_database(inline, uid, monkeypatch):
    """A new process continues from the stored cursor: each sweep re-reads at most REPAIR_BATCH instances."""
    Group.objects.create(name="reviewers")
    ids = [f"{uid}-{i}" for i in range(5)]
    for iid in ids:
        dd.start(reviewed, instance_id=iid)
    HumanTask.objects.filter(instance_id__in=ids).delete()  # five lost signals
    monkeypatch.setattr(sync, "REPAIR_BATCH", 2)
    read: list[str] = []
    real = sync.sync_instance
    monkeypatch.setattr(sync, "sync_instance", lambda iid: (read.append(iid), real(iid))[1])
    rounds = 0
    while HumanTask.objects.filter(instance_id__in=ids).count() < len(ids):
        signals.send_sweep_finished([])
        rounds += 1
        assert rounds <= 3
    assert rounds == 3 and sorted(read) == sorted(ids)  # 2 + 2 + 1, nothing read twice
    signals.send_sweep_finished([])  # caught up: the cursor is near now, nothing old is re-read
    assert sorted(read) == sorted(ids)


def test_a_failing_sweep_receiver_is_logged_not_raised(caplog):
    def boom(sender, **kwargs):
        raise RuntimeError("boom")

    signals.sweep_finished.connect(boom, dispatch_uid="test-boom", weak=False)
    try:
        signals.send_sweep_finished(["x"])
    finally:
        signals.sweep_finished.disconnect(dispatch_uid="test-boom")
    assert "durable sweep receiver" in caplog.text


# -- 7. the filesystem broker keeps its control folder with its data -------------------------------------
def test_filesystem_broker_control_folder_is_under_the_broker_folder(settings):
    from pathlib import Path

    if not settings.CELERY_BROKER_URL.startswith("filesystem"):
        pytest.skip("not the filesystem broker")
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    control = Path(options["control_folder"])
    assert control.parent == Path(options["data_folder_in"]) and control.is_absolute() and control.is_dir()
