"""Issue 10, security 1, 2 (task pages) and 5: a human task is answered only by its assignees through its form,
whenever the event was published; the task pages never trust the unsigned ``HumanTask`` columns; the example
project fails closed (production settings, demo logins) and nobody approves their own expense."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.exceptions import PermissionDenied
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

import durable_django as dd
from durable import make_durable, wait_for_event
from durable_django.humantasks.models import HumanTask
from durable_django.humantasks.sync import answer
from durable_django.models import DurableEvent, DurableHistory, DurableInstance, Status
from example_project.expenses.durable_programs import expense_approval
from example_project.expenses.models import Expense, Payment
from tests.django.conftest import ROOT, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
APPROVE = {"decision": "approve", "comment": "ok"}


@pytest.fixture
def roles(db):
    managers, finance = Group.objects.create(name="managers"), Group.objects.create(name="finance")
    publish = Permission.objects.get(codename="publish_durableevent")
    users = {name: User.objects.create_user(name, password="pw")
             for name in ("alice", "bob", "bert", "carol", "dave", "operator", "finop")}
    users["bob"].groups.add(managers)
    users["bert"].groups.add(managers)
    users["carol"].groups.add(finance)
    users["dave"].user_permissions.add(Permission.objects.get(codename="approve_escalated"))
    users["operator"].user_permissions.add(publish)  # the demo's operator: may publish events, in no group
    users["finop"].groups.add(finance)  # finance AND may publish: passes the assignment, so the form decides
    users["finop"].user_permissions.add(publish)
    return {k: User.objects.get(pk=u.pk) for k, u in users.items()}


def submit(employee, amount: str) -> Expense:
    expense = Expense.objects.create(employee=employee, amount=Decimal(amount), description="Hotel")
    dd.start(expense_approval, expense.pk, instance_id=expense.instance_id, link=expense)
    return expense


def state(expense: Expense) -> str:
    return Expense.objects.get(pk=expense.pk).state


def client_for(user) -> Client:
    c = Client(enforce_csrf_checks=True)
    c.force_login(user)
    c.get(reverse("durable:tasks"))  # a page load sets the CSRF cookie, as in a browser
    return c


def publish(c: Client, iid: str, event: str, payload):
    """POST to the publish view as a browser's script would (JSON body, CSRF header)."""
    return c.post(reverse("durable:publish", args=[iid]), json.dumps({"event": event, "payload": payload}),
                  content_type="application/json", HTTP_X_CSRFTOKEN=c.cookies["csrftoken"].value)


def rejected(iid: str) -> list[tuple[str, str]]:
    return list(DurableEvent.objects.filter(instance_id=iid).exclude(rejected=None).order_by("id")
                .values_list("name", "rejected"))


# -- 1. an event published ahead of time does not answer a human task --------------------------------
def submit_with_early_event(employee, c: Client, event: str, payload) -> Expense:
    """Submit a large expense and publish ``event`` through ``c`` before its process starts (in the same
    transaction: the process starts at the commit), so the event waits in the inbox before any wait exists.
    (Large expenses ask the manager and finance at once: once the process runs, finance's wait exists.)"""
    with transaction.atomic():
        e = submit(employee, "5000")
        r = publish(c, e.instance_id, event, payload)
        assert r.status_code == 202, r.content  # no wait yet: kept for later (the publisher may publish events)
    return e


def open_tasks(e: Expense) -> set[str]:
    return set(HumanTask.objects.filter(instance_id=e.instance_id).values_list("event", flat=True))


def test_early_event_from_the_operator_does_not_answer_the_finance_task(inline, roles):
    # The operator may publish events in general, so the view keeps the event for later (no wait is current).
    e = submit_with_early_event(roles["alice"], client_for(roles["operator"]), "finance_decision", APPROVE)
    # The finance wait refused the early event: both tasks open, the reason recorded.
    assert state(e) == Expense.State.AWAITING_APPROVALS and open_tasks(e) == {"manager_decision", "finance_decision"}
    [(name, reason)] = rejected(e.instance_id)
    assert name == "finance_decision" and "'operator' may not answer this task (group 'finance'" in reason
    r = publish(client_for(roles["bob"]), e.instance_id, "manager_decision", APPROVE)  # the manager approves
    assert r.status_code == 202, r.content

    # Not paid, still waiting for finance.
    assert state(e) == Expense.State.AWAITING_FINANCE and not Payment.objects.exists()
    inst = DurableInstance.objects.get(pk=e.instance_id)
    assert inst.status == Status.PAUSED and open_tasks(e) == {"finance_decision"}
    ev = DurableEvent.objects.get(instance_id=e.instance_id, name="finance_decision")
    assert ev.consumed_at is not None and ev.publisher_id == roles["operator"].pk  # out of the inbox, unused
    assert DurableHistory.objects.filter(instance_id=e.instance_id, kind="event_rejected",
                                         detail__contains="may not answer").count() == 1
    assert not DurableInstance.objects.runnable_now(timezone.now()).filter(pk=e.instance_id).exists()
    root = Client()
    root.force_login(User.objects.create_superuser("root", password="pw"))
    page = root.get(reverse("admin:durable_django_durableinstance_change", args=[e.instance_id])).content.decode()
    assert "rejected" in page and "may not answer this task" in page  # the operator sees why
    # The task still waits for finance, and a proper answer completes it.
    assert HumanTask.objects.for_user(roles["carol"]).get().event == "finance_decision"
    r = publish(client_for(roles["carol"]), e.instance_id, "finance_decision", {"decision": "approve",
                                                                                "comment": "checked"})
    assert r.status_code == 202, r.content
    e.refresh_from_db()
    assert (e.state, e.decided_by, e.comment) == (Expense.State.PAID, "finance", "checked")
    assert Payment.objects.filter(expense=e).count() == 1


def test_a_wrong_answer_to_a_current_task_is_refused_at_once(inline, roles):
    """While finance's task waits (beside the manager's), the operator's answer to it is a 403: nothing stored."""
    e = submit(roles["alice"], "5000")
    assert open_tasks(e) == {"manager_decision", "finance_decision"}
    r = publish(client_for(roles["operator"]), e.instance_id, "finance_decision", APPROVE)
    assert r.status_code == 403 and not DurableEvent.objects.filter(instance_id=e.instance_id).exists()
    r = publish(client_for(roles["finop"]), e.instance_id, "finance_decision", {"decision": "approve", "x": 1})
    assert r.status_code == 400 and not DurableEvent.objects.filter(instance_id=e.instance_id).exists()


@pytest.mark.timeout(180)
def test_early_event_attack_with_a_real_worker(worker_factory, roles):
    """The same attack with the instance run by a Celery worker process (the check runs in the worker)."""
    worker_factory()
    e = submit_with_early_event(roles["alice"], client_for(roles["operator"]), "finance_decision", APPROVE)
    wait_until(lambda: rejected(e.instance_id), message="the early event to be rejected")
    wait_until(lambda: open_tasks(e) == {"manager_decision", "finance_decision"}
               and DurableInstance.objects.filter(pk=e.instance_id, status=Status.PAUSED).exists(),
               message="both tasks")
    assert "'operator' may not answer" in rejected(e.instance_id)[0][1]
    assert publish(client_for(roles["bob"]), e.instance_id, "manager_decision", APPROVE).status_code == 202
    wait_until(lambda: state(e) == Expense.State.AWAITING_FINANCE and open_tasks(e) == {"finance_decision"},
               message="the finance task alone")
    assert not Payment.objects.exists()
    assert publish(client_for(roles["carol"]), e.instance_id, "finance_decision", APPROVE).status_code == 202
    wait_until(lambda: state(e) == Expense.State.PAID, message="the payment")
    assert Expense.objects.get(pk=e.pk).decided_by == "finance" and Payment.objects.filter(expense=e).count() == 1


BAD_PAYLOADS = {
    "oversized comment": ({"decision": "approve", "comment": "x" * 90_000},  # the form allows 500 characters
                          "comment: Ensure this value has at most 500 characters (it has 90000)"),
    "field not in the form": ({"decision": "approve", "comment": "", "pay_to": "IBAN-of-mallory"},
                              "unexpected fields: pay_to"),
    # not objects: the program would index them (TypeError)
    "list": (["approve"], "the payload must be a JSON object"),
    "string": ("approve", "the payload must be a JSON object"),
    "null": (None, "the payload must be a JSON object"),
    "number": (42, "the payload must be a JSON object"),
}


@pytest.mark.parametrize("case", list(BAD_PAYLOADS))
def test_payloads_the_form_refuses_never_reach_the_program(inline, roles, case):
    payload, reason = BAD_PAYLOADS[case]
    # finop is in finance and may publish ahead of time: only the form stands in the way
    e = submit_with_early_event(roles["alice"], client_for(roles["finop"]), "finance_decision", payload)
    answer(roles["bob"], e.instance_id, "manager_decision", APPROVE)

    inst = DurableInstance.objects.get(pk=e.instance_id)
    assert (inst.status, inst.error) == (Status.PAUSED, "") and open_tasks(e) == {"finance_decision"}
    assert state(e) == Expense.State.AWAITING_FINANCE and not Payment.objects.exists()
    [(_, got)] = rejected(e.instance_id)
    assert got.startswith("the payload does not fit the task's form: ") and reason in got
    # The answer the form accepts goes through, cleaned by the form (a new answer: the rejected one is spent).
    answer(roles["carol"], e.instance_id, "finance_decision", {"decision": "reject"})
    e.refresh_from_db()
    assert (e.state, e.comment) == (Expense.State.REJECTED, "")
    assert dd.result(e.instance_id) == "rejected"


def test_an_early_answer_that_fits_the_assignment_and_the_form_is_taken(inline, roles):
    """The rule is the wait's assignment and form, checked at consumption; not the time of publication."""
    e = submit_with_early_event(roles["alice"], client_for(roles["finop"]), "finance_decision", APPROVE)
    assert state(e) == Expense.State.AWAITING_MANAGER and open_tasks(e) == {"manager_decision"}  # finance said yes
    answer(roles["bob"], e.instance_id, "manager_decision", APPROVE)
    e.refresh_from_db()
    assert (e.state, e.decided_by) == (Expense.State.PAID, "manager") and not rejected(e.instance_id)


@make_durable
async def reviewed():
    got = await wait_for_event("review", group="reviewers", schema={
        "type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}})
    return got


@make_durable
async def titled():
    return await wait_for_event("go", title="not a task: no assignee, no form")


def test_event_from_code_or_a_stranger_while_the_task_waits_is_rejected_once(inline, uid, roles):
    """The resume path: the wait is current and nothing else runs, so the rejection commits without a checkpoint
    (the executor rolls the run back) and the instance is not woken again and again."""
    rita = User.objects.create_user("rita", password="pw")
    rita.groups.add(Group.objects.create(name="reviewers"))
    dd.start(reviewed, instance_id=uid)
    pauses = DurableHistory.objects.filter(instance_id=uid, kind="paused").count()
    dd.publish_event(uid, "review", {"ok": True})  # code, without a user
    dd.publish_event(uid, "review", {"ok": True}, actor=roles["operator"])  # a user outside the group
    assert DurableInstance.objects.get(pk=uid).status == Status.PAUSED
    assert DurableHistory.objects.filter(instance_id=uid, kind="paused").count() == pauses  # no checkpoint taken
    reasons = [r for _, r in rejected(uid)]
    assert "published without a user" in reasons[0] and "'operator' may not answer" in reasons[1]
    assert not DurableEvent.objects.filter(instance_id=uid, consumed_at=None).exists()
    assert DurableHistory.objects.filter(instance_id=uid, kind="event_rejected").count() == 2
    assert not DurableInstance.objects.runnable_now(timezone.now()).filter(pk=uid).exists()
    assert dd.run_instance(uid) == Status.PAUSED  # a stray wake-up finds nothing to do, and rejects nothing again
    assert DurableHistory.objects.filter(instance_id=uid, kind="event_rejected").count() == 2
    answer(rita, uid, "review", {"ok": "true"})
    assert dd.result(uid) == {"ok": True}


def test_durable_publish_answers_a_task_only_as_an_assignee(inline, uid, roles):
    rita = User.objects.create_user("rita", password="pw")
    rita.groups.add(Group.objects.create(name="reviewers"))
    dd.start(reviewed, instance_id=uid)
    with pytest.raises(CommandError, match="'operator' may not publish this: this task is assigned to someone else"):
        call_command("durable_publish", uid, "review", "--payload", '{"ok": true}', "--as", "operator")
    with pytest.raises(CommandError, match="invalid payload: unexpected fields: x"):
        call_command("durable_publish", uid, "review", "--payload", '{"ok": true, "x": 1}', "--as", "rita")
    with pytest.raises(CommandError, match="no user 'ghost'"):
        call_command("durable_publish", uid, "review", "--as", "ghost")
    assert not DurableEvent.objects.filter(instance_id=uid).exists()
    call_command("durable_publish", uid, "review", "--payload", '{"ok": true}', "--as", "rita",
                 stdout=open(os.devnull, "w"))
    assert dd.result(uid) == {"ok": True}


def test_a_wait_without_assignee_or_form_keeps_the_plain_event_path(inline, uid, monkeypatch):
    from durable_django.backend import DjangoOrchestrationBackend

    def not_here(*args):
        raise AssertionError("the human-task path ran for a wait that is no human task")

    monkeypatch.setattr(DjangoOrchestrationBackend, "wait_for_answer_sync", not_here)
    dd.start(titled, instance_id=uid)
    with CaptureQueriesContext(connection) as queries:
        dd.publish_event(uid, "go", [1, 2])  # code, no user: fine for a wait that is no human task
    assert dd.result(uid) == [1, 2]
    assert not any("auth_user" in (q["sql"] or "") for q in queries.captured_queries)
    assert not rejected(uid)


def test_deleted_or_deactivated_publisher_answers_nothing(inline, uid):
    reviewers = Group.objects.create(name="reviewers")
    rita, rosa = User.objects.create_user("rita", password="pw"), User.objects.create_user("rosa", password="pw")
    rita.groups.add(reviewers)
    rosa.groups.add(reviewers)
    dd.start(reviewed, instance_id=uid)
    with transaction.atomic():  # both leave before the worker consumes their answers (it runs after commit)
        first = dd.publish_event(uid, "review", {"ok": True}, actor=rita)
        second = dd.publish_event(uid, "review", {"ok": False}, actor=rosa)
        User.objects.filter(pk=rosa.pk).update(is_active=False)
        rita.delete()
    assert DurableInstance.objects.get(pk=uid).status == Status.PAUSED
    assert f"its publisher (user id {first.publisher_id}) no longer exists" in (
        DurableEvent.objects.get(pk=first.pk).rejected)
    assert "'rosa' may not answer" in DurableEvent.objects.get(pk=second.pk).rejected


def test_an_answer_rejected_at_consumption_does_not_block_the_next_answer(inline, uid, roles, settings):
    """The answer key makes a double submit publish one event; a rejected answer must not swallow the next."""
    rita = User.objects.create_user("rita", password="pw")
    reviewers = Group.objects.create(name="reviewers")
    rita.groups.add(reviewers)
    dd.start(reviewed, instance_id=uid)
    with transaction.atomic():  # rita answers, and leaves the group before the worker consumes her answer
        first = answer(rita, uid, "review", {"ok": True})
        rita.groups.remove(reviewers)
    assert "'rita' may not answer" in DurableEvent.objects.get(pk=first.pk).rejected
    rita.groups.add(reviewers)  # back in the group: her new answer is a new event, and it is taken
    second = answer(User.objects.get(pk=rita.pk), uid, "review", {"ok": False})
    assert second.pk != first.pk and dd.result(uid) == {"ok": False}


# -- 2. the task pages take the form and the assignment from the signed state --------------------------
def test_task_pages_ignore_a_tampered_form_column(inline, roles, monkeypatch):
    e = submit(roles["alice"], "80")
    trap = "tests.django.trap_form_module"
    sys.modules.pop(trap, None)
    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a) or 0)
    for path in ("os.system", f"{trap}.TrapForm"):
        HumanTask.objects.filter(instance_id=e.instance_id).update(form=path, schema={"type": "array"})
        bob = client_for(roles["bob"])
        for url in (reverse("durable:tasks"), reverse("durable:task-answer", args=[e.instance_id]),
                    reverse("expense", args=[e.pk])):
            r = bob.get(url)
            assert r.status_code == 200, (url, r.status_code)
            assert 'name="decision"' in r.content.decode()  # the program's DecisionForm, from the signed state
        assert trap not in sys.modules and not called
    r = bob.post(reverse("durable:task-answer", args=[e.instance_id]), {"decision": "approve", "comment": "fine"},
                 HTTP_X_CSRFTOKEN=bob.cookies["csrftoken"].value)
    assert r.status_code == 302 and state(e) == Expense.State.PAID
    assert trap not in sys.modules and not called


def test_task_pages_ignore_a_tampered_assignment(inline, roles):
    e = submit(roles["alice"], "80")
    mallory = User.objects.create_user("mallory", password="pw")
    HumanTask.objects.filter(instance_id=e.instance_id).update(assignee_user=mallory, assignee_group=None,
                                                               event="manager_decision", title="Sign here")
    c = client_for(mallory)
    assert "Nothing waits for you" in c.get(reverse("durable:tasks")).content.decode()
    assert c.get(reverse("durable:task-answer", args=[e.instance_id])).status_code == 403
    r = c.post(reverse("durable:task-answer", args=[e.instance_id]), {"decision": "approve"},
               HTTP_X_CSRFTOKEN=c.cookies["csrftoken"].value)
    assert r.status_code == 403 and state(e) == Expense.State.AWAITING_MANAGER
    assert not DurableEvent.objects.filter(instance_id=e.instance_id).exists()


# -- 5. the example project: nobody approves their own expense -----------------------------------------
def test_a_managers_own_expense_goes_to_the_director(inline, roles):
    e = submit(roles["bob"], "80")
    assert state(e) == Expense.State.AWAITING_MANAGER
    assert not HumanTask.objects.for_user(roles["bob"]).exists()
    assert not HumanTask.objects.for_user(roles["bert"]).exists()  # nor a fellow manager
    assert "Director approval" in HumanTask.objects.for_user(roles["dave"]).get().title
    for who in ("bob", "bert"):
        with pytest.raises(PermissionDenied):
            answer(roles[who], e.instance_id, "manager_decision", APPROVE)
    answer(roles["dave"], e.instance_id, "manager_decision", APPROVE)
    e.refresh_from_db()
    assert (e.state, e.decided_by) == (Expense.State.PAID, "director")


def test_no_approver_answers_for_their_own_expense_not_even_a_superuser(inline, roles):
    boss = User.objects.create_superuser("boss", password="pw")
    boss.groups.add(Group.objects.get(name="managers"))
    e = submit(boss, "80")  # a manager: routed to the director, and the superuser may not answer it either
    assert not HumanTask.objects.for_user(boss).exists()
    with pytest.raises(PermissionDenied):
        answer(boss, e.instance_id, "manager_decision", APPROVE)
    # carol (finance) submits a large expense: the manager approves; finance is someone else than carol
    e2 = submit(roles["carol"], "5000")
    answer(roles["bob"], e2.instance_id, "manager_decision", APPROVE)
    assert state(e2) == Expense.State.AWAITING_FINANCE
    assert not HumanTask.objects.for_user(roles["carol"]).exists()
    with pytest.raises(PermissionDenied):
        answer(roles["carol"], e2.instance_id, "finance_decision", APPROVE)
    # ...also when published ahead of time by a submitter who may publish: refused when the wait consumes it
    roles["carol"].user_permissions.add(Permission.objects.get(codename="publish_durableevent"))
    carol = User.objects.get(pk=roles["carol"].pk)
    e3 = submit(carol, "5000")
    dd.publish_event(e3.instance_id, "finance_decision", APPROVE, actor=carol)
    answer(roles["bob"], e3.instance_id, "manager_decision", APPROVE)
    assert state(e3) == Expense.State.AWAITING_FINANCE
    assert "never 'carol'" in rejected(e3.instance_id)[0][1]
    answer(roles["finop"], e3.instance_id, "finance_decision", APPROVE)
    assert state(e3) == Expense.State.PAID


# -- 5. the example project fails closed -----------------------------------------------------------
PRODUCTION_ENV = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": "q5Jm0-8pZr2yVt7kLw3nBx9cFh4sDg6aE1uIo_TjRkYlPmNbQv",
    "DJANGO_ALLOWED_HOSTS": "expenses.example.com",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://expenses.example.com",
    "DJANGO_SECURE_HSTS_SECONDS": "31536000",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "DJANGO_SECURE_HSTS_PRELOAD": "1",
}


def manage(args: list[str], env: dict, tmp_path) -> subprocess.CompletedProcess:
    """``manage.py`` with the example project's own settings and only the given environment."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("DJANGO_", "DURABLE_", "DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL"))}
    base.update(DJANGO_SETTINGS_MODULE="example_project.settings", DURABLE_VAR_DIR=str(tmp_path), **env)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=base, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.timeout(120)
def test_check_deploy_passes_with_the_documented_production_environment(tmp_path):
    out = manage(["check", "--deploy", "--fail-level", "WARNING"], PRODUCTION_ENV, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "System check identified no issues" in out.stdout, out.stdout + out.stderr
    # The same check without the production variables reports what is missing (development mode is not deployable).
    out = manage(["check", "--deploy", "--fail-level", "WARNING"], {}, tmp_path)
    assert out.returncode != 0 and "security.W018" in out.stdout + out.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("key", [None, "", "dev-only-insecure-key-change-me-0123456789"],
                         ids=["unset", "empty", "repository-key"])
def test_production_mode_refuses_to_start_without_a_secret_key(tmp_path, key):
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != "DJANGO_SECRET_KEY"}
    if key is not None:
        env["DJANGO_SECRET_KEY"] = key
    out = manage(["check"], env, tmp_path)
    assert out.returncode != 0
    assert "ImproperlyConfigured: Production mode (DJANGO_DEBUG=0) needs a secret key" in out.stderr


@pytest.mark.timeout(120)
def test_development_mode_still_starts_with_no_environment(tmp_path):
    out = manage(["check"], {}, tmp_path)
    assert out.returncode == 0 and "no issues" in out.stdout, out.stdout + out.stderr
    out = manage(["check"], {"DJANGO_DEBUG": "maybe"}, tmp_path)  # neither on nor off: an error, not a guess
    assert out.returncode != 0 and "DJANGO_DEBUG='maybe': use 1 or 0" in out.stderr


@pytest.mark.timeout(60)
def test_demo_logins_are_refused_outside_a_demo_database(db, settings, tmp_path):
    settings.DEBUG = False
    settings.VAR_DIR = tmp_path / "elsewhere"  # the database is not a SQLite file in the var directory
    for command, *args in (("demo_users",), ("demo", "--smoke", "--port", "9")):
        with pytest.raises(CommandError, match="Refusing to create the demo logins .* --i-know-this-is-a-demo"):
            call_command(command, *args, stdout=open(os.devnull, "w"))
    assert not User.objects.filter(username="admin").exists()
    call_command("demo_users", "--i-know-this-is-a-demo", stdout=open(os.devnull, "w"))
    assert User.objects.get(username="admin").is_superuser


def test_demo_logins_are_allowed_in_a_demo_database(db, settings):
    settings.DEBUG = True
    call_command("demo_users", stdout=open(os.devnull, "w"))
    assert User.objects.filter(username="admin").exists()
    if "sqlite" in connection.vendor:  # the test database is a SQLite file in the var directory
        settings.DEBUG = False
        call_command("demo_users", stdout=open(os.devnull, "w"))
