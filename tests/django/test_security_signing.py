"""Issue 10, Security items 2 and 3: what a signature covers, which programs run, which keys are accepted.

Each attack of the issue is reproduced and shows the documented outcome
(docs/security.md): blobs are bound to their instance id, program and column;
only declared programs run by default; no key configuration turns
verification off; rows signed before migration 0005 are re-signed by it.
"""

from __future__ import annotations

import importlib
from io import StringIO
from types import SimpleNamespace

import pytest
from django.apps import apps as django_apps
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection
from django.test import override_settings

import durable_django as dd
from durable import StateTamperedError
from durable import signing as ser
from durable_django import checks
from durable_django.conf import durable_settings
from durable_django.exceptions import UnknownProgram
from durable_django.models import DurableEvent, DurableInstance, Status
from durable_django.signing import ARGUMENTS, STATE, blob_context, sign, unsign
from durable_django.worker import run_instance
from tests.django.conftest import wait_until
from tests.django.testapp import durable_programs as progs

pytestmark = pytest.mark.django_db(transaction=True)

SHELL = "asyncio.create_subprocess_shell"
PLAIN = "tests.django.testapp.durable_programs.plain_async"
migration = importlib.import_module("durable_django.migrations.0005_bind_signatures")


def reload(iid: str) -> DurableInstance:
    return DurableInstance.objects.get(pk=iid)


def suspended_with(iid: str, *words: str) -> DurableInstance:
    row = reload(iid)
    assert row.status == Status.SUSPENDED, (row.status, row.error)
    for word in words:
        assert word in row.error, (word, row.error)
    return row


# -- item 2: the program column, copied blobs ------------------------------------
def test_a_worker_does_not_run_a_changed_program_column(worker_factory, uid, tmp_path):
    """The attack: the instance's own validly signed argument, run as a shell command after the row's
    program was changed to asyncio.create_subprocess_shell. A real worker refuses it before importing it."""
    marker = tmp_path / "ran"
    worker_factory()
    dd.start(progs.two_events, f"touch {marker}", instance_id=uid)
    wait_until(lambda: reload(uid).status == Status.PAUSED, message="the instance to pause")
    DurableInstance.objects.filter(pk=uid).update(program=SHELL)
    dd.publish_event(uid, "first", 1)
    wait_until(lambda: reload(uid).status == Status.SUSPENDED, message="the instance to be suspended")
    suspended_with(uid, "StateTamperedError", "another instance, program or field")
    assert not marker.exists()
    assert DurableEvent.objects.get(instance_id=uid).consumed_at is None  # nothing ran, nothing was consumed


def test_the_signature_alone_stops_a_changed_program(inline, uid, tmp_path, settings):
    """Even with the shell function allowed by PROGRAMS, the binding refuses the row; restoring the column
    (the operator's fix) and resuming continues where it was: nothing was lost."""
    settings.DURABLE = {**settings.DURABLE, "PROGRAMS": [SHELL, "tests.django.testapp."]}
    marker = tmp_path / "ran"
    dd.start(progs.two_events, f"touch {marker}", instance_id=uid)
    good_program = reload(uid).program
    DurableInstance.objects.filter(pk=uid).update(program=SHELL)
    dd.publish_event(uid, "first", 1)
    suspended_with(uid, "StateTamperedError")
    assert not marker.exists()
    DurableInstance.objects.filter(pk=uid).update(program=good_program)
    assert dd.resume(uid, inline=True) == Status.PAUSED
    dd.publish_event(uid, "second", 2)
    assert dd.result(uid) == [1, 2] and not marker.exists()


def test_arguments_copied_to_another_row_are_refused_and_never_unpickled(uid, tmp_path):
    trip_a = tmp_path / "a-unpickled"
    dd.start(progs.two_events, progs.Tripwire(str(trip_a)), instance_id=uid + "-a")
    dd.start(progs.two_events, "b", instance_id=uid + "-b")
    DurableInstance.objects.filter(pk=uid + "-b").update(arguments=reload(uid + "-a").arguments)
    assert run_instance(uid + "-b") == Status.SUSPENDED
    suspended_with(uid + "-b", "StateTamperedError")
    assert not trip_a.exists()
    # the same blob in its own row verifies and is unpickled (the tripwire works)
    assert run_instance(uid + "-a") == Status.PAUSED and trip_a.exists()


def test_state_copied_to_another_row_is_refused(inline, uid):
    dd.start(progs.two_events, "a", instance_id=uid + "-a")
    dd.start(progs.two_events, "b", instance_id=uid + "-b")
    DurableInstance.objects.filter(pk=uid + "-b").update(state=reload(uid + "-a").state)
    dd.publish_event(uid + "-b", "first", 1)
    suspended_with(uid + "-b", "StateTamperedError")
    dd.publish_event(uid + "-a", "first", 1)
    dd.publish_event(uid + "-a", "second", 2)
    assert dd.result(uid + "-a") == [1, 2]  # the original is untouched


@pytest.mark.parametrize("source, target", [(STATE, ARGUMENTS), (ARGUMENTS, STATE)])
def test_a_blob_copied_to_the_other_column_is_refused(inline, uid, source, target):
    dd.start(progs.two_events, "x", instance_id=uid)
    DurableInstance.objects.filter(pk=uid).update(**{target: getattr(reload(uid), source)})
    dd.publish_event(uid, "first", 1)
    suspended_with(uid, "StateTamperedError")


def test_the_context_separates_id_program_and_field():
    ids = {blob_context(i, p, f) for i, p, f in [("a", "b.c", STATE), ("ab", ".c", STATE), ("a", "b.c", ARGUMENTS),
                                                 ("a", "b.cstate", ""), ("a\x00", "b.c", STATE)]}
    assert len(ids) == 5
    blob = sign({"x": 1}, blob_context("a", "b.c", STATE))
    assert unsign(blob, blob_context("a", "b.c", STATE)) == {"x": 1}
    for other in (("b", "b.c", STATE), ("a", "b.d", STATE), ("a", "b.c", ARGUMENTS)):
        with pytest.raises(StateTamperedError):
            unsign(blob, blob_context(*other))


# -- item 2: which programs run -----------------------------------------------------
@pytest.mark.parametrize("run_inline", [False, True])
def test_starting_an_arbitrary_callable_is_refused(uid, tmp_path, settings, run_inline):
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": run_inline}
    marker = tmp_path / "ran"
    with pytest.raises(UnknownProgram, match="not a declared durable program"):
        dd.start(SHELL, f"touch {marker}", instance_id=uid)
    with pytest.raises(UnknownProgram, match="not a declared durable program"):
        dd.start(progs.plain_async, 1, instance_id=uid)
    assert not DurableInstance.objects.exists() and not marker.exists()


def _forged_row(iid: str, program: str, args: tuple) -> None:
    """A row as start() would write it for ``program`` (valid, bound signature): what the worker refuses
    here is the program itself."""
    DurableInstance.objects.create(instance_id=iid, program=program, status=Status.PENDING,
                                   arguments=sign((args, {}), blob_context(iid, program, ARGUMENTS)))


def test_the_worker_refuses_an_undeclared_program_unless_listed(uid, settings, tmp_path):
    marker = tmp_path / "ran"
    _forged_row(uid, PLAIN, (21,))
    _forged_row(uid + "-shell", SHELL, (f"touch {marker}",))
    assert run_instance(uid) == Status.SUSPENDED
    suspended_with(uid, "UnknownProgram", "not a declared durable program")
    assert run_instance(uid + "-shell") == Status.SUSPENDED
    suspended_with(uid + "-shell", "UnknownProgram")
    assert not marker.exists()
    settings.DURABLE = {**settings.DURABLE, "PROGRAMS": [PLAIN]}
    dd.resume(uid)
    assert run_instance(uid) == Status.COMPLETED and dd.result(uid) == 42


def test_declared_programs_run_by_default(inline, uid):
    dd.start(progs.double, 4, instance_id=uid + "-assigned")  # process = make_durable(_process)
    dd.start(progs.registered_triple, 4, instance_id=uid + "-registered")  # durable_django.register()
    dd.start("tests.django.testapp.durable_programs.registered_triple", 5, instance_id=uid + "-path")
    assert [dd.result(uid + s) for s in ("-assigned", "-registered", "-path")] == [8, 12, 15]
    with pytest.raises(TypeError, match="async def"):
        dd.register(len)


def test_programs_list_is_the_complete_list_when_set(inline, uid, settings):
    settings.DURABLE = {**settings.DURABLE, "PROGRAMS": [PLAIN]}
    with pytest.raises(UnknownProgram, match="not in DURABLE"):
        dd.start(progs.registered_triple, 1, instance_id=uid)
    settings.DURABLE = {**settings.DURABLE, "PROGRAMS": None}
    with pytest.raises(UnknownProgram, match="not a declared"):  # listing it earlier is not remembered
        dd.start(PLAIN, 1, instance_id=uid)


# -- item 3: keys ------------------------------------------------------------------
GOOD = "0123456789abcdef-good-key"
OLD = "0123456789abcdef-old-key"


def _check_ids(durable: dict, **extra) -> set[str]:
    with override_settings(DURABLE=durable, **extra):
        return {m.id for m in checks.check_settings()}


@pytest.mark.parametrize("fallbacks", [[None], [""], [b""], ["short"], [OLD, None], "not-a-list", [3]])
def test_bad_signing_key_fallbacks_are_check_errors(fallbacks):
    assert "durable_django.E008" in _check_ids({"SIGNING_KEY": GOOD, "SIGNING_KEY_FALLBACKS": fallbacks})


@pytest.mark.parametrize("fallbacks", [[None], [""], [b""]])
def test_bad_secret_key_fallbacks_are_check_errors(fallbacks):
    assert "durable_django.E008" in _check_ids({}, SECRET_KEY_FALLBACKS=fallbacks)


def test_good_keys_pass_the_checks():
    assert "durable_django.E008" not in _check_ids({"SIGNING_KEY": GOOD, "SIGNING_KEY_FALLBACKS": [OLD]})
    assert "durable_django.E008" not in _check_ids({}, SECRET_KEY_FALLBACKS=["x" * 50])
    assert {"durable_django.E002"} <= _check_ids({"SIGNING_KEY": b""})


BAD_CONFIGS = [
    ({"SIGNING_KEY_FALLBACKS": [None]}, {}),
    ({"SIGNING_KEY_FALLBACKS": [""]}, {}),
    ({"SIGNING_KEY_FALLBACKS": [OLD, b""]}, {}),
    ({"SIGNING_KEY": ""}, {}),
    ({"SIGNING_KEY": b""}, {}),
    ({"SIGNING_KEY": None, "SIGNING_KEY_FALLBACKS": None}, {"SECRET_KEY_FALLBACKS": [None]}),
    ({"SIGNING_KEY": None, "SIGNING_KEY_FALLBACKS": None}, {"SECRET_KEY_FALLBACKS": [""]}),
]


@pytest.mark.parametrize("durable, extra", BAD_CONFIGS)
def test_no_key_configuration_turns_verification_off(uid, tmp_path, settings, durable, extra):
    """The issue's case: with a None fallback, unsigned and wrongly signed blobs were unpickled. Now every
    such configuration is an error before anything is unpickled."""
    trip = tmp_path / "unpickled"
    dd.start(progs.two_events, "x", instance_id=uid)
    unsigned = ser.dumps(((progs.Tripwire(str(trip)),), {}))  # DP1: what an attacker can write
    wrong = ser.dumps(((progs.Tripwire(str(trip)),), {}), b"attacker-key-0123456789", b"")
    settings.DURABLE = {**settings.DURABLE, "SIGNING_KEY": GOOD, **durable}
    for name, value in extra.items():
        setattr(settings, name, value)
    for blob in (unsigned, wrong):
        DurableInstance.objects.filter(pk=uid).update(arguments=blob)
        with pytest.raises(ImproperlyConfigured):
            run_instance(uid)
        with pytest.raises(ImproperlyConfigured):
            unsign(blob, blob_context(uid, "p", ARGUMENTS))
    with pytest.raises(ImproperlyConfigured):
        sign(1, blob_context(uid, "p", STATE))
    assert not trip.exists()


def test_unsigned_and_foreign_blobs_are_refused_with_good_keys(uid, tmp_path, settings):
    trip = tmp_path / "unpickled"
    settings.DURABLE = {**settings.DURABLE, "SIGNING_KEY": GOOD, "SIGNING_KEY_FALLBACKS": [OLD]}
    dd.start(progs.two_events, "x", instance_id=uid)
    context = blob_context(uid, reload(uid).program, ARGUMENTS)
    payload = ((progs.Tripwire(str(trip)),), {})
    for blob in (ser.dumps(payload), ser.dumps(payload, b"attacker-key-0123456789", context),
                 ser.dumps(payload, GOOD.encode()), ser.dumps(payload, b"", context)):
        DurableInstance.objects.filter(pk=uid).update(arguments=blob, status=Status.PENDING, error="")
        assert run_instance(uid) == Status.SUSPENDED
        suspended_with(uid, "StateTamperedError")
    assert not trip.exists()


def test_key_rotation_keeps_bound_blobs_working(inline, uid, settings):
    """docs/security.md's rotation: new key with the old one as fallback, durable_resign, drop the old key."""
    settings.DURABLE = {**settings.DURABLE, "SIGNING_KEY": OLD}
    for suffix in ("", "-stale"):
        dd.start(progs.two_events, "x", instance_id=uid + suffix)
    settings.DURABLE = {**settings.DURABLE, "SIGNING_KEY": GOOD, "SIGNING_KEY_FALLBACKS": [OLD]}
    dd.publish_event(uid, "first", 1)  # verified with the fallback, checkpointed with the new key
    row = reload(uid)
    assert ser.verify(bytes(row.state), GOOD.encode(), blob_context(uid, row.program, STATE))
    with pytest.raises(StateTamperedError):  # the arguments are written once, at start: still under OLD
        ser.verify(bytes(row.arguments), GOOD.encode(), blob_context(uid, row.program, ARGUMENTS))
    out = StringIO()
    call_command("durable_resign", stdout=out)
    assert "3 blob(s) re-signed" in out.getvalue()  # our arguments, the stale one's state and arguments
    assert "0 blob(s)" in _resign_output()  # nothing left under the old key
    settings.DURABLE = {**settings.DURABLE, "SIGNING_KEY": GOOD, "SIGNING_KEY_FALLBACKS": []}
    dd.publish_event(uid, "second", 2)
    dd.publish_event(uid + "-stale", "first", 1)
    dd.publish_event(uid + "-stale", "second", 2)
    assert dd.result(uid) == dd.result(uid + "-stale") == [1, 2]


def _resign_output() -> str:
    out = StringIO()
    call_command("durable_resign", stdout=out)
    return out.getvalue()


def test_dropping_the_old_key_without_resigning_refuses_its_blobs(inline, uid, settings):
    settings.DURABLE = {**settings.DURABLE, "SIGNING_KEY": OLD}
    dd.start(progs.two_events, "x", instance_id=uid)
    settings.DURABLE = {**settings.DURABLE, "SIGNING_KEY": GOOD, "SIGNING_KEY_FALLBACKS": []}
    dd.publish_event(uid, "first", 1)
    suspended_with(uid, "StateTamperedError")


def test_secret_key_rotation_keeps_bound_blobs_working(inline, uid, settings):
    old_secret, new_secret = "s" * 50, "t" * 50
    settings.DURABLE = {**settings.DURABLE, "SIGNING_KEY": None, "SIGNING_KEY_FALLBACKS": None}
    settings.SECRET_KEY = old_secret
    dd.start(progs.two_events, "x", instance_id=uid)
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = new_secret, [old_secret]
    dd.publish_event(uid, "first", 1)
    assert "1 blob(s) re-signed" in _resign_output()  # the arguments (the state was re-signed by the run)
    settings.SECRET_KEY_FALLBACKS = []
    dd.publish_event(uid, "second", 2)
    assert dd.result(uid) == [1, 2]


# -- the upgrade: migration 0005 -------------------------------------------------------
def _old_format(iid: str, key: bytes) -> None:
    """Rewrite the row's blobs as the app wrote them before 0005: signed, not bound."""
    row = reload(iid)
    fields = {}
    for field in (STATE, ARGUMENTS):
        blob = getattr(row, field)
        if blob is not None:
            fields[field] = ser.dumps(unsign(blob, blob_context(iid, row.program, field)), key)
    DurableInstance.objects.filter(pk=iid).update(**fields)


def test_migration_resigns_rows_of_before_the_upgrade(inline, uid, settings):
    settings.DURABLE = {**settings.DURABLE, "SIGNING_KEY": GOOD, "SIGNING_KEY_FALLBACKS": [OLD]}
    names = {k: f"{uid}-{k}" for k in ("paused", "pending", "fallback", "tampered", "bound")}
    for k in ("paused", "fallback", "tampered", "bound"):
        dd.start(progs.two_events, k, instance_id=names[k])
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": False}
    dd.start(progs.two_events, "pending", instance_id=names["pending"])
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": True}
    _old_format(names["paused"], GOOD.encode())
    _old_format(names["pending"], GOOD.encode())
    _old_format(names["fallback"], OLD.encode())
    _old_format(names["tampered"], GOOD.encode())
    tampered = bytearray(reload(names["tampered"]).state)
    tampered[-3] ^= 1
    DurableInstance.objects.filter(pk=names["tampered"]).update(state=bytes(tampered))
    bound = bytes(reload(names["bound"]).state)

    # before the migration the app refuses the old format
    row = reload(names["paused"])
    with pytest.raises(StateTamperedError, match="not bound"):
        unsign(row.state, blob_context(row.pk, row.program, STATE))

    changed = migration.bind_signatures(django_apps, SimpleNamespace(connection=connection))
    # state and arguments of "paused" and "fallback", the arguments of "pending" (no state yet) and of
    # "tampered" (its state fails and is left as it is); "bound" was already bound
    assert changed == 6
    assert bytes(reload(names["tampered"]).state) == bytes(tampered)  # left as it is
    assert bytes(reload(names["bound"]).state) == bound
    for k in ("paused", "fallback", "bound"):
        dd.publish_event(names[k], "first", 1)
        dd.publish_event(names[k], "second", 2)
        assert dd.result(names[k]) == [1, 2], k
    assert run_instance(names["pending"]) == Status.PAUSED
    dd.publish_event(names["tampered"], "first", 1)
    suspended_with(names["tampered"], "StateTamperedError")


def test_migrating_back_to_0004_and_forward_again(inline, uid, settings):
    settings.DURABLE = {**settings.DURABLE, "SIGNING_KEY": GOOD}
    dd.start(progs.two_events, "x", instance_id=uid)
    program = reload(uid).program
    call_command("migrate", "durable_django", "0004", verbosity=0)
    try:
        row = DurableInstance.objects.only("state", "arguments").get(pk=uid)  # columns 0004 has (not later ones)
        assert bytes(row.state)[:3] == b"DS1" and bytes(row.arguments)[:3] == b"DS1"
        assert ser.loads(row.state, GOOD.encode())["status"] == "paused"  # what the old code reads
        with pytest.raises(StateTamperedError):
            unsign(row.state, blob_context(uid, program, STATE))
    finally:
        call_command("migrate", "durable_django", verbosity=0)
    assert bytes(reload(uid).state)[:3] == b"DS2"
    dd.publish_event(uid, "first", 1)
    dd.publish_event(uid, "second", 2)
    assert dd.result(uid) == [1, 2]


def test_settings_changes_are_picked_up(settings):
    settings.DURABLE = {**settings.DURABLE, "SIGNING_KEY": GOOD}
    assert durable_settings.signing_key == GOOD.encode()
    settings.DURABLE = {**settings.DURABLE, "SIGNING_KEY": OLD, "SIGNING_KEY_FALLBACKS": [GOOD]}
    assert durable_settings.signing_key == OLD.encode() and durable_settings.signing_key_fallbacks == (GOOD.encode(),)


def test_one_backend_used_directly_for_instances_of_two_programs(uid):
    """The core's direct use: each state is bound to its own row's program, also with one backend for both."""
    from asgiref.sync import async_to_sync

    from durable import PauseForEventException
    from durable_django.backend import DjangoOrchestrationBackend

    backend = DjangoOrchestrationBackend()
    with pytest.raises(PauseForEventException):
        async_to_sync(progs.two_events)(uid, orchestration_backend=backend, instance_id=uid + "-a")
    with pytest.raises(PauseForEventException):
        async_to_sync(progs.sleeper)(3600, orchestration_backend=backend, instance_id=uid + "-b")
    backend.publish_event(uid + "-a", "first", "x")
    backend.publish_event(uid + "-a", "second", "y")
    assert async_to_sync(progs.two_events)(uid, orchestration_backend=backend, instance_id=uid + "-a") == ["x", "y"]
    with pytest.raises(PauseForEventException):
        async_to_sync(progs.sleeper)(3600, orchestration_backend=backend, instance_id=uid + "-b")
    for iid in (uid + "-a", uid + "-b"):
        row = reload(iid)
        assert unsign(row.state, blob_context(iid, row.program, STATE))["program"] == row.program
