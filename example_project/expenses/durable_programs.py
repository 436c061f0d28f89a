"""Expense approval, written as the plain code a person would describe it in.

An employee submits an expense. A manager approves or rejects it. Amounts of
``FINANCE_THRESHOLD`` or more also need finance; if finance does not act in
time (``settings.EXPENSES_ESCALATE_AFTER`` seconds) the task is escalated to
the director, who may answer it alongside finance. Nobody approves their own
expense: every approval wait excludes the submitter (``exclude_user``), and a
manager's own expense goes to the director instead of the managers. The
payment is recorded by
a database step, which commits with the checkpoint after it: exactly once,
even if a worker dies in the middle.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from durable import EventTimeout, make_durable, wait_for_event
from durable_django import db_step
from durable_django.models import DurableEvent

from .models import Expense, Payment
from .progress import report

FINANCE_THRESHOLD = Decimal("1000")
DECISION_FORM = "example_project.expenses.forms.DecisionForm"
MANAGERS = "managers"
DIRECTOR = "expenses.approve_escalated"


@db_step
def load_expense(expense_id: int) -> dict:
    e = Expense.objects.select_related("employee").get(pk=expense_id)
    return {"amount": str(e.amount), "description": e.description, "employee": e.employee.get_username(),
            "by_manager": e.employee.groups.filter(name=MANAGERS).exists()}


@db_step
def set_state(expense_id: int, state: str, decision: dict | None = None, by: str = "", event: str = "") -> None:
    """Record the state; with a ``decision``, who made it: the user who answered the wait for ``event``, and
    their role (``by``; for a finance decision, finance or the director, whoever of them answered)."""
    fields = {"state": state}
    if decision is not None:
        user = answered_by(expense_id, event) if event else None
        if not by and user is not None:
            by = ("finance" if user.groups.filter(name="finance").exists()
                  else "director" if user.has_perm(DIRECTOR) and not user.is_superuser else "")
        fields.update(decided_by=by, decider=user.get_username() if user else "", comment=decision.get("comment", ""))
    Expense.objects.filter(pk=expense_id).update(**fields)


def answered_by(expense_id: int, event: str):
    """The user whose answer the wait for ``event`` just took.

    The wait takes the oldest event of that name left in the inbox (older ones that may not answer it are
    rejected, with their reason) and the checkpoint after it marks it consumed: the oldest unconsumed answer
    that was not rejected, or once marked, the last consumed one.
    """
    answers = DurableEvent.objects.filter(instance_id=f"expense-{expense_id}", name=event, rejected__isnull=True)
    publisher = (answers.filter(consumed_at__isnull=True).order_by("id").values_list("publisher_id", flat=True)
                 .first())
    if publisher is None:
        publisher = (answers.filter(consumed_at__isnull=False).order_by("-consumed_at", "-id")
                     .values_list("publisher_id", flat=True).first())
    return get_user_model()._default_manager.filter(pk=publisher).first() if publisher is not None else None


@db_step
def record_payment(expense_id: int) -> str:
    """The payment row and the state change commit together with the next checkpoint."""
    expense = Expense.objects.get(pk=expense_id)
    payment = Payment.objects.create(expense=expense, amount=expense.amount,
                                     reference=f"PAY-{timezone.now():%Y%m%d}-{uuid.uuid4().hex[:8]}")
    Expense.objects.filter(pk=expense_id).update(state=Expense.State.PAID)
    return payment.reference


def escalate_after() -> float:
    return float(getattr(settings, "EXPENSES_ESCALATE_AFTER", 3600))


@make_durable
async def expense_approval(expense_id: int):
    expense = await load_expense(expense_id)
    title = f"Expense #{expense_id}: {expense['description']} ({expense['amount']}) by {expense['employee']}"

    submitter = expense["employee"]
    await set_state(expense_id, Expense.State.AWAITING_MANAGER)
    if expense["by_manager"]:  # a manager's own expense: the director approves it, never a fellow manager's vote
        approver = "director"
        report("director")
        decision = await wait_for_event("manager_decision", permission=DIRECTOR, exclude_user=submitter,
                                        form=DECISION_FORM,
                                        title=f"Director approval (submitted by a manager). {title}")
    else:
        approver = "manager"
        report("manager")
        decision = await wait_for_event("manager_decision", group=MANAGERS, exclude_user=submitter,
                                        form=DECISION_FORM, title=f"Manager approval. {title}")
    if decision["decision"] != "approve":
        report("rejected")
        await set_state(expense_id, Expense.State.REJECTED, decision, by=approver, event="manager_decision")
        return "rejected"

    if Decimal(expense["amount"]) >= FINANCE_THRESHOLD:
        await set_state(expense_id, Expense.State.AWAITING_FINANCE, decision, by=approver, event="manager_decision")
        report("finance")
        try:
            decision = await wait_for_event("finance_decision", timeout=escalate_after(), group="finance",
                                            exclude_user=submitter, form=DECISION_FORM,
                                            title=f"Finance approval. {title}")
        except EventTimeout:
            report("escalated")
            await set_state(expense_id, Expense.State.ESCALATED)
            decision = await wait_for_event("finance_decision", group="finance", permission=DIRECTOR,
                                            exclude_user=submitter, form=DECISION_FORM,
                                            title=f"ESCALATED: finance approval overdue. {title}")
        # finance, or on escalation the director: set_state records whoever answered
        if decision["decision"] != "approve":
            report("rejected")
            await set_state(expense_id, Expense.State.REJECTED, decision, event="finance_decision")
            return "rejected"
        await set_state(expense_id, Expense.State.APPROVED, decision, event="finance_decision")
    else:
        await set_state(expense_id, Expense.State.APPROVED, decision, by=approver, event="manager_decision")

    report("paying")
    reference = await record_payment(expense_id)
    report("paid")
    return {"paid": reference}


# The weekly reminder schedule (reminders.py): imported here so that autodiscovery declares it.
from .reminders import weekly_expense_reminder  # noqa: E402,F401
