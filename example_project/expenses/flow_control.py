"""Flow control of the expense process (docs/flow-control.md).

At most 10 expense approvals run at once, and one at a time per employee (their steps write the employee's
expenses). The waits for a manager or for finance hold no slot (``hold="running"``, the default). Imported by
the app's ``ready()``, in every process (web and workers); ``DURABLE["LIMITS"]`` can override it without a deploy.
"""

from __future__ import annotations

from durable_django import limit

from .durable_programs import expense_approval


def employee_of(expense_id: int) -> str:
    """The per-key limit's key: the expense's employee (read once, when the process starts)."""
    from .models import Expense

    return str(Expense.objects.filter(pk=expense_id).values_list("employee_id", flat=True).first())


limit(expense_approval, concurrency=10, key=employee_of, per_key=1)
