"""The expense follows its process when the framework ends it: cancelled by an operator, or failed.

The process's own code records every state it reaches (``set_state`` steps), but a cancellation or a failure
stops that code, so the expense would keep reading "Waiting for the manager". durable_django's signals
(sent after the commit, in the process that made the transition) update it instead.
"""

from __future__ import annotations

from typing import Any

from durable_django import signals

from .models import Expense

PROGRAM = "example_project.expenses.durable_programs.expense_approval"
#: Outcomes the process's code wrote itself; the framework's end never overwrites them.
FINAL = (Expense.State.PAID, Expense.State.REJECTED)


def _ended(state: str):
    def receiver(sender, instance_id: str, program: str = "", **kwargs: Any) -> None:
        pk = Expense.pk_of(instance_id)
        if program == PROGRAM and pk is not None:
            Expense.objects.filter(pk=pk).exclude(state__in=FINAL).update(state=state)

    receiver.__name__ = f"expense_{state}"
    return receiver


on_cancelled = _ended(Expense.State.CANCELLED)
on_failed = _ended(Expense.State.FAILED)


def connect() -> None:
    """Connect the receivers (idempotent). The specific signals are sent before ``instance_transition``,
    whose receiver pushes the live status: pages re-read the expense after it changed."""
    signals.instance_cancelled.connect(on_cancelled, dispatch_uid="expenses.cancelled", weak=False)
    signals.instance_failed.connect(on_failed, dispatch_uid="expenses.failed", weak=False)
