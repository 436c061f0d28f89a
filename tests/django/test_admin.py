"""The instances admin: changelist (fast, no unpickling), detail page, actions and their permissions."""

from __future__ import annotations

import time
from io import StringIO
from unittest import mock

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

import durable_django as dd
from durable import make_durable, wait_for_event
from durable_django.models import DurableHistory, DurableInstance, Status

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = reverse("admin:durable_django_durableinstance_changelist")


@make_durable
async def with_locals(note: str):
    count = 3
    items = ["a", "b"]
    answer = await wait_for_event("go")
    return {"note": note, "count": count, "items": items, "answer": answer}


@make_durable
async def with_closure(start: int):
    shared = [start, start + 1]

    def total() -> int:
        return sum(shared)

    answer = await wait_for_event("go")
    return total() + answer


@make_durable
async def explode():
    await wait_for_event("boom")
    raise RuntimeError("kaput")


def detail_url(iid: str) -> str:
    return reverse("admin:durable_django_durableinstance_change", args=[iid])


def op_url(iid: str, action: str) -> str:
    return reverse("admin:durable_django_durableinstance_operation", args=[iid, action])


def staff(username: str, *codenames: str) -> Client:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="durable_django",
                                                         codename__in=("view_durableinstance", *codenames)))
    c = Client()
    c.force_login(user)
    return c


@pytest.fixture
def admin_client_su(db) -> Client:
    User.objects.create_superuser("root", password="pw")
    c = Client()
    c.login(username="root", password="pw")
    return c


def bulk_instances(n: int, **fields) -> None:
    now = timezone.now()
    DurableInstance.objects.bulk_create(
        [DurableInstance(instance_id=f"bulk-{i:06d}", program="tests.programs.bulk", status=Status.PAUSED,
                         wait_kind="event", waiting_for="approved", state=b"not a pickle", arguments=b"x",
                         created_at=now, updated_at=now, **fields) for i in range(n)], batch_size=5000)


def test_changelist_queries_do_not_grow_and_never_unpickle(admin_client_su):
    ct = ContentType.objects.get_for_model(User)
    bulk_instances(20, content_type=ct, object_id="1")
    with mock.patch("durable_django.backend.unsign", side_effect=AssertionError("unpickled in the list")):
        with CaptureQueriesContext(connection) as small:
            assert admin_client_su.get(CHANGELIST).status_code == 200
        bulk_instances_more = [DurableInstance(instance_id=f"more-{i}", program="p.q", status=Status.FAILED)
                               for i in range(80)]
        DurableInstance.objects.bulk_create(bulk_instances_more)
        with CaptureQueriesContext(connection) as big:
            r = admin_client_su.get(CHANGELIST)
    assert r.status_code == 200
    assert len(big.captured_queries) == len(small.captured_queries)
    assert not any('"state"' in q["sql"] and "SELECT" in q["sql"] and "durable_django_durableinstance" in q["sql"]
                   for q in big.captured_queries if "FROM \"durable_django_durableinstance\"" in q["sql"])
    page = r.content.decode()
    assert "auth.user:1" in page and "event approved" in page


def insert_many(n: int) -> None:
    """n paused instances in one INSERT ... SELECT over a recursive CTE (seconds, not minutes, for 100,000)."""
    now = timezone.now()
    values = {"program": "tests.programs.bulk", "status": Status.PAUSED, "wait_kind": "event",
              "waiting_for": "approved", "state": b"not a pickle", "created_at": now, "updated_at": now}
    columns, params = [], []
    for f in DurableInstance._meta.concrete_fields:
        if f.name == "instance_id":
            continue
        value = values[f.name] if f.name in values else f.get_default()
        columns.append(connection.ops.quote_name(f.column))
        params.append(f.get_db_prep_save(value, connection))
    table = connection.ops.quote_name(DurableInstance._meta.db_table)
    if connection.vendor == "mysql":  # no string ||, no CAST AS TEXT, recursion capped at 1000: digits joined
        digit = f"(SELECT 0 AS d UNION ALL SELECT {' UNION ALL SELECT '.join(map(str, range(1, 10)))})"
        seq = (f"(SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d AS i FROM "
               f"{', '.join(f'{digit} AS {x}' for x in 'abcef')}) AS seq")
        sql = (f"INSERT INTO {table} (instance_id, {', '.join(columns)}) "
               f"SELECT CONCAT('bulk-', 100000 + i), {', '.join(['%s'] * len(params))} FROM {seq} WHERE i < {n}")
    else:
        sql = (f"WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < {n - 1}) "
               f"INSERT INTO {table} (instance_id, {', '.join(columns)}) "
               f"SELECT 'bulk-' || CAST(100000 + i AS TEXT), {', '.join(['%s'] * len(params))} FROM seq")
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
    assert DurableInstance.objects.count() == n


def test_changelist_with_100k_instances_is_fast(admin_client_su):
    insert_many(100_000)
    for url in (CHANGELIST, CHANGELIST + "?status__exact=paused", CHANGELIST + "?q=bulk-1999",
                CHANGELIST + "?program=tests.programs.bulk&waits=event"):
        t0 = time.perf_counter()
        r = admin_client_su.get(url)
        elapsed = time.perf_counter() - t0
        assert r.status_code == 200
        assert elapsed < 2.0, f"{url} took {elapsed:.2f}s"
    assert "bulk-199999" in admin_client_su.get(CHANGELIST + "?q=bulk-199999").content.decode()


def test_search_by_id_and_linked_object_and_filters(admin_client_su, inline, uid):
    user = User.objects.get(username="root")
    dd.start(with_locals, "x", instance_id=f"{uid}-linked", link=user)
    dd.start(with_locals, "y", instance_id=f"{uid}-other")
    page = admin_client_su.get(CHANGELIST + f"?q=auth.user:{user.pk}").content.decode()
    assert f"{uid}-linked" in page and f"{uid}-other" not in page
    page = admin_client_su.get(CHANGELIST + f"?q={uid}-oth").content.decode()
    assert f"{uid}-other" in page and f"{uid}-linked" not in page
    page = admin_client_su.get(CHANGELIST + "?status__exact=completed").content.decode()
    assert uid not in page
    assert uid in admin_client_su.get(CHANGELIST + "?waits=event").content.decode()
    assert uid not in admin_client_su.get(CHANGELIST + "?waits=timer").content.decode()
    # the program filter lists each program once
    DurableInstance.objects.create(instance_id=f"{uid}-z", program="zz.last", status=Status.FAILED)
    page = admin_client_su.get(CHANGELIST).content.decode()
    assert page.count("?program=zz.last") == 1 and page.count(f"?program={with_locals.name}") == 1


def test_detail_shows_stack_locals_history_events_escaped(admin_client_su, inline, uid):
    dd.start(with_locals, "<script>alert(1)</script>", instance_id=uid)
    dd.publish_event(uid, "later", {"k": 1})
    page = admin_client_su.get(detail_url(uid)).content.decode()
    assert "with_locals" in page and "wait_for_event(&#x27;go&#x27;)" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert "&#x27;count&#x27;" not in page and ">count<" in page and ">3<" in page
    assert "Event published" in page and "later" in page and "pending" in page
    assert f'data-ws-path="/ws/durable/instances/{uid}/"' in page


def test_a_closure_variable_shows_the_same_in_the_admin_and_durable_status(admin_client_su, inline, uid):
    dd.start(with_closure, 20, instance_id=uid)
    page = admin_client_su.get(detail_url(uid)).content.decode()
    assert '<td><code>shared</code></td><td>list</td><td class="local-value">[20, 21]</td>' in page
    out = StringIO()
    call_command("durable_status", uid, stdout=out, stderr=StringIO())
    assert "      shared = [20, 21]\n" in out.getvalue()
    assert "Cell" not in page and "Cell" not in out.getvalue()


def test_detail_refuses_a_tampered_state(admin_client_su, inline, uid):
    dd.start(with_locals, "n", instance_id=uid)
    DurableInstance.objects.filter(pk=uid).update(state=b"\x00" * 80)
    page = admin_client_su.get(detail_url(uid)).content.decode()
    assert "signature check" in page


def test_actions_need_their_permissions(inline, uid):
    dd.start(with_locals, "n", instance_id=uid)
    viewer = staff("viewer")
    assert viewer.get(detail_url(uid)).status_code == 200
    for action in ("resume", "cancel", "retry"):
        assert viewer.post(op_url(uid, action)).status_code == 403
    assert viewer.post(reverse("admin:durable_django_durableinstance_publish", args=[uid]),
                       {"event": "go", "payload": "1"}).status_code == 403
    assert viewer.post(reverse("admin:durable_django_durableinstance_locals", args=[uid]),
                       {"frame": 0, "name": "count", "value": "4"}).status_code == 403
    r = viewer.post(CHANGELIST, {"action": "cancel_selected", "_selected_action": [uid]})
    assert DurableInstance.objects.get(pk=uid).status == Status.PAUSED
    assert r.status_code in (200, 302)
    page = viewer.get(detail_url(uid)).content.decode()
    assert "action-cancel" not in page and "publish-form" not in page
    nobody = Client()
    nobody.force_login(User.objects.create_user("plain", password="pw", is_staff=True))
    assert nobody.get(detail_url(uid)).status_code == 403
    assert nobody.get(CHANGELIST).status_code == 403

    canceller = staff("canceller", "cancel_durableinstance")
    assert "action-cancel" in canceller.get(detail_url(uid)).content.decode()
    r = canceller.post(CHANGELIST, {"action": "cancel_selected", "_selected_action": [uid]})
    assert r.status_code == 302
    assert DurableInstance.objects.get(pk=uid).status == Status.CANCELLED
    # requested by the operator; the program (no cleanup) then ended cancelled in the inline run
    assert DurableHistory.objects.filter(instance_id=uid, kind="cancel_requested", actor="canceller").exists()
    assert DurableHistory.objects.filter(instance_id=uid, kind="cancelled").exists()


def test_publish_form_validates_json_and_resumes(inline, uid):
    dd.start(with_locals, "n", instance_id=uid)
    publisher = staff("publisher", "publish_durableevent")
    url = reverse("admin:durable_django_durableinstance_publish", args=[uid])
    r = publisher.post(url, {"event": "go", "payload": "{oops"})
    assert r.status_code == 400 and "Not valid JSON" in r.content.decode()
    r = publisher.post(url, {"event": "  ", "payload": "1"})
    assert r.status_code == 400
    r = publisher.post(url, {"event": "go", "payload": '{"ok": true}'})
    assert r.status_code == 302
    assert dd.result(uid)["answer"] == {"ok": True}
    r = publisher.post(url, {"event": "go", "payload": "1"})  # finished: a clear error, nothing stored
    assert r.status_code == 400 and "completed" in r.content.decode()


def test_resume_and_retry_actions(inline, uid):
    dd.start(explode, instance_id=uid)
    dd.publish_event(uid, "boom")
    assert DurableInstance.objects.get(pk=uid).status == Status.FAILED
    op = staff("op", "resume_durableinstance")
    assert "action-retry" in op.get(detail_url(uid)).content.decode()
    assert op.post(op_url(uid, "retry")).status_code == 302
    # it continued from its last checkpoint (the wait), took the same event again and failed again
    row = DurableInstance.objects.get(pk=uid)
    assert row.status == Status.FAILED and "kaput" in row.error
    retried = DurableHistory.objects.get(instance_id=uid, kind="operator", actor="op")
    assert retried.detail.startswith("retried from the last checkpoint at ") and "explode" in retried.detail
    waiting = f"{uid}-w"
    dd.start(explode, instance_id=waiting)
    assert op.post(op_url(waiting, "resume")).status_code == 302
    assert DurableInstance.objects.get(pk=waiting).status == Status.PAUSED  # nothing arrived: still waits
    r = op.post(CHANGELIST, {"action": "resume_selected", "_selected_action": [waiting]})
    assert r.status_code == 302


def test_edit_locals_with_permission_is_recorded_and_used(inline, uid):
    dd.start(with_locals, "n", instance_id=uid)
    url = reverse("admin:durable_django_durableinstance_locals", args=[uid])
    no_edit = staff("noedit", "publish_durableevent")
    assert 'name="value"' not in no_edit.get(detail_url(uid)).content.decode()
    assert no_edit.post(url, {"frame": 0, "name": "count", "value": "4"}).status_code == 403
    editor = staff("editor", "edit_locals_durableinstance")
    assert 'name="value"' in editor.get(detail_url(uid)).content.decode()
    version = DurableInstance.objects.get(pk=uid).version
    editor.post(url, {"frame": 0, "name": "count", "value": "oops"})  # not JSON: refused
    editor.post(url, {"frame": 0, "name": "nope", "value": "1"})  # no such local: refused
    editor.post(url, {"frame": 0, "name": "count", "value": "5", "expected": str(version - 1)})  # stale: refused
    assert DurableInstance.objects.get(pk=uid).version == version
    r = editor.post(url, {"frame": 0, "name": "count", "value": "41", "expected": str(version)})
    assert r.status_code == 302
    r = editor.post(url, {"frame": 0, "name": "items", "value": '["z"]'})
    h = DurableHistory.objects.filter(instance_id=uid, actor="editor").order_by("id")
    assert [x.detail for x in h][0].startswith("set local 'count' of frame 0 (with_locals) from 3 to 41")
    dd.publish_event(uid, "go", "yes")
    assert dd.result(uid) == {"note": "n", "count": 41, "items": ["z"], "answer": "yes"}


async def inner_wait(limit: int):
    seen = limit * 2
    got = await wait_for_event("inner", group="approvers", schema={"type": "object", "properties": {
        "ok": {"type": "boolean"}}})
    return [seen, got]


@make_durable
async def nested():
    outer_note = "outer"
    result = await inner_wait(5)
    return [outer_note, result]


def test_nested_frames_locals_and_assignment_in_the_admin_publish(inline, uid):
    from django.contrib.auth.models import Group

    dd.start(nested, instance_id=uid)
    op = staff("op2", "publish_durableevent", "edit_locals_durableinstance")
    page = op.get(detail_url(uid)).content.decode()
    assert "#0 nested" in page and "#1 inner_wait" in page and ">outer_note<" in page and ">seen<" in page
    r = op.post(reverse("admin:durable_django_durableinstance_locals", args=[uid]),
                {"frame": 1, "name": "seen", "value": "99"})
    assert r.status_code == 302
    url = reverse("admin:durable_django_durableinstance_publish", args=[uid])
    r = op.post(url, {"event": "inner", "payload": '{"ok": true}'})  # may publish, but not in "approvers"
    assert r.status_code == 400 and "assigned to someone else" in r.content.decode()
    User.objects.get(username="op2").groups.add(Group.objects.create(name="approvers"))
    r = op.post(url, {"event": "inner", "payload": '{"ok": "maybe", "extra": 1}'})
    assert r.status_code == 400 and "unexpected fields: extra" in r.content.decode()
    r = op.post(url, {"event": "inner", "payload": '{"ok": true}'})
    assert r.status_code == 302
    assert dd.result(uid) == ["outer", [99, {"ok": True}]]
