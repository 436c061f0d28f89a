"""Tests of the expense approval process, written as a user of durable_django writes theirs.

No Celery, no worker, no waiting: :class:`DurableTestMixin` runs each instance
inline up to its next pause, and ``self.durable.advance(...)`` moves a fake
clock so that the escalation timer fires at once. Run them with
``pytest example_project`` or ``python manage.py test example_project.expenses``.
The last test shows the same with the ``durable_env`` pytest fixture.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from django.test import TestCase

from durable_django.exceptions import InstanceFinished
from durable_django.humantasks.models import HumanTask
from durable_django.humantasks.sync import answer
from durable_django.models import Status
from durable_django.testing import DurableTestMixin

from .durable_programs import expense_approval
from .models import Expense, Payment

APPROVE = {"decision": "approve", "comment": "ok"}
REJECT = {"decision": "reject", "comment": "no receipt"}


def make_roles() -> dict[str, User]:
    """An employee, a manager, a finance clerk and the director (who may approve escalated expenses)."""
    managers, finance = Group.objects.create(name="managers"), Group.objects.create(name="finance")
    users = {name: User.objects.create_user(name, password="pw") for name in ("alice", "bob", "carol", "dave")}
    users["bob"].groups.add(managers)
    users["carol"].groups.add(finance)
    users["dave"].user_permissions.add(Permission.objects.get(codename="approve_escalated"))
    return users


class ExpenseApprovalTests(DurableTestMixin, TestCase):
    @classmethod
    def setUpTestData(cls) -> None:
        cls.users = make_roles()

    def submit(self, amount: str) -> Expense:
        expense = Expense.objects.create(employee=self.users["alice"], amount=Decimal(amount), description="Hotel")
        self.durable.start(expense_approval, expense.pk, instance_id=expense.instance_id, link=expense)
        expense.refresh_from_db()
        return expense

    def decide(self, expense: Expense, event: str, who: str, decision: dict) -> Expense:
        """An approver answers the task (the event is published as that user), and the process goes on."""
        self.durable.publish(expense.instance_id, event, decision, actor=self.users[who])
        expense.refresh_from_db()
        return expense

    def test_approve_small_expense(self) -> None:
        expense = self.submit("80")
        self.assertEqual(expense.state, Expense.State.AWAITING_MANAGER)
        self.durable.assert_waiting(expense.instance_id, "manager_decision")

        expense = self.decide(expense, "manager_decision", "bob", APPROVE)

        self.assertEqual(expense.state, Expense.State.PAID)
        payment = Payment.objects.get(expense=expense)
        self.assertEqual(self.durable.assert_completed(expense.instance_id), {"paid": payment.reference})
        self.durable.assert_history(expense.instance_id, [
            "started", ("paused", "event 'manager_decision'"), ("event_published", "manager_decision"),
            "resumed", "completed",
        ])

    def test_reject(self) -> None:
        expense = self.submit("80")
        expense = self.decide(expense, "manager_decision", "bob", REJECT)
        self.assertEqual((expense.state, expense.comment), (Expense.State.REJECTED, "no receipt"))
        self.durable.assert_completed(expense.instance_id, "rejected")
        self.assertFalse(Payment.objects.exists())

    def test_an_answer_from_someone_else_is_refused(self) -> None:
        expense = self.submit("80")
        expense = self.decide(expense, "manager_decision", "alice", APPROVE)  # nobody approves their own expense
        self.durable.assert_waiting(expense.instance_id, "manager_decision")
        self.assertEqual(self.durable.history(expense.instance_id)[-1].kind, "event_rejected")

    def open_tasks(self, expense: Expense) -> dict[str, str]:
        """The open human tasks of the expense: event -> title (one per waiting branch)."""
        return dict(HumanTask.objects.filter(instance_id=expense.instance_id).values_list("event", "title"))

    def test_a_large_expense_asks_the_manager_and_finance_at_once(self) -> None:
        expense = self.submit("2500")
        self.assertEqual(expense.state, Expense.State.AWAITING_APPROVALS)
        self.assertEqual(set(self.open_tasks(expense)), {"manager_decision", "finance_decision"})

        expense = self.decide(expense, "finance_decision", "carol", APPROVE)  # finance first: the manager is left
        self.assertEqual(expense.state, Expense.State.AWAITING_MANAGER)
        self.assertEqual(set(self.open_tasks(expense)), {"manager_decision"})
        expense = self.decide(expense, "manager_decision", "bob", APPROVE)
        self.assertEqual(expense.state, Expense.State.PAID)

    def test_a_rejection_closes_the_other_task(self) -> None:
        expense = self.submit("2500")
        expense = self.decide(expense, "manager_decision", "bob", REJECT)
        self.assertEqual((expense.state, expense.decided_by), (Expense.State.REJECTED, "manager"))
        self.assertEqual(self.open_tasks(expense), {})  # finance's branch was cancelled: its task closed
        self.durable.assert_completed(expense.instance_id, "rejected")

    def test_escalation_after_the_timer_without_waiting(self) -> None:
        expense = self.submit("2500")
        expense = self.decide(expense, "manager_decision", "bob", APPROVE)
        self.assertEqual(expense.state, Expense.State.AWAITING_FINANCE)

        self.durable.advance(settings.EXPENSES_ESCALATE_AFTER - 1)  # finance still has a second
        self.assertEqual(Expense.objects.get(pk=expense.pk).state, Expense.State.AWAITING_FINANCE)
        self.durable.advance(1)  # the deadline (counted from the submission): the director is asked too

        expense.refresh_from_db()
        self.assertEqual(expense.state, Expense.State.ESCALATED)
        self.durable.assert_status(expense.instance_id, Status.PAUSED)
        self.assertIn("ESCALATED", self.open_tasks(expense)["finance_decision"])

        expense = self.decide(expense, "finance_decision", "dave", APPROVE)
        self.assertEqual(expense.state, Expense.State.PAID)
        self.assertEqual(Payment.objects.filter(expense=expense).count(), 1)

    def test_finance_in_time_means_no_escalation(self) -> None:
        expense = self.submit("2500")
        expense = self.decide(expense, "manager_decision", "bob", APPROVE)
        expense = self.decide(expense, "finance_decision", "carol", APPROVE)
        self.assertEqual(expense.state, Expense.State.PAID)
        self.durable.advance(settings.EXPENSES_ESCALATE_AFTER * 2)  # the old deadline passes: nothing happens
        self.assertEqual(Expense.objects.get(pk=expense.pk).state, Expense.State.PAID)

    def test_cancel(self) -> None:
        expense = self.submit("80")
        self.durable.cancel(expense.instance_id, "submitted twice")
        self.durable.assert_status(expense.instance_id, Status.CANCELLED)
        with self.assertRaises(InstanceFinished):
            self.durable.publish(expense.instance_id, "manager_decision", APPROVE, actor=self.users["bob"])
        self.assertFalse(Payment.objects.exists())
        self.assertEqual(self.durable.history(expense.instance_id)[-1], ("cancelled", "submitted twice"))


@pytest.mark.django_db
def test_approval_through_the_task_api_with_the_pytest_fixture(durable_env) -> None:
    """The ``durable_env`` fixture (installed with the package); ``answer()`` is what the task page calls."""
    users = make_roles()
    expense = Expense.objects.create(employee=users["alice"], amount=Decimal("80"), description="Taxi")
    durable_env.start(expense_approval, expense.pk, instance_id=expense.instance_id, link=expense)
    with durable_env.eagerly():  # answer() publishes; the instance runs when the block ends
        answer(users["bob"], expense.instance_id, "manager_decision", APPROVE)
    assert Expense.objects.get(pk=expense.pk).state == Expense.State.PAID
    assert durable_env.assert_completed(expense.instance_id) == {"paid": Payment.objects.get().reference}
    kinds = [t.kind for t in durable_env.transitions if t.instance_id == expense.instance_id]
    assert kinds[0] == "started" and kinds[-1] == "completed"  # the signals a receiver of yours would get
