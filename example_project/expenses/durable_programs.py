"""Expense approval, written as the plain code a person would describe it in.

An employee submits an expense. A manager approves or rejects it. Amounts of
``FINANCE_THRESHOLD`` or more need the manager AND finance, asked at the same
time (``durable.gather``: two tasks open at once); the first rejection
cancels the other approval, whose task closes. If finance does not act in
time (``settings.EXPENSES_ESCALATE_AFTER`` seconds) its task is escalated to
the director, who may answer it alongside finance. Nobody approves their own
expense: every approval wait excludes the submitter (``exclude_user``), and a
manager's own expense goes to the director instead of the managers. The
payment is recorded by a database step, which commits with the checkpoint
after it: exactly once, even if a worker dies in the middle.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone

import durable
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
    """Record the state; with a ``decision``, who made it (see :func:`record`)."""
    record(expense_id, state, decision, by, event)


def record(expense_id: int, state: str, decision: dict | None = None, by: str = "", event: str = "") -> None:
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


class Rejected(Exception):
    """An approver said no: raised in its branch, so the gather cancels the other approval (its task closes)."""

    def __init__(self, role: str, event: str, decision: dict) -> None:
        super().__init__(role, event, decision)
        self.role, self.event, self.decision = role, event, decision

    def __str__(self) -> str:
        return f"rejected by {self.role}"


@db_step
def record_approval(expense_id: int, side: str, decision: dict, by: str, event: str) -> None:
    """One of the two parallel approvals (``side``: "manager" or "finance") said yes: record who, and what the
    expense still waits for. The steps of parallel branches run one at a time, so neither overwrites the other."""
    current = Expense.objects.values_list("state", flat=True).get(pk=expense_id)
    only_me, only_other = ((Expense.State.AWAITING_MANAGER, Expense.State.AWAITING_FINANCE) if side == "manager"
                           else (Expense.State.AWAITING_FINANCE, Expense.State.AWAITING_MANAGER))
    if current == only_me:  # the other side approved first: both have
        state = Expense.State.APPROVED
    elif side == "manager" and current == Expense.State.ESCALATED:  # finance is still late
        state = current
    else:
        state = only_other
    record(expense_id, state, decision, by, event)


async def manager_approval(expense_id: int, expense: dict, title: str, parallel: bool = False) -> tuple[str, dict]:
    """The manager's decision, or the director's on a manager's own expense (never a fellow manager's vote).
    Returns (role, decision); a rejection raises :class:`Rejected`."""
    submitter = expense["employee"]
    if expense["by_manager"]:
        role = "director"
        decision = await wait_for_event("manager_decision", permission=DIRECTOR, exclude_user=submitter,
                                        form=DECISION_FORM,
                                        title=f"Director approval (submitted by a manager). {title}")
    else:
        role = "manager"
        decision = await wait_for_event("manager_decision", group=MANAGERS, exclude_user=submitter,
                                        form=DECISION_FORM, title=f"Manager approval. {title}")
    if decision["decision"] != "approve":
        raise Rejected(role, "manager_decision", decision)
    if parallel:
        await record_approval(expense_id, "manager", decision, role, "manager_decision")
        report("finance_left")
    return role, decision


async def finance_approval(expense_id: int, expense: dict, title: str) -> tuple[str, dict]:
    """Finance's decision; if finance does not act in time, the director may answer it too (escalation)."""
    submitter = expense["employee"]
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
    if decision["decision"] != "approve":
        raise Rejected("", "finance_decision", decision)  # finance, or the director: set_state records who
    await record_approval(expense_id, "finance", decision, "", "finance_decision")
    report("manager_left")
    return "", decision


@make_durable
async def expense_approval(expense_id: int):
    expense = await load_expense(expense_id)
    title = f"Expense #{expense_id}: {expense['description']} ({expense['amount']}) by {expense['employee']}"
    try:
        if Decimal(expense["amount"]) >= FINANCE_THRESHOLD:
            # the manager and finance at once: both must approve; the first "no" cancels the other's task
            await set_state(expense_id, Expense.State.AWAITING_APPROVALS)
            report("both")
            await durable.gather(manager_approval(expense_id, expense, title, parallel=True),
                                 finance_approval(expense_id, expense, title))
            await set_state(expense_id, Expense.State.APPROVED)
        else:
            await set_state(expense_id, Expense.State.AWAITING_MANAGER)
            report("director" if expense["by_manager"] else "manager")
            role, decision = await manager_approval(expense_id, expense, title)
            await set_state(expense_id, Expense.State.APPROVED, decision, by=role, event="manager_decision")
    except Rejected as no:
        report("rejected")
        await set_state(expense_id, Expense.State.REJECTED, no.decision, by=no.role, event=no.event)
        return "rejected"

    report("paying")
    reference = await record_payment(expense_id)
    report("paid")
    return {"paid": reference}


# The weekly reminder schedule (reminders.py): imported here so that autodiscovery declares it.
from .reminders import weekly_expense_reminder  # noqa: E402,F401
