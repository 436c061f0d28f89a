"""Human tasks of parallel branches: one task per waiting branch, each answered and closed on its own.

A process that waits for the manager and finance at once (``durable.gather``) shows two tasks; answering one
publishes its event, which the branch waiting for it takes, and the other task stays open; a rejection raised in
one branch cancels the other, whose task closes. Most tests run the real program in the core and store each of
its states in the instance's row (:mod:`tests.django.staged_branches`); the end-to-end ones run it in a real
Celery worker and need the Django backend's branch storage (the ``django-branches`` work).
"""

from __future__ import annotations

import json
from unittest import mock

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client
from django.urls import reverse
from django.utils.http import urlencode

import durable_django as dd
from durable_django.humantasks.models import HumanTask
from durable_django.humantasks.sync import answer, repair, sync_all
from durable_django.models import DurableEvent, DurableInstance, Status
from tests.django.conftest import wait_until
from tests.django.parallel_programs import approve_in_parallel, steps_beside_finance, three_approvals
from tests.django.staged_branches import DJANGO_RUNS_BRANCHES, StagedRun

pytestmark = pytest.mark.django_db(transaction=True)

APPROVE, REJECT = {"decision": "approve", "comment": "ok"}, {"decision": "reject", "comment": "no"}
needs_django_branches = pytest.mark.skipif(
    not DJANGO_RUNS_BRANCHES, reason="the Django backend does not run parallel branches yet (django-branches)")


@pytest.fixture
def roles(db):
    groups = {name: Group.objects.create(name=name) for name in ("managers", "finance", "legal")}
    users = {name: User.objects.create_user(name, password="pw") for name in ("alice", "bob", "carol", "lena",
                                                                             "nobody", "operator")}
    users["bob"].groups.add(groups["managers"])
    users["alice"].groups.add(groups["managers"], groups["finance"])  # the submitter: excluded from both
    users["carol"].groups.add(groups["finance"])
    users["lena"].groups.add(groups["legal"])
    users["operator"].user_permissions.add(Permission.objects.get(codename="publish_durableevent"))
    users["root"] = User.objects.create_superuser("root", password="pw")
    return {k: User.objects.get(pk=u.pk) for k, u in users.items()}


@pytest.fixture
def staged(settings):
    """Answers publish events but wake no worker: the test delivers them to its staged run."""
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": False}
    with mock.patch("durable_django.wakeups.send_task"):
        yield


def client_for(user) -> Client:
    c = Client(enforce_csrf_checks=True)
    c.force_login(user)
    c.get(reverse("durable:tasks"))  # a page load sets the CSRF cookie, as in a browser
    return c


def post(c: Client, url: str, data: dict, **kwargs):
    return c.post(url, data, HTTP_X_CSRFTOKEN=c.cookies["csrftoken"].value, **kwargs)


def answer_url(iid: str, branch: str = "") -> str:
    url = reverse("durable:task-answer", args=[iid])
    return f"{url}?{urlencode({'branch': branch})}" if branch else url


def tasks(iid: str) -> dict[str, tuple[int, str]]:
    """The open task rows of an instance: branch -> (row id, event)."""
    return {b: (pk, e) for pk, b, e in HumanTask.objects.filter(instance_id=iid).values_list("pk", "branch", "event")}


def events_of(user) -> list[str]:
    return sorted(HumanTask.objects.for_user(user).values_list("event", flat=True))


# -- staged: the core runs the program, the row follows its states -------------------------------------------
def test_two_parallel_waits_make_two_tasks_each_for_its_assignees(staged, uid, roles):
    StagedRun(approve_in_parallel, "alice", instance_id=uid)
    row = DurableInstance.objects.get(pk=uid)
    assert (row.status, row.wait_kind) == (Status.PAUSED, "branches")
    assert {b: e for b, (_, e) in tasks(uid).items()} == {"0.0": "manager_decision", "0.1": "finance_decision"}
    assert events_of(roles["bob"]) == ["manager_decision"]
    assert events_of(roles["carol"]) == ["finance_decision"]
    assert events_of(roles["alice"]) == [] and events_of(roles["nobody"]) == []  # the submitter is excluded
    assert events_of(roles["root"]) == ["finance_decision", "manager_decision"]
    page = client_for(roles["root"]).get(reverse("durable:tasks")).content.decode()
    assert page.count('class="task"') == 2 and page.count('name="decision"') == 2
    assert f'action="{answer_url(uid, "0.0")}"' in page and f'action="{answer_url(uid, "0.1")}"' in page
    assert 'id="id_' in page and len(set(_ids(page))) == len(_ids(page))  # the two forms share no HTML id
    bob_page = client_for(roles["bob"]).get(reverse("durable:tasks")).content.decode()
    assert "manager_decision for alice" in bob_page and "finance_decision" not in bob_page
    # the admin's instance page lists both tasks, the task list shows each with its branch
    detail = client_for(roles["root"]).get(reverse("admin:durable_django_durableinstance_change", args=[uid]))
    assert detail.content.decode().count('class="durable-task"') == 2
    changelist = client_for(roles["root"]).get(reverse("admin:durable_humantasks_humantask_changelist"))
    text = changelist.content.decode()
    assert f"{uid}<br>branch 0.0" in text and f"{uid}<br>branch 0.1" in text


def _ids(page: str) -> list[str]:
    return [chunk.split('"', 1)[0] for chunk in page.split(' id="id_')[1:]]


def test_answering_one_task_leaves_the_other_open(staged, uid, roles):
    run = StagedRun(approve_in_parallel, "alice", instance_id=uid)
    finance_row = tasks(uid)["0.1"]
    bob = client_for(roles["bob"])
    r = post(bob, answer_url(uid, "0.0"), {"decision": "approve", "comment": "fine", "event": "manager_decision"})
    assert r.status_code == 302, r.content
    assert tasks(uid) == {"0.1": finance_row}  # the answered task closed at once, the other stays
    assert run.deliver() == ["manager_decision"]
    row = DurableInstance.objects.get(pk=uid)
    assert (row.status, row.wait_kind) == (Status.PAUSED, "branches")  # still waiting, for finance
    assert tasks(uid) == {"0.1": finance_row}  # the same row: the finance task was never closed
    assert events_of(roles["bob"]) == [] and events_of(roles["carol"]) == ["finance_decision"]
    assert "Nothing waits for you" in bob.get(reverse("durable:tasks")).content.decode()
    assert bob.get(answer_url(uid, "0.0")).status_code == 403  # the answered task is gone
    # finance answers through the publish view (event name only): the finance branch's wait is found
    carol = client_for(roles["carol"])
    r = carol.post(reverse("durable:publish", args=[uid]), json.dumps({"event": "finance_decision",
                                                                      "payload": APPROVE}),
                   content_type="application/json", HTTP_X_CSRFTOKEN=carol.cookies["csrftoken"].value)
    assert r.status_code == 202, r.content
    assert run.deliver() == ["finance_decision"]
    assert DurableInstance.objects.get(pk=uid).status == Status.COMPLETED
    assert run.state["result"] == ["fine", "ok"] and tasks(uid) == {}


def test_a_rejection_cancels_the_other_branch_and_closes_its_task(staged, uid, roles):
    run = StagedRun(approve_in_parallel, "alice", instance_id=uid)
    answer(roles["carol"], uid, "finance_decision", REJECT, branch="0.1")
    assert set(tasks(uid)) == {"0.0"}
    run.deliver()
    row = DurableInstance.objects.get(pk=uid)
    assert (row.status, row.wait_kind, row.waiting_for) == (Status.PAUSED, "event", "acknowledged")
    assert tasks(uid) == {}  # the manager's branch was cancelled: its task closed, the instance still waits
    assert events_of(roles["bob"]) == []
    assert client_for(roles["bob"]).get(answer_url(uid, "0.0")).status_code == 403
    with pytest.raises(PermissionDenied):
        answer(roles["bob"], uid, "manager_decision", APPROVE, branch="0.0")
    assert not DurableEvent.objects.filter(instance_id=uid, name="manager_decision").exists()
    DurableEvent.objects.create(instance_id=uid, name="acknowledged")
    run.deliver()
    assert run.state["result"] == "rejected at finance_decision"


def test_each_task_checks_its_own_assignment_and_form(staged, uid, roles):
    StagedRun(approve_in_parallel, "alice", instance_id=uid)
    carol, bob = client_for(roles["carol"]), client_for(roles["bob"])
    assert carol.get(answer_url(uid, "0.0")).status_code == 403  # the manager's task is not hers
    assert bob.get(answer_url(uid, "0.1")).status_code == 403
    assert bob.get(answer_url(uid)).status_code == 403  # no wait of the instance's own: the tasks are branches'
    assert client_for(roles["nobody"]).get(answer_url(uid, "0.1")).status_code == 403
    assert client_for(roles["alice"]).get(answer_url(uid, "0.0")).status_code == 403  # never her own expense
    assert bob.get(answer_url(uid, "0.7")).status_code == 403  # no such branch
    assert bob.get(answer_url(uid, "0.0") + "%00").status_code == 400
    assert post(carol, answer_url(uid, "0.0"), APPROVE).status_code == 403
    with pytest.raises(PermissionDenied):  # the right event, but named with the other branch
        answer(roles["bob"], uid, "manager_decision", APPROVE, branch="0.1")
    with pytest.raises(PermissionDenied):
        answer(roles["carol"], uid, "manager_decision", APPROVE)
    with pytest.raises(PermissionDenied):  # may publish events, but both tasks are assigned
        answer(roles["operator"], uid, "finance_decision", APPROVE)
    with pytest.raises(PermissionDenied):
        answer(roles["alice"], uid, "finance_decision", APPROVE)
    with pytest.raises(ValidationError):  # each wait's own form
        answer(roles["carol"], uid, "finance_decision", {"decision": "maybe"}, branch="0.1")
    r = post(bob, answer_url(uid, "0.0"), {"decision": "maybe"})
    assert r.status_code == 400
    assert not DurableEvent.objects.filter(instance_id=uid).exists()
    assert len(tasks(uid)) == 2
    # the same task answered twice (double submit): one event
    first = answer(roles["bob"], uid, "manager_decision", APPROVE, branch="0.0")
    again = answer(roles["root"], uid, "manager_decision", REJECT)
    assert first.pk == again.pk and DurableEvent.objects.filter(instance_id=uid).count() == 1


def test_a_stale_page_does_not_answer_the_next_wait_of_its_branch(staged, uid, roles):
    run = StagedRun(steps_beside_finance, "alice", instance_id=uid)
    bob = client_for(roles["bob"])
    assert tasks(uid)["0.0"][1] == "manager_first"
    assert post(bob, answer_url(uid, "0.0"), {**APPROVE, "event": "manager_first"}).status_code == 302
    run.deliver()
    assert {b: e for b, (_, e) in tasks(uid).items()} == {"0.0": "manager_second", "0.1": "finance_decision"}
    r = post(bob, answer_url(uid, "0.0"), {**APPROVE, "event": "manager_first"})  # resent from the old page
    assert r.status_code == 409 and "manager_second" in r.content.decode()
    assert not DurableEvent.objects.filter(instance_id=uid, name="manager_second").exists()
    assert post(bob, answer_url(uid, "0.0"), {**APPROVE, "event": "manager_second"}).status_code == 302
    assert DurableEvent.objects.filter(instance_id=uid, name="manager_second", consumed_at=None).count() == 1


def test_nested_groups_give_a_task_per_innermost_branch(staged, uid, roles):
    run = StagedRun(three_approvals, "alice", instance_id=uid)
    assert {b: e for b, (_, e) in tasks(uid).items()} == {
        "0.0": "manager_decision", "0.1/0.0": "finance_decision", "0.1/0.1": "legal_decision"}
    lena = client_for(roles["lena"])
    page = lena.get(reverse("durable:tasks")).content.decode()
    assert answer_url(uid, "0.1/0.1") in page and "legal_decision" in page
    assert post(lena, answer_url(uid, "0.1/0.1"), APPROVE).status_code == 302
    run.deliver()
    assert set(tasks(uid)) == {"0.0", "0.1/0.0"}
    answer(roles["bob"], uid, "manager_decision", APPROVE)
    answer(roles["carol"], uid, "finance_decision", APPROVE)
    run.deliver()
    assert DurableInstance.objects.get(pk=uid).status == Status.COMPLETED and tasks(uid) == {}


def test_repair_and_rebuild_make_a_row_per_waiting_branch(staged, uid, roles):
    StagedRun(approve_in_parallel, "alice", instance_id=uid)
    HumanTask.objects.all().delete()
    assert sync_all() == 2 and set(tasks(uid)) == {"0.0", "0.1"}
    HumanTask.objects.filter(branch="0.1").delete()
    HumanTask.objects.create(instance_id=uid, branch="9.9", event="gone")  # a row whose branch ended
    repair()
    assert {b: e for b, (_, e) in tasks(uid).items()} == {"0.0": "manager_decision", "0.1": "finance_decision"}


# -- end to end: a real Celery worker runs the branches ---------------------------------------------------------
@needs_django_branches
@pytest.mark.timeout(180)
def test_parallel_tasks_with_a_real_worker(worker_factory, uid, roles):
    worker_factory()
    dd.start(approve_in_parallel, "alice", instance_id=uid)
    wait_until(lambda: len(tasks(uid)) == 2, message="the two tasks")
    finance_row = tasks(uid)["0.1"]
    answer(roles["bob"], uid, "manager_decision", APPROVE, branch="0.0")
    wait_until(lambda: DurableEvent.objects.filter(instance_id=uid, name="manager_decision")
               .exclude(consumed_at=None).exists(), message="the manager's answer to be taken")
    wait_until(lambda: DurableInstance.objects.get(pk=uid).status == Status.PAUSED, message="the next pause")
    assert tasks(uid) == {"0.1": finance_row}
    answer(roles["carol"], uid, "finance_decision", APPROVE, branch="0.1")
    wait_until(lambda: DurableInstance.objects.get(pk=uid).status == Status.COMPLETED, message="the end")
    assert dd.result(uid) == ["ok", "ok"] and tasks(uid) == {}


@needs_django_branches
@pytest.mark.timeout(180)
def test_a_rejection_closes_the_other_task_with_a_real_worker(worker_factory, uid, roles):
    worker_factory()
    dd.start(approve_in_parallel, "alice", instance_id=uid)
    wait_until(lambda: len(tasks(uid)) == 2, message="the two tasks")
    answer(roles["bob"], uid, "manager_decision", REJECT, branch="0.0")
    wait_until(lambda: DurableInstance.objects.filter(pk=uid, status=Status.PAUSED, waiting_for="acknowledged")
               .exists(), message="the instance to wait for the acknowledgement")
    assert tasks(uid) == {}
    with pytest.raises(PermissionDenied):
        answer(roles["carol"], uid, "finance_decision", APPROVE, branch="0.1")
    dd.publish_event(uid, "acknowledged")
    wait_until(lambda: DurableInstance.objects.get(pk=uid).status == Status.COMPLETED, message="the end")
    assert dd.result(uid) == "rejected at manager_decision"
