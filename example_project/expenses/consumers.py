"""Live status of one expense for the people allowed to follow it (not only operators)."""

from __future__ import annotations

from durable_django.consumers import InstanceStatusConsumer
from durable_django.live import read_status

from .models import Expense


class ExpenseStatusConsumer(InstanceStatusConsumer):
    """``ws/expenses/<pk>/``: the approval instance of one expense, plus the expense's own state."""

    def get_instance_id(self) -> str:
        return f"expense-{self.scope['url_route']['kwargs']['pk']}"

    def has_permission(self, user) -> bool:
        from .views import can_see

        expense = Expense.objects.filter(pk=self.scope["url_route"]["kwargs"]["pk"]).first()
        return expense is not None and can_see(user, expense)

    def read(self, instance_id: str):
        data = read_status(instance_id)
        if data is not None:
            expense = Expense.objects.filter(pk=self.scope["url_route"]["kwargs"]["pk"]).only("state").first()
            if expense is not None:  # the receivers may not have run yet: never show a stale wait
                expense.state = expense.shown_state(data["status"])
            data["expense_state"] = expense.get_state_display() if expense else None
            data["tone"] = expense.tone if expense else ""
        return data
