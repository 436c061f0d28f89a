"""A weekly reminder of the expenses waiting for a decision: a durable program started by a schedule.

Declared here with ``@durable_django.schedule`` (imported by durable_programs.py, so autodiscovery finds it)
and written to the ``DurableSchedule`` table after ``migrate``; the admin's "Durable schedules" page shows its
next run and can pause it. Every Monday at 09:00 Paris time, one instance per week
(``expenses-weekly-reminder@<tick>``), even with several schedulers running (docs/schedules.md).
"""

from __future__ import annotations

import logging

from durable import make_durable
from durable_django import db_step, schedule

from .models import Expense

log = logging.getLogger("durable_django")

#: The states in which an expense waits for a person's decision.
WAITING = (Expense.State.AWAITING_MANAGER, Expense.State.AWAITING_FINANCE, Expense.State.ESCALATED)


@db_step
def expenses_waiting() -> dict:
    """How many expenses wait for a decision, by state, and the oldest one's number."""
    waiting = Expense.objects.filter(state__in=WAITING)
    by_state = {str(state): waiting.filter(state=state).count() for state in WAITING}
    oldest = waiting.order_by("created_at").values_list("pk", flat=True).first()
    return {"count": sum(by_state.values()), "by_state": by_state, "oldest": oldest}


@db_step
def remind(summary: dict) -> None:
    """The reminder itself: a log line here; a real project would e-mail the managers and finance."""
    log.info("weekly reminder: %d expense(s) wait for a decision (%s); the oldest is #%s",
             summary["count"], ", ".join(f"{k}: {v}" for k, v in summary["by_state"].items()), summary["oldest"])


@schedule("0 9 * * MON", tz="Europe/Paris", name="expenses-weekly-reminder")
@make_durable
async def weekly_expense_reminder() -> dict:
    summary = await expenses_waiting()
    if summary["count"]:
        await remind(summary)
    return summary
