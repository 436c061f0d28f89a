"""The example business process (expense approval), its pages and its demo command."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

import durable_django as dd
from durable_django.humantasks.models import HumanTask
from durable_django.humantasks.sync import answer
from durable_django.models import DurableInstance, Status
from example_project.expenses.durable_programs import expense_approval
from example_project.expenses.models import Expense, Payment
from tests.django.conftest import ROOT

pytestmark = pytest.mark.django_db(transaction=True)
APPROVE = {"decision": "approve", "comment": "ok"}


@pytest.fixture
def roles(db):
    managers, finance = Group.objects.create(name="managers"), Group.objects.create(name="finance")
    alice = User.objects.create_user("alice", password="pw")
    bob = User.objects.create_user("bob", password="pw")
    bob.groups.add(managers)
    carol = User.objects.create_user("carol", password="pw")
    carol.groups.add(finance)
    dave = User.objects.create_user("dave", password="pw")
    dave.user_permissions.add(Permission.objects.get(codename="approve_escalated"))
    return {"alice": alice, "bob": bob, "carol": carol, "dave": User.objects.get(pk=dave.pk)}


def submit(employee, amount: str) -> Expense:
    expense = Expense.objects.create(employee=employee, amount=Decimal(amount), description="Hotel")
    dd.start(expense_approval, expense.pk, instance_id=expense.instance_id, link=expense)
    return expense


def state(expense: Expense) -> str:
    return Expense.objects.get(pk=expense.pk).state


def test_small_expense_needs_only_the_manager(inline, roles):
    e = submit(roles["alice"], "80")
    assert state(e) == Expense.State.AWAITING_MANAGER
    assert HumanTask.objects.for_user(roles["bob"]).get().instance_id == e.instance_id
    assert not HumanTask.objects.for_user(roles["carol"]).exists()
    with pytest.raises(PermissionDenied):
        answer(roles["alice"], e.instance_id, "manager_decision", APPROVE)  # no approving your own expense
    answer(roles["bob"], e.instance_id, "manager_decision", APPROVE)
    assert state(e) == Expense.State.PAID
    assert dd.result(e.instance_id)["paid"] == Payment.objects.get(expense=e).reference
    dd.run_instance(e.instance_id)  # a redelivered wake-up: nothing runs, nothing is paid twice
    assert Payment.objects.filter(expense=e).count() == 1


def test_rejection(inline, roles):
    e = submit(roles["alice"], "80")
    answer(roles["bob"], e.instance_id, "manager_decision", {"decision": "reject", "comment": "no receipt"})
    e.refresh_from_db()
    assert (e.state, e.comment) == (Expense.State.REJECTED, "no receipt")
    assert not Payment.objects.exists() and dd.result(e.instance_id) == "rejected"


def test_large_expense_needs_finance(inline, roles):
    e = submit(roles["alice"], "2500")
    answer(roles["bob"], e.instance_id, "manager_decision", APPROVE)
    assert state(e) == Expense.State.AWAITING_FINANCE
    task = HumanTask.objects.get(instance_id=e.instance_id)
    assert task.event == "finance_decision" and task.due_at is not None
    with pytest.raises(PermissionDenied):
        answer(roles["dave"], e.instance_id, "finance_decision", APPROVE)  # not escalated yet
    answer(roles["carol"], e.instance_id, "finance_decision", APPROVE)
    assert state(e) == Expense.State.PAID and Payment.objects.filter(expense=e).count() == 1


def test_escalation_when_finance_does_not_act(inline, roles, settings):
    settings.EXPENSES_ESCALATE_AFTER = 0  # the timer has expired as soon as the wait starts
    e = submit(roles["alice"], "1000")
    answer(roles["bob"], e.instance_id, "manager_decision", APPROVE)
    assert state(e) == Expense.State.ESCALATED
    assert "ESCALATED" in HumanTask.objects.for_user(roles["dave"]).get().title
    answer(roles["dave"], e.instance_id, "finance_decision", APPROVE)
    assert state(e) == Expense.State.PAID


def test_pages(inline, roles):
    alice, other = Client(), Client()
    alice.force_login(roles["alice"])
    other.force_login(roles["carol"])
    assert alice.post(reverse("home"), {"description": "Taxi", "amount": "-3"}).status_code == 200
    r = alice.post(reverse("home"), {"description": "Taxi", "amount": "12.30"})
    e = Expense.objects.get(description="Taxi")
    assert r.status_code == 302 and r["Location"] == reverse("expense", args=[e.pk])
    page = alice.get(r["Location"]).content.decode()
    assert "Waiting for the manager" in page and f'data-ws-path="/ws/expenses/{e.pk}/"' in page
    outsider = User.objects.create_user("mallory", password="pw")
    c = Client()
    c.force_login(outsider)
    assert c.get(reverse("expense", args=[e.pk])).status_code == 403
    bob = Client()
    bob.force_login(roles["bob"])
    page = bob.get(reverse("expense", args=[e.pk])).content.decode()
    assert 'id="send-decision"' in page and 'name="decision"' in page
    assert "1 task waits" in bob.get(reverse("home")).content.decode()
    assert Client().get(reverse("home")).status_code == 302  # anonymous: to the login page
    assert DurableInstance.objects.get(pk=e.instance_id).status == Status.PAUSED


def test_demo_users_command(db):
    # The flag: with DEBUG off (as in tests) the PostgreSQL run's database is no demo database (issue 10; the
    # refusal itself is tested in test_security_humantasks.py).
    call_command("demo_users", "--i-know-this-is-a-demo", stdout=open(os.devnull, "w"))
    c = Client()
    assert c.login(username="bob", password="bob-demo")
    assert User.objects.get(username="operator").has_perm("durable_django.edit_locals_durableinstance")
    call_command("demo_users", "--i-know-this-is-a-demo", stdout=open(os.devnull, "w"))  # idempotent
    assert User.objects.filter(username="alice").count() == 1


@pytest.mark.timeout(120)
@pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="the demo runs on the embedded defaults; "
                    "it is tested once, in the SQLite run")
def test_demo_command_starts_everything(tmp_path):
    """`manage.py demo --smoke`: migrations, users, web server and worker on the embedded defaults."""
    from tests.django.test_channels_live import free_port

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DURABLE_", "DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL"))}
    env.update(DJANGO_SETTINGS_MODULE="example_project.settings", DURABLE_VAR_DIR=str(tmp_path))
    port = free_port()
    out = subprocess.run([sys.executable, "manage.py", "demo", "--port", str(port), "--smoke"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Demo running at http://127.0.0.1:{port}/" in out.stdout
    assert "alice" in out.stdout and "bob-demo" in out.stdout
    assert (tmp_path / "db.sqlite3").exists()
