"""Pages of the expense example: submit, follow live, and (through durable_django's task pages) approve."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

import durable_django
from durable_django.humantasks.models import HumanTask
from durable_django.models import DurableInstance
from durable_django.views import answer_url, task_form, tasks_of

from .durable_programs import expense_approval
from .forms import ExpenseForm
from .models import Expense


def can_see(user, expense: Expense) -> bool:
    """The employee, approvers (managers, finance, director) and operators may follow an expense."""
    if user.pk == expense.employee_id or user.is_superuser or user.has_perm("durable_django.view_durableinstance"):
        return True
    return user.groups.filter(name__in=("managers", "finance")).exists() or user.has_perm("expenses.approve_escalated")


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """My expenses, the submit form, and how many tasks wait for me."""
    form = ExpenseForm()
    if request.method == "POST":
        form = ExpenseForm(request.POST)
        if form.is_valid():
            with transaction.atomic():
                expense = form.save(commit=False)
                expense.employee = request.user
                expense.save()
                durable_django.start(expense_approval, expense.pk, instance_id=expense.instance_id, link=expense)
            return redirect("expense", pk=expense.pk)
    context = {
        "form": form, "expenses": Expense.objects.filter(employee=request.user)[:50],
        "task_count": HumanTask.objects.for_user(request.user).count(),
        "others": Expense.objects.exclude(employee=request.user)[:50] if can_see_all(request.user) else [],
    }
    return render(request, "expenses/home.html", context)


def can_see_all(user) -> bool:
    return user.is_superuser or user.groups.filter(name__in=("managers", "finance")).exists() or user.has_perm(
        "expenses.approve_escalated")


@login_required
def expense_detail(request: HttpRequest, pk: int) -> HttpResponse:
    expense = get_object_or_404(Expense.objects.select_related("employee"), pk=pk)
    if not can_see(request.user, expense):
        raise PermissionDenied
    instance = DurableInstance.objects.defer("state", "arguments").filter(pk=expense.instance_id).first()
    if instance is not None:
        expense.state = expense.shown_state(instance.status)
    # Each open task of this user (a large expense has two at once: the manager's and finance's), with its form.
    mine = [{"task": t, "form": task_form(t), "url": answer_url(t)}
            for t in tasks_of(request.user, expense.instance_id)]
    return render(request, "expenses/detail.html", {
        "expense": expense, "instance": instance, "tasks": mine, "open_tasks": open_tasks(expense),
        "ws_path": f"/ws/expenses/{expense.pk}/",
        "timeline": timeline(instance) if instance else [],
        "payment": getattr(expense, "payment", None) if expense.state == Expense.State.PAID else None,
    })


def open_tasks(expense: Expense) -> list[str]:
    """Who the process waits for now, one line per open task (the manager and finance at once for a large
    expense), for everyone who may follow it. Display only: answering goes through the signed wait."""
    rows = (HumanTask.objects.filter(instance_id=expense.instance_id).select_related("assignee_group")
            .order_by("branch"))
    return [f"{t.title.split('. ', 1)[0] or t.event}: {describe(t)}" for t in rows]


def describe(task: HumanTask) -> str:
    parts = [f"group {task.assignee_group}" if task.assignee_group_id else "",
             "the director" if task.permission == "expenses.approve_escalated" else ""]
    return " or ".join(p for p in parts if p) or "anyone allowed"


def timeline(instance: DurableInstance) -> list[dict]:
    """The instance's history as the people involved read it: who acted is a user's name or "system" (a worker
    or the scheduler; operators see worker ids in the admin)."""
    rows = list(instance.history.order_by("id"))
    names = {u.get_username(): (u.get_full_name() or u.get_username()) for u in get_user_model()._default_manager
             .filter(**{f"{get_user_model().USERNAME_FIELD}__in": {h.actor for h in rows if h.actor}})}
    return [{"at": h.at, "what": h.get_kind_display(), "detail": h.detail, "who": names.get(h.actor, "system")}
            for h in rows]
