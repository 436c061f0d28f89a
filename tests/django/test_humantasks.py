"""Human tasks: a wait names who may answer it and the payload's form or schema; views enforce both."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import F
from django.test import Client
from django.urls import reverse

import durable_django as dd
from durable import make_durable, wait_for_event
from durable_django.humantasks import assignment
from durable_django.humantasks.models import HumanTask
from durable_django.humantasks.sync import answer, sync_all
from durable_django.models import DurableEvent, DurableHistory, DurableInstance, Status

pytestmark = pytest.mark.django_db(transaction=True)

SCHEMA = {"type": "object", "required": ["approved"],
          "properties": {"approved": {"type": "boolean"}, "amount": {"type": "integer", "minimum": 1},
                         "note": {"type": "string", "maxLength": 10}, "level": {"enum": ["low", "high"]}}}


@make_durable
async def by_group():
    answer = await wait_for_event("review", group="reviewers", schema=SCHEMA, title="Review it")
    return answer


@make_durable
async def by_user_then_perm():
    first = await wait_for_event("first", user="ursula")
    second = await wait_for_event("second", permission="auth.view_group",
                                  form="django.contrib.auth.forms.SetPasswordMixin")
    return [first, second]


@make_durable
async def plain_wait():
    return await wait_for_event("go")


@pytest.fixture
def people(db):
    reviewers = Group.objects.create(name="reviewers")
    rita = User.objects.create_user("rita", password="pw")
    rita.groups.add(reviewers)
    ursula = User.objects.create_user("ursula", password="pw")
    nobody = User.objects.create_user("nobody", password="pw")
    publisher = User.objects.create_user("publisher", password="pw")
    publisher.user_permissions.add(Permission.objects.get(codename="publish_durableevent"))
    return {"rita": rita, "ursula": ursula, "nobody": nobody, "publisher": publisher}


def client_for(user) -> Client:
    c = Client(enforce_csrf_checks=True)
    c.force_login(user)
    return c


def csrf_post(c: Client, url: str, **kwargs):
    """POST with a valid CSRF token, as a browser that loaded a page would."""
    c.get(reverse("durable:tasks"))
    token = c.cookies["csrftoken"].value
    return c.post(url, HTTP_X_CSRFTOKEN=token, **kwargs)


def test_task_row_follows_the_wait_and_lists_only_for_assignees(inline, uid, people):
    dd.start(by_group, instance_id=uid)
    task = HumanTask.objects.get(instance_id=uid)
    assert (task.event, task.title, task.assignee_group.name) == ("review", "Review it", "reviewers")
    assert list(HumanTask.objects.for_user(people["rita"])) == [task]
    assert not HumanTask.objects.for_user(people["nobody"]).exists()
    # rita's page shows the schema's form; nobody's page shows nothing
    page = client_for(people["rita"]).get(reverse("durable:tasks")).content.decode()
    assert "Review it" in page and 'name="approved"' in page and 'name="level"' in page
    assert "Nothing waits for you" in client_for(people["nobody"]).get(reverse("durable:tasks")).content.decode()


def test_answer_enforces_assignee_and_schema(inline, uid, people):
    dd.start(by_group, instance_id=uid)
    with pytest.raises(PermissionDenied):
        answer(people["nobody"], uid, "review", {"approved": True})
    with pytest.raises(PermissionDenied):  # may publish events in general, but this task is the reviewers'
        answer(people["publisher"], uid, "review", {"approved": True})
    for bad in ({"approved": True, "amount": 0}, {"approved": True, "note": "x" * 11}, {"approved": True, "zz": 1},
                {"approved": True, "level": "mid"}, ["not", "an", "object"]):
        with pytest.raises(ValidationError):
            answer(people["rita"], uid, "review", bad)
    assert DurableInstance.objects.get(pk=uid).status == Status.PAUSED
    assert not DurableEvent.objects.filter(instance_id=uid).exists()
    answer(people["rita"], uid, "review", {"approved": True, "amount": "3", "level": "high"})
    assert dd.result(uid) == {"approved": True, "amount": 3, "note": "", "level": "high"}
    assert not HumanTask.objects.filter(instance_id=uid).exists()
    # the event's own history entry records who answered (no separate operator entry)
    assert DurableHistory.objects.filter(instance_id=uid, actor="rita", kind="event_published",
                                         detail="review").exists()
    assert not DurableHistory.objects.filter(instance_id=uid, kind="operator").exists()


def test_user_and_permission_assignment_and_form(inline, uid, people):
    dd.start(by_user_then_perm, instance_id=uid)
    assert HumanTask.objects.get(instance_id=uid).assignee_user == people["ursula"]
    with pytest.raises(PermissionDenied):
        answer(people["rita"], uid, "first", 1)
    answer(people["ursula"], uid, "first", 1)
    task = HumanTask.objects.get(instance_id=uid)
    assert (task.event, task.permission, task.assignee_user) == ("second", "auth.view_group", None)
    with pytest.raises(PermissionDenied):
        answer(people["ursula"], uid, "second", {})
    people["nobody"].user_permissions.add(Permission.objects.get(codename="view_group"))
    nobody = User.objects.get(pk=people["nobody"].pk)  # fresh permission cache
    assert list(HumanTask.objects.for_user(nobody)) == [task]
    with pytest.raises(TypeError):  # the form path is not a form class: refused, never published
        answer(nobody, uid, "second", {})


def test_double_answer_publishes_one_event(inline, uid, people, settings):
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": False, "QUEUE": None}
    from unittest import mock

    with mock.patch("durable_django.wakeups.send_task"):
        dd.start(by_group, instance_id=uid)
        dd.run_instance(uid)
        sync_all()
        first = answer(people["rita"], uid, "review", {"approved": True})
        DurableInstance.objects.filter(pk=uid).update(version=F("version") + 5)  # e.g. a wake-up that found no event
        second = answer(people["rita"], uid, "review", {"approved": False})
    assert first.pk == second.pk and DurableEvent.objects.filter(instance_id=uid).count() == 1


def test_wait_without_assignment_needs_the_publish_permission(inline, uid, people):
    dd.start(plain_wait, instance_id=uid)
    assert not HumanTask.objects.filter(instance_id=uid).exists()
    with pytest.raises(PermissionDenied):
        answer(people["rita"], uid, "go", 1)
    answer(people["publisher"], uid, "go", 5)
    assert dd.result(uid) == 5


def test_schema_form_builds_fields():
    form = assignment.schema_form(SCHEMA)(data={"approved": "on", "amount": "2"})
    assert form.is_valid(), form.errors
    assert assignment.to_json(form.cleaned_data)["amount"] == 2
    with pytest.raises(ValueError):
        assignment.schema_form({"type": "array"})


# -- views ------------------------------------------------------------------------
def test_publish_view_statuses(inline, uid, people):
    dd.start(by_group, instance_id=uid)
    url = reverse("durable:publish", args=[uid])
    anon = Client(enforce_csrf_checks=True)
    assert anon.post(url, {"event": "review"}).status_code in (401, 403)
    rita = client_for(people["rita"])
    assert rita.post(url, json.dumps({"event": "review"}), content_type="application/json").status_code == 403  # CSRF
    assert rita.get(url).status_code == 405
    body = json.dumps({"event": "review", "payload": {"approved": True, "amount": -1}})
    r = csrf_post(rita, url, data=body, content_type="application/json")
    assert r.status_code == 400 and "amount" in r.json()["detail"]
    r = csrf_post(rita, url, data="{not json", content_type="application/json")
    assert r.status_code == 400 and "malformed" in r.json()["error"]
    r = csrf_post(rita, url, data=json.dumps({"payload": {}}), content_type="application/json")
    assert r.status_code == 400
    r = csrf_post(client_for(people["nobody"]), url, data=json.dumps({"event": "review", "payload": {}}),
                  content_type="application/json")
    assert r.status_code == 403
    r = csrf_post(rita, reverse("durable:publish", args=["no-such-instance"]),
                  data=json.dumps({"event": "review", "payload": {}}), content_type="application/json")
    assert r.status_code in (403, 404)
    r = csrf_post(rita, url, data=json.dumps({"event": "review", "payload": {"approved": True}}),
                  content_type="application/json")
    assert r.status_code == 202, r.content
    assert DurableInstance.objects.get(pk=uid).status == Status.COMPLETED
    r = csrf_post(client_for(people["publisher"]), url, data={"event": "late", "payload": "1"})
    assert r.status_code == 409


def test_publish_view_form_encoded_and_unknown_instance(inline, uid, people):
    dd.start(plain_wait, instance_id=uid)
    pub = client_for(people["publisher"])
    r = csrf_post(pub, reverse("durable:publish", args=["missing"]), data={"event": "go", "payload": "1"})
    assert r.status_code == 404
    r = csrf_post(pub, reverse("durable:publish", args=[uid]), data={"event": "go", "payload": "{bad"})
    assert r.status_code == 400 and "payload" in r.json()["error"]
    r = csrf_post(pub, reverse("durable:publish", args=[uid]), data={"event": "go", "payload": '{"n": 1}'})
    assert r.status_code == 202 and dd.result(uid) == {"n": 1}


def test_task_answer_page(inline, uid, people):
    dd.start(by_group, instance_id=uid)
    url = reverse("durable:task-answer", args=[uid])
    assert client_for(people["nobody"]).get(url).status_code == 403
    rita = client_for(people["rita"])
    assert "approved" in rita.get(url).content.decode()
    r = csrf_post(rita, url, data={"amount": "0"})
    assert r.status_code == 400 and DurableInstance.objects.get(pk=uid).status == Status.PAUSED
    r = csrf_post(rita, url, data={"approved": "on", "amount": "4", "next": "https://evil.example/"})
    assert r.status_code == 302 and r["Location"] == reverse("durable:tasks")
    assert dd.result(uid)["amount"] == 4


@make_durable
async def form_only():
    return await wait_for_event("fill", schema={"type": "object", "properties": {"n": {"type": "integer"}}})


def test_unassigned_form_wait_is_listed_for_publishers(inline, uid, people):
    dd.start(form_only, instance_id=uid)
    assert list(HumanTask.objects.for_user(people["publisher"]).values_list("instance_id", flat=True)) == [uid]
    assert not HumanTask.objects.for_user(people["rita"]).exists()
    with pytest.raises(ValidationError):
        answer(people["publisher"], uid, "fill", {"n": "x"})
    answer(people["publisher"], uid, "fill", {"n": "7"})
    assert dd.result(uid) == {"n": 7}
