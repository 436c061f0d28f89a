"""Bad input at every entry point: a clear 4xx or error, the same on SQLite and PostgreSQL, nothing stored.

Entry points: the Python API (start, publish_event, lookups), the publish view,
the admin (changelist filters and search, detail pages, the publish form), the
commands, bindings. Also: one answer per wait whatever idempotency key a client
sends (issue 10, security 4), and start arguments bound to the program's
signature.
"""

from __future__ import annotations

import json
from io import StringIO
from unittest import mock

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

import durable_django as dd
from durable import make_durable, wait_for_event
from durable_django import limits
from durable_django.answers import PREFIX
from durable_django.bindings import Binding
from durable_django.checks import check_settings
from durable_django.exceptions import InvalidInput, InvalidPayload
from durable_django.models import DurableEvent, DurableHistory, DurableInstance, Status
from tests.django.testapp import durable_programs as progs
from tests.django.testapp.models import Order

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = reverse("admin:durable_django_durableinstance_changelist")
NUL = "\x00"


@make_durable
async def three_waits():
    first = await wait_for_event("first")
    one = await wait_for_event("go")
    two = await wait_for_event("go")
    return [first, one, two]


@make_durable
async def loop_on_go():
    got = []
    while len(got) < 3:
        got.append(await wait_for_event("go"))
    return got


@make_durable
async def takes_one(x):
    return x


@make_durable
async def takes_many(*items):
    return len(items)


def nothing_stored() -> bool:
    return not DurableInstance.objects.exists() and not DurableHistory.objects.exists()


def inbox(iid: str) -> list[tuple]:
    return list(DurableEvent.objects.filter(instance_id=iid).order_by("id")
                .values_list("name", "payload", "consumed_at"))


def unconsumed(iid: str) -> int:
    return DurableEvent.objects.filter(instance_id=iid, consumed_at__isnull=True).count()


@pytest.fixture
def publisher(db) -> User:
    user = User.objects.create_user("publisher", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(
        codename__in=("publish_durableevent", "view_durableinstance", "view_durableevent")))
    return user


@pytest.fixture
def nobody(db) -> User:
    return User.objects.create_user("nobody", password="pw")


def client_for(user) -> Client:
    c = Client(enforce_csrf_checks=True)
    c.force_login(user)
    return c


def post_json(c: Client, iid: str, body, *, raw: bool = False, **extra):
    """POST to the publish view with a valid CSRF token, as a page that loaded the task list would."""
    c.get(reverse("durable:tasks"))
    data = body if raw else json.dumps(body)
    return c.post(reverse("durable:publish", args=[iid]), data=data, content_type="application/json",
                  HTTP_X_CSRFTOKEN=c.cookies["csrftoken"].value, **extra)


def post_form(c: Client, iid: str, data: dict):
    c.get(reverse("durable:tasks"))
    return c.post(reverse("durable:publish", args=[iid]), data=data, HTTP_X_CSRFTOKEN=c.cookies["csrftoken"].value)


def cmd(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def no_wake_ups(settings):
    """Instances run only when the test calls the executor (a wait stays current across several posts)."""
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": False, "QUEUE": None}
    return mock.patch("durable_django.wakeups.send_task")


# -- security 4: one answer per wait ------------------------------------------------
def test_one_user_posting_three_keys_stores_one_answer_for_the_current_wait(uid, publisher, settings):
    with no_wake_ups(settings):
        dd.start(loop_on_go, instance_id=uid)
        dd.run_instance(uid)
        assert DurableInstance.objects.get(pk=uid).waiting_for == "go"
        c = client_for(publisher)
        ids = {post_json(c, uid, {"event": "go", "payload": n, "idempotency_key": f"k{n}"}).json()["event_id"]
               for n in range(3)}
        assert len(ids) == 1 and inbox(uid) == [("go", 0, None)]
        assert DurableEvent.objects.get(pk=ids.pop()).idempotency_key == f"{PREFIX}1:go"
        dd.run_instance(uid)
        row = DurableInstance.objects.get(pk=uid)
        assert row.status == Status.PAUSED and row.waiting_for == "go"
        assert unconsumed(uid) == 0  # nothing left to answer the next wait with
        # The next wait takes one answer again (the same client keys change nothing).
        for n in range(3):
            post_json(c, uid, {"event": "go", "payload": 10 + n, "idempotency_key": f"k{n}"})
        dd.run_instance(uid)
        assert unconsumed(uid) == 0 and DurableInstance.objects.get(pk=uid).steps > row.steps
        assert [p for _, p, _ in inbox(uid)] == [0, 10]


def test_answers_published_ahead_of_the_wait_are_one_too(inline, uid, publisher):
    dd.start(three_waits, instance_id=uid)
    c = client_for(publisher)
    for n in range(3):
        assert post_json(c, uid, {"event": "go", "payload": n, "idempotency_key": f"key-{n}"}).status_code == 202
    assert unconsumed(uid) == 1
    assert post_json(c, uid, {"event": "first", "payload": "f"}).status_code == 202
    row = DurableInstance.objects.get(pk=uid)
    assert (row.status, row.waiting_for) == (Status.PAUSED, "go")  # the second wait for "go" has no answer
    assert unconsumed(uid) == 0
    assert post_json(c, uid, {"event": "go", "payload": "last", "idempotency_key": "key-0"}).status_code == 202
    assert dd.result(uid) == ["f", 0, "last"]


def test_admin_publish_form_is_one_answer_per_wait_too(uid, publisher, settings):
    with no_wake_ups(settings):
        dd.start(loop_on_go, instance_id=uid)
        dd.run_instance(uid)
        c = Client()
        c.force_login(publisher)
        url = reverse("admin:durable_django_durableinstance_publish", args=[uid])
        for n in range(3):
            r = c.post(url, {"event": "go", "payload": str(n), "idempotency_key": f"k{n}"})
            assert r.status_code == 302, r.content
        assert inbox(uid) == [("go", 0, None)]


def test_concurrent_answers_with_different_keys_store_one(uid, publisher, settings):
    """Eight requests at once, each with its own client key, for one wait: one row (the unique server key)."""
    import threading

    from django.db import connection

    from durable_django.humantasks.sync import answer

    with no_wake_ups(settings):
        dd.start(loop_on_go, instance_id=uid)
        dd.run_instance(uid)
        barrier, ids, errors = threading.Barrier(8), [], []

        def one(n: int) -> None:
            try:
                barrier.wait(timeout=10)
                ids.append(answer(publisher, uid, "go", n, idempotency_key=f"client-{n}").pk)
            except Exception as exc:  # reported below
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == [] and len(ids) == 8 and len(set(ids)) == 1
        assert unconsumed(uid) == 1


def test_python_api_keeps_the_callers_keys(inline, uid):
    """Code publishing a stream of events of one name does so through the API, with its own keys."""
    dd.start(three_waits, instance_id=uid)
    for n in range(3):
        dd.publish_event(uid, "go", n, idempotency_key=f"delivery-{n}")
    dd.publish_event(uid, "go", 0, idempotency_key="delivery-0")
    assert unconsumed(uid) == 3


# -- the publish view: bodies refused before anything else ------------------------------
DEEP = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize("body, words", [
    (json.dumps({"event": "go", "payload": json.loads("[" * 40 + "]" * 40)}), "nested more than"),
    ('{"event": "go", "payload": ' + DEEP + "}", "nested more than"),
    ('{"event": "go", "payload": NaN}', "NaN is not a JSON number"),
    ('{"event": "go", "payload": -Infinity}', "-Infinity is not a JSON number"),
    ('{"event": "go", "payload": 1e999}', "out of range"),
    ('{"event": "go", "payload": {"x": [1, 2e400]}}', "out of range"),
    ('{"event": 5, "payload": 1}', "'event' must be a string, got int"),
    ('{"event": ["go"], "payload": 1}', "'event' must be a string, got list"),
    ('{"event": {"a": 1}}', "'event' must be a string, got dict"),
    ('{"event": "go", "idempotency_key": 7}', "'idempotency_key' must be a string"),
    ('{"event": "go\\u0000x"}', "NUL character"),
    ('{"event": "go\\ud800"}', "unpaired surrogate"),
    ('{"event": "' + "e" * 201 + '"}', "at most 200 characters"),
    ('{"event": "go", "payload": "a\\u0000b"}', "NUL character"),
    ('{"event": "go", "payload": {"k\\u0000": 1}}', "NUL character"),
    ('{"event": "go", "payload": "\\udfff"}', "unpaired surrogate"),
    ('["go"]', "must be a JSON object"),
    ('{"event": "go", "payload": ' + "9" * 5000 + "}", "malformed"),
    (b'{"event": "go", "payload": "\xff"}', "not UTF-8"),
])
def test_publish_view_refuses_bad_bodies_with_400_before_the_permission_check(inline, uid, nobody, body, words):
    dd.start(loop_on_go, instance_id=uid)
    r = post_json(client_for(nobody), uid, body, raw=True)  # nobody may not publish: validation comes first
    assert r.status_code == 400, r.content
    assert r["Content-Type"] == "application/json" and words in json.dumps(r.json()["error"]), r.json()
    assert inbox(uid) == []


def test_publish_view_refuses_oversized_bodies_with_413(inline, uid, publisher):
    dd.start(loop_on_go, instance_id=uid)
    big = json.dumps({"event": "go", "payload": "x" * (1024 * 1024)})
    r = post_json(client_for(publisher), uid, big, raw=True)
    assert r.status_code == 413 and "at most" in r.json()["error"]
    r = post_form(client_for(publisher), uid, {"event": "go", "payload": json.dumps("x" * (1024 * 1024))})
    assert r.status_code == 413, r.content
    assert inbox(uid) == []


def test_publish_view_payload_limit_and_a_good_answer(inline, uid, publisher, settings):
    settings.DURABLE = {**settings.DURABLE, "MAX_PAYLOAD_BYTES": 1000}
    dd.start(loop_on_go, instance_id=uid)
    c = client_for(publisher)
    r = post_json(c, uid, {"event": "go", "payload": "é" * 600})  # 1202 bytes of UTF-8 once quoted
    assert r.status_code == 400 and "at most 1000" in r.json()["error"]
    r = post_json(c, uid, {"event": "go", "payload": {"text": "back\\u0000slash, not NUL", "n": 1.5}})
    assert r.status_code == 202, r.content
    assert inbox(uid)[0][1] == {"text": "back\\u0000slash, not NUL", "n": 1.5}


def test_publish_view_form_fields_are_checked_the_same_way(inline, uid, nobody):
    dd.start(loop_on_go, instance_id=uid)
    c = client_for(nobody)
    for data, words in [({"event": "go", "payload": "NaN"}, "NaN"), ({"event": "go", "payload": DEEP}, "nested"),
                        ({"event": "go", "payload": "1e999"}, "out of range"),
                        ({"event": "go\x00", "payload": "1"}, "Null characters are not allowed")]:
        r = post_form(c, uid, data)
        assert r.status_code == 400 and words in json.dumps(r.json()["error"]), (data, r.content)
    assert inbox(uid) == []


def test_publish_view_instance_id_with_nul_is_400(inline, publisher):
    r = post_json(client_for(publisher), "a\x00b", {"event": "go"})
    assert r.status_code == 400 and "NUL" in r.json()["error"]


def test_task_pages_refuse_a_nul_instance_id(inline, publisher):
    r = client_for(publisher).get(reverse("durable:task-answer", args=["a\x00b"]))
    assert r.status_code == 400


# -- the Python API -----------------------------------------------------------------------
@pytest.mark.parametrize("bad_id", ["a\x00b", "\ud800", "", "x" * 201, 7])
def test_start_refuses_bad_instance_ids(inline, bad_id):
    with pytest.raises(InvalidInput, match="instance_id") as info:
        dd.start(progs.approval, 1, instance_id=bad_id)
    assert isinstance(info.value, ValueError) and nothing_stored()


def test_start_refuses_a_program_path_with_nul(inline):
    with pytest.raises(InvalidInput, match="program path"):
        dd.start("tests.django.testapp.durable_programs.appr\x00oval", 1)
    assert nothing_stored()


def test_start_instance_id_limit_setting(inline, settings):
    settings.DURABLE = {**settings.DURABLE, "MAX_INSTANCE_ID_LENGTH": 20}
    with pytest.raises(InvalidInput, match="at most 20 characters"):
        dd.start(progs.approval, 1, instance_id="x" * 21)
    assert nothing_stored()
    dd.start(progs.approval, 1, instance_id="x" * 20)


@pytest.mark.parametrize("name, key, words", [
    ("go\x00", None, "NUL"), ("\ud83d", None, "surrogate"), ("go", "k\x00", "NUL"), ("go", "k" * 256, "255"),
    ("", None, "non-empty"), ("g" * 201, None, "200"), (b"go", None, "got a bytes"), ("go", 5, "got a int"),
])
def test_publish_event_refuses_bad_names_and_keys(inline, uid, name, key, words):
    dd.start(loop_on_go, instance_id=uid)
    with pytest.raises(InvalidInput, match=words):
        dd.publish_event(uid, name, 1, idempotency_key=key)
    assert inbox(uid) == []


@pytest.mark.parametrize("payload, words", [
    (float("nan"), "finite"), (float("inf"), "finite"), ({"x": [float("-inf")]}, "finite"),
    ("a\x00b", "NUL"), ({"k\x00": 1}, "NUL"), (["\ud800"], "surrogate"), ({"obj": object()}, "JSON"),
])
@pytest.mark.parametrize("key", [None, "k1"])  # PostgreSQL: the one-statement path, and the general path
def test_publish_event_refuses_payloads_postgresql_cannot_store(inline, uid, payload, words, key):
    dd.start(loop_on_go, instance_id=uid)
    with pytest.raises(InvalidPayload, match=words):
        dd.publish_event(uid, "go", payload, idempotency_key=key)
    assert inbox(uid) == []


def test_publish_event_refuses_deep_and_big_payloads(inline, uid, settings):
    dd.start(loop_on_go, instance_id=uid)
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(InvalidPayload, match="nested too deeply"):
        dd.publish_event(uid, "go", deep)
    with pytest.raises(InvalidPayload, match="MAX_PAYLOAD_BYTES"):
        dd.publish_event(uid, "go", "x" * (50 * 1024 * 1024))
    with pytest.raises(InvalidPayload, match="MAX_PAYLOAD_BYTES"):
        dd.publish_event(uid, "go", {"n": list(range(60_000))}, idempotency_key="big")
    settings.DURABLE = {**settings.DURABLE, "MAX_PAYLOAD_BYTES": 100}
    with pytest.raises(InvalidPayload, match="at most 100"):
        dd.publish_event(uid, "go", "x" * 99)
    assert inbox(uid) == []
    dd.publish_event(uid, "go", "x" * 98)  # 100 bytes with its quotes
    assert inbox(uid)[0][1] == "x" * 98


def test_payload_depth_limit_is_the_same_on_every_python():
    """Python 3.12+ encode far deeper than 3.11 did; SQLite refuses JSON nested more than 1,000 levels."""
    from durable_django.limits import STORED_JSON_DEPTH, payload_json

    def nested(levels: int, leaf: dict | None = None) -> list:
        value: list = [leaf or {}]  # the leaf dict is one level too
        for _ in range(levels - 2):
            value = [value]
        return value

    assert payload_json(nested(STORED_JSON_DEPTH)).count("[") == STORED_JSON_DEPTH - 1
    for too_deep in (nested(STORED_JSON_DEPTH + 1), nested(STORED_JSON_DEPTH, {"k": [1]})):
        with pytest.raises(InvalidPayload, match="nested too deeply"):
            payload_json(too_deep)


def test_event_name_limit_setting(inline, uid, settings):
    settings.DURABLE = {**settings.DURABLE, "MAX_EVENT_NAME_LENGTH": 10}
    dd.start(loop_on_go, instance_id=uid)
    with pytest.raises(InvalidInput, match="at most 10"):
        dd.publish_event(uid, "e" * 11)
    assert inbox(uid) == []


@pytest.mark.parametrize("call", [
    lambda: dd.cancel("a\x00b"), lambda: dd.resume("a\x00b"), lambda: dd.result("a\x00b"),
    lambda: dd.get_instance("a\x00b"), lambda: dd.publish_event("a\x00b", "go"),
])
def test_lookups_refuse_a_nul_instance_id(inline, call):
    with pytest.raises(InvalidInput, match="NUL"):
        call()


def test_start_refuses_arguments_over_the_limit(inline, uid, settings):
    settings.DURABLE = {**settings.DURABLE, "MAX_ARGUMENT_BYTES": 10_000}
    with pytest.raises(InvalidPayload, match="MAX_ARGUMENT_BYTES"):
        dd.start(takes_one, "x" * 20_000, instance_id=uid)
    assert nothing_stored()
    dd.start(takes_one, "x" * 1000, instance_id=uid)
    assert dd.result(uid) == "x" * 1000


def test_start_refuses_a_long_linked_primary_key(inline, uid):
    with mock.patch.object(Order, "pk", "p" * 65):  # a text primary key longer than the object_id column
        with pytest.raises(InvalidInput, match="linked object"):
            dd.start(takes_one, 1, instance_id=uid, link=Order())
    assert nothing_stored()


# -- arguments bound to the signature at start -----------------------------------------------
@pytest.mark.parametrize("args, kwargs, words", [
    ((), {}, "missing a required argument: 'order_id'"),
    (tuple(range(10_000)), {}, "too many positional arguments"),
    ((1,), {"nope": 2}, "unexpected keyword argument 'nope'"),
    ((1,), {"order_id": 2}, "multiple values for argument 'order_id'"),
])
def test_start_binds_arguments_to_the_signature(inline, uid, args, kwargs, words):
    with pytest.raises(TypeError, match=words) as info:
        dd.start(progs.approval, *args, instance_id=uid, **kwargs)
    assert "tests.django.testapp.durable_programs.approval" in str(info.value)
    assert nothing_stored()
    with pytest.raises(TypeError, match=words):  # by path too
        dd.start("tests.django.testapp.durable_programs.approval", *args, instance_id=uid, **kwargs)
    assert nothing_stored()


def test_start_with_varargs_takes_many_and_a_plain_async_def_is_bound_too(inline, uid, settings):
    dd.start(takes_many, *range(10_000), instance_id=uid)
    assert dd.result(uid) == 10_000
    settings.DURABLE = {**settings.DURABLE, "PROGRAMS": ["tests."]}  # a plain async def runs only when listed
    with pytest.raises(TypeError, match="plain_async"):
        dd.start(progs.plain_async, instance_id=uid + "-p")
    assert not DurableInstance.objects.filter(pk=uid + "-p").exists()


# -- the admin ------------------------------------------------------------------------------
@pytest.fixture
def root(db) -> Client:
    User.objects.create_superuser("root", password="pw")
    c = Client()
    c.login(username="root", password="pw")
    return c


@pytest.mark.parametrize("query", ["q=a%00b", "status__exact=pa%00used", "program=x%00", "waits=%00",
                                   "linked=1%00", "q%00=1"])
def test_admin_changelist_refuses_nul_in_filters_and_search(inline, root, query):
    r = root.get(f"{CHANGELIST}?{query}")
    assert r.status_code == 400 and b"NUL" in r.content


@pytest.mark.parametrize("model", ["durableevent", "durablehistory"])
def test_admin_other_changelists_refuse_nul(inline, root, model):
    r = root.get(reverse(f"admin:durable_django_{model}_changelist") + "?q=%00")
    assert r.status_code == 400


@pytest.mark.parametrize("value", ["abc", "99999999999999999999", "-1", "²"])
def test_admin_linked_filter_with_a_non_integer_is_ignored_with_a_message(inline, root, uid, value):
    r = root.get(CHANGELIST, {"linked": value}, follow=True)  # no linked instance: the filter is not shown
    assert r.status_code == 200
    dd.start(loop_on_go, instance_id=uid, link=Order.objects.create(status="new"))
    r = root.get(CHANGELIST, {"linked": value}, follow=True)
    assert r.status_code == 200
    page = r.content.decode()
    assert "Ignored the linked object type filter" in page and uid in page


def test_admin_pages_of_a_nul_instance_id(inline, root):
    assert root.get(reverse("admin:durable_django_durableinstance_change", args=["a\x00b"])).status_code == 400
    assert root.post(reverse("admin:durable_django_durableinstance_publish", args=["a\x00b"]),
                     {"event": "go"}).status_code == 400
    r = root.get(reverse("admin:durable_django_durableinstance_history", args=["a\x00b"]), follow=True)
    assert r.status_code == 200 and "doesn’t exist" in r.content.decode()


def test_admin_publish_form_refuses_bad_payloads(inline, uid, root, settings):
    settings.DURABLE = {**settings.DURABLE, "MAX_PAYLOAD_BYTES": 1000}
    dd.start(loop_on_go, instance_id=uid)
    url = reverse("admin:durable_django_durableinstance_publish", args=[uid])
    for payload, words in [('"' + "x" * 2000 + '"', "at most 1000"), ('"a\\u0000"', "NUL"), ("NaN", "NaN"),
                           (DEEP, "nested"), ("x" * 100_001, "100000 characters")]:
        r = root.post(url, {"event": "go", "payload": payload})
        assert r.status_code == 400 and words in r.content.decode(), words
    r = root.post(url, {"event": "g\x00o", "payload": "1"})
    assert r.status_code == 400 and "Null characters are not allowed" in r.content.decode()
    assert inbox(uid) == []


# -- commands ---------------------------------------------------------------------------------
def test_publish_command_refuses_bad_input(inline, uid, settings):
    settings.DURABLE = {**settings.DURABLE, "MAX_PAYLOAD_BYTES": 1000}
    dd.start(loop_on_go, instance_id=uid)
    for args, words in [(("--payload", "NaN"), "NaN"), (("--payload", DEEP), "nested"),
                        (("--payload", json.dumps("x" * 2000)), "at most 1000"),
                        (("--payload", '"\\u0000"'), "NUL"), (("--idempotency-key", "k\x00"), "NUL")]:
        with pytest.raises(CommandError, match=words):
            cmd("durable_publish", uid, "go", *args)
    with pytest.raises(CommandError, match="NUL"):
        cmd("durable_publish", uid, "g\x00o")
    with pytest.raises(CommandError, match="NUL"):
        cmd("durable_publish", "a\x00", "go")
    assert inbox(uid) == []


def test_status_cancel_resume_commands_refuse_nul_ids(inline):
    with pytest.raises(CommandError, match="NUL"):
        cmd("durable_status", "a\x00b")
    with pytest.raises(CommandError, match="NUL"):
        cmd("durable_status", "--program", "x\x00")
    with pytest.raises(CommandError, match="could not be cancelled"):
        cmd("durable_cancel", "a\x00b")
    with pytest.raises(CommandError, match="could not be resumed"):
        cmd("durable_resume", "a\x00b")


# -- bindings and settings ----------------------------------------------------------------------
def test_binding_refuses_a_bad_event_name_and_hashes_long_keys(inline, uid):
    with pytest.raises(InvalidInput, match="NUL"):
        Binding(Order, "go\x00")
    long = Binding(Order, "go", name="n" * 250)
    key = long.key(Order(pk=12345))
    assert len(key) <= limits.IDEMPOTENCY_KEY_COLUMN and key != long.key(Order(pk=12346))
    assert Binding(Order, "go").key(Order(pk=3)) == "testapp.order:go:3"


@pytest.mark.parametrize("name, value", [
    ("MAX_PAYLOAD_BYTES", 0), ("MAX_PAYLOAD_BYTES", "1mb"), ("MAX_ARGUMENT_BYTES", True),
    ("MAX_INSTANCE_ID_LENGTH", 201), ("MAX_EVENT_NAME_LENGTH", 0), ("MAX_JSON_DEPTH", 1.5),
])
def test_system_check_refuses_bad_limits(settings, name, value):
    settings.DURABLE = {**settings.DURABLE, name: value}
    assert [e.id for e in check_settings() if name in e.msg] == ["durable_django.E020"]


def test_system_check_accepts_the_defaults_and_sane_values(settings):
    settings.DURABLE = {**settings.DURABLE, "MAX_PAYLOAD_BYTES": 10_000, "MAX_INSTANCE_ID_LENGTH": 200}
    assert [e for e in check_settings() if e.id == "durable_django.E020"] == []


def test_status_websocket_refuses_an_instance_id_with_nul(inline):
    from asgiref.sync import async_to_sync
    from channels.routing import URLRouter
    from channels.testing.websocket import WebsocketCommunicator

    from durable_django import consumers
    from durable_django.routing import websocket_urlpatterns

    user = User.objects.create_superuser("watcher", password="pw")

    async def scenario():
        for iid in ("a\x00b", "\ud800"):
            c = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/durable/instances/{iid}/")
            c.scope["user"] = user
            connected, code = await c.connect(timeout=5)
            assert not connected and code == consumers.REFUSED
            await c.disconnect()

    async_to_sync(scenario)()


def test_system_check_warns_when_requests_cannot_carry_a_payload_at_the_limit(settings):
    settings.DURABLE = {**settings.DURABLE, "MAX_PAYLOAD_BYTES": 4 * 1024 * 1024}
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
    assert [e.id for e in check_settings() if "DATA_UPLOAD_MAX_MEMORY_SIZE" in e.msg] == ["durable_django.W020"]
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
    assert not [e for e in check_settings() if e.id == "durable_django.W020"]
