"""The example project's pages as a newcomer reads them (issue 12, "The demo, as a newcomer saw it").

Every check renders a real page with Django's test client (instances run inline, on the real database):
a cancelled or failed expense never reads "Waiting for the manager", the task pages lead back to the
expenses, the decision names who decided, actors are people or "system", the login hint names the operator
login, the status bar's tone follows the outcome, the admin lists are narrow, form errors are readable.
"""

from __future__ import annotations

import re
from decimal import Decimal
from html import unescape

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.contrib.staticfiles import finders
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

import durable_django as dd
from durable_django.forms import error_text
from durable_django.humantasks.sync import answer
from durable_django.models import DurableHistory, Status
from example_project.expenses.consumers import ExpenseStatusConsumer
from example_project.expenses.durable_programs import expense_approval
from example_project.expenses.forms import DecisionForm
from example_project.expenses.models import Expense, Payment

pytestmark = pytest.mark.django_db(transaction=True)
APPROVE, REJECT = {"decision": "approve", "comment": "ok"}, {"decision": "reject", "comment": "no receipt"}
WAITING = "Waiting for the manager"


@pytest.fixture
def roles(db):
    managers, finance = Group.objects.create(name="managers"), Group.objects.create(name="finance")
    users = {name: User.objects.create_user(name, password="pw") for name in ("alice", "bob", "carol", "dave")}
    users["bob"].groups.add(managers)
    users["carol"].groups.add(finance)
    users["dave"].user_permissions.add(Permission.objects.get(codename="approve_escalated"))
    return {k: User.objects.get(pk=u.pk) for k, u in users.items()}


def submit(employee, amount: str = "80", description: str = "Hotel") -> Expense:
    expense = Expense.objects.create(employee=employee, amount=Decimal(amount), description=description)
    dd.start(expense_approval, expense.pk, instance_id=expense.instance_id, link=expense)
    return expense


def client(user) -> Client:
    c = Client()
    c.force_login(user)
    return c


def page(user, url: str) -> str:
    r = client(user).get(url)
    assert r.status_code == 200, r.status_code
    return r.content.decode()


def element(html: str, element_id: str) -> str:
    """The opening tag and text of the element with this id (enough for these pages' flat markup)."""
    m = re.search(rf'<(\w+)[^>]*\bid="{element_id}"[^>]*>(.*?)</\1>', html, re.S)
    assert m, f"no #{element_id} on the page"
    return m.group(0)


def text(html: str) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html))).strip()


def live(expense: Expense) -> dict:
    """What the expense page's websocket sends for it (the status line's live values)."""
    consumer = ExpenseStatusConsumer()
    consumer.scope = {"url_route": {"kwargs": {"pk": expense.pk}}}
    return consumer.read(expense.instance_id)


# -- a cancelled or failed expense ---------------------------------------------------------------------------
def test_a_cancelled_expense_reads_cancelled_on_the_list_the_page_and_the_status_line(inline, roles):
    e = submit(roles["alice"])
    assert WAITING in page(roles["alice"], reverse("home"))
    dd.cancel(e.instance_id, "submitted twice", actor="bob")
    assert Expense.objects.get(pk=e.pk).state == Expense.State.CANCELLED  # written by the signal receiver

    home = page(roles["alice"], reverse("home"))
    assert WAITING not in home and "Cancelled" in text(element(home, "my-expenses"))
    detail = page(roles["alice"], reverse("expense", args=[e.pk]))
    assert WAITING not in detail
    assert text(element(detail, "expense-state")) == "Cancelled"
    assert text(element(detail, "waiting-for")) == "-"  # a finished instance waits for nothing
    assert 'data-tone="neutral"' in element(detail, "live-status") and 'data-status="cancelled"' in detail
    status = live(e)
    assert (status["expense_state"], status["status"], status["waiting_for"], status["tone"]) == (
        "Cancelled", "cancelled", "", "neutral")


def test_the_status_line_does_not_wait_for_the_receivers(inline, roles):
    """Between the cancel's commit and its signal the row still says "waiting": the pages already do not."""
    e = submit(roles["alice"])
    dd.cancel(e.instance_id)
    Expense.objects.filter(pk=e.pk).update(state=Expense.State.AWAITING_MANAGER)  # as before the receiver ran
    assert live(e)["expense_state"] == "Cancelled"
    assert text(element(page(roles["alice"], reverse("expense", args=[e.pk])), "expense-state")) == "Cancelled"


def test_a_failed_process_stops_the_expense(inline, roles):
    e = submit(roles["alice"])
    Payment.objects.create(expense=e, amount=e.amount, reference="PAY-EXISTING")  # the payment step will fail
    answer(roles["bob"], e.instance_id, "manager_decision", APPROVE)
    assert dd.get_instance(e.instance_id).status == Status.FAILED
    e.refresh_from_db()
    assert e.state == Expense.State.FAILED
    detail = page(roles["alice"], reverse("expense", args=[e.pk]))
    assert text(element(detail, "expense-state")) == "Stopped by an error"
    assert 'data-tone="negative"' in element(detail, "live-status")
    assert "Approved, being paid" not in text(element(page(roles["alice"], reverse("home")), "my-expenses"))


# -- navigation ------------------------------------------------------------------------------------------------
def test_my_tasks_links_back_to_the_expenses(inline, roles):
    submit(roles["alice"])
    tasks = page(roles["bob"], reverse("durable:tasks"))
    assert 'href="/"' in element(tasks, "nav-home") and "My expenses" in element(tasks, "nav-home")
    assert 'aria-current="page"' in element(tasks, "nav-tasks")
    assert "Manager approval" in tasks
    answer_page = page(roles["bob"], reverse("durable:task-answer", args=[f"expense-{Expense.objects.get().pk}"]))
    assert "My expenses" in element(answer_page, "nav-home")


# -- who decided -----------------------------------------------------------------------------------------------
def decision(user, expense: Expense) -> str:
    return text(element(page(user, reverse("expense", args=[expense.pk])), "decision-text"))


def test_the_decision_names_the_director_who_decided_after_escalation(inline, roles, settings):
    settings.EXPENSES_ESCALATE_AFTER = 0  # finance's time is up at once: the director is asked too
    e = submit(roles["alice"], "1500")
    answer(roles["bob"], e.instance_id, "manager_decision", APPROVE)
    assert decision(roles["alice"], e) == "Last decision: Approved by bob (the manager): “ok”"
    answer(roles["dave"], e.instance_id, "finance_decision", {"decision": "approve", "comment": "fine by me"})
    e.refresh_from_db()
    assert (e.state, e.decided_by, e.decider) == (Expense.State.PAID, "director", "dave")
    assert decision(roles["alice"], e) == "Last decision: Approved by dave (the director): “fine by me”"


def test_the_decision_names_finance_and_a_rejecting_manager(inline, roles):
    big = submit(roles["alice"], "2500")
    answer(roles["bob"], big.instance_id, "manager_decision", APPROVE)
    answer(roles["carol"], big.instance_id, "finance_decision", APPROVE)
    assert decision(roles["alice"], big) == "Last decision: Approved by carol (finance): “ok”"
    small = submit(roles["alice"], "20")
    answer(roles["bob"], small.instance_id, "manager_decision", REJECT)
    assert decision(roles["alice"], small) == "Last decision: Rejected by bob (the manager): “no receipt”"


# -- actors ----------------------------------------------------------------------------------------------------
def test_the_timeline_shows_people_or_system_never_worker_ids(inline, roles):
    e = submit(roles["alice"])
    answer(roles["bob"], e.instance_id, "manager_decision", APPROVE)
    workers = set(DurableHistory.objects.filter(instance_id=e.instance_id, kind="completed")
                  .values_list("actor", flat=True))
    assert workers and all(":" in w for w in workers)  # what the history records: the worker's id
    timeline = element(page(roles["alice"], reverse("expense", args=[e.pk])), "timeline")
    who = [text(cell) for cell in re.findall(r'<td class="who">(.*?)</td>', timeline)]
    assert set(who) == {"system", "bob"} and who.count("bob") == 1
    assert not any(w in timeline for w in workers)


def test_a_user_with_a_full_name_is_shown_by_it(inline, roles):
    roles["bob"].first_name, roles["bob"].last_name = "Bob", "Martin"
    roles["bob"].save()
    e = submit(roles["alice"])
    answer(roles["bob"], e.instance_id, "manager_decision", REJECT)
    assert "Bob Martin" in element(page(roles["alice"], reverse("expense", args=[e.pk])), "timeline")


# -- login hint ------------------------------------------------------------------------------------------------
def test_the_login_hint_names_each_role_by_its_login():
    hint = text(element(Client().get(reverse("login")).content.decode(), "demo-logins"))
    assert "operator operator (the durable instances admin)" in hint and "superuser admin" in hint
    assert "operator admin" not in hint


# -- outcome colour --------------------------------------------------------------------------------------------
def test_the_status_bar_tone_follows_the_outcome_not_the_process_status(inline, roles):
    paid, rejected, open_ = submit(roles["alice"]), submit(roles["alice"]), submit(roles["alice"])
    answer(roles["bob"], paid.instance_id, "manager_decision", APPROVE)
    answer(roles["bob"], rejected.instance_id, "manager_decision", REJECT)
    tones = {}
    for name, e in (("paid", paid), ("rejected", rejected), ("open", open_)):
        bar = element(page(roles["alice"], reverse("expense", args=[e.pk])), "live-status")
        tones[name] = (re.search(r'data-status="(\w*)"', bar)[1], re.search(r'data-tone="(\w*)"', bar)[1])
    # both processes completed; the expense's outcome differs, and so does the colour
    assert tones == {"paid": ("completed", "positive"), "rejected": ("completed", "negative"),
                     "open": ("paused", "")}
    assert live(rejected)["tone"] == "negative" and live(paid)["tone"] == "positive"
    css = open(finders.find("durable_django/pages.css")).read()
    for tone, colour in (("positive", "--good"), ("negative", "--bad"), ("neutral", "--off")):
        assert re.search(rf'\[data-tone="{tone}"\] {{ border-left-color: var\({colour}\); }}', css)
    home = page(roles["alice"], reverse("home"))
    assert '<span class="badge" data-tone="negative">Rejected</span>' in home
    assert '<span class="badge" data-tone="positive">Paid</span>' in home


def test_the_pages_use_the_stylesheet_and_no_inline_styles_in_the_base(roles):
    html = page(roles["alice"], reverse("home"))
    assert '<link rel="stylesheet" href="/static/durable_django/pages.css">' in html and "<style>" not in html
    assert 'name="viewport"' in html


# -- admin lists -----------------------------------------------------------------------------------------------
def test_the_admin_lists_have_few_columns(inline, roles):
    e = submit(roles["alice"])
    dd.publish_event(e.instance_id, "reminder", idempotency_key="k" * 200)  # an event row, with a long key
    root = client(User.objects.create_superuser("root", password="pw"))
    for url, most in ((reverse("admin:durable_django_durableinstance_changelist"), 5),
                      (reverse("admin:durable_humantasks_humantask_changelist"), 5),
                      (reverse("admin:durable_django_durablehistory_changelist"), 5),
                      (reverse("admin:durable_django_durableevent_changelist"), 4)):
        html = root.get(url).content.decode()
        head = re.search(r"<thead>(.*?)</thead>", html, re.S)[1]
        columns = [c for c in re.findall(r'<th scope="col"\s+class="([^"]*)"', head) if "action-checkbox" not in c]
        assert 0 < len(columns) <= most, columns
    listing = text(root.get(reverse("admin:durable_humantasks_humantask_changelist")).content.decode())
    assert "group managers" in listing and e.instance_id in listing


# -- form errors -----------------------------------------------------------------------------------------------
def test_form_errors_are_sentences_without_codes(inline, roles):
    e = submit(roles["alice"])
    r = client(roles["bob"]).post(reverse("durable:task-answer", args=[e.instance_id]),
                                  {"decision": "maybe", "next": "/"})
    body = text(r.content.decode())
    assert r.status_code == 400 and "Select a valid choice. maybe is not one of the available choices." in body
    assert "invalid_choice" not in body
    form = DecisionForm(data={"decision": "maybe", "comment": "x" * 600})
    assert not form.is_valid()
    line = error_text(ValidationError(form.errors.as_data()), form)
    assert line.startswith("Decision: Select a valid choice.") and "; Comment: Ensure this value" in line
    assert "invalid_choice" not in line and "max_length" not in line
    r = client(User.objects.create_superuser("root", password="pw")).post(
        reverse("durable:publish", args=[e.instance_id]), {"event": "", "payload": "{bad"})
    assert r.status_code == 400
    message = r.json()["error"]
    assert isinstance(message, str) and message.startswith("event: This field is required.; payload: Not valid JSON")


# -- a large expense: the manager and finance at once -------------------------------------------------------------
def open_lines(html: str) -> list[str]:
    return [text(li) for li in re.findall(r'<li class="open-task">(.*?)</li>', html, re.S)]


def test_a_large_expense_shows_two_tasks_and_one_approval_leaves_the_other(inline, roles):
    e = submit(roles["alice"], "2500")
    detail = reverse("expense", args=[e.pk])
    alice_page = page(roles["alice"], detail)
    assert text(element(alice_page, "expense-state")) == "Waiting for the manager and finance"
    assert open_lines(alice_page) == ["Manager approval: group managers", "Finance approval: group finance"]
    assert "send-decision" not in alice_page  # the submitter answers neither
    # each approver sees their own task (one form), everybody sees both open tasks
    bob_page = page(roles["bob"], detail)
    assert bob_page.count('class="send-decision"') == 1 and 'data-event="manager_decision"' in bob_page
    root = User.objects.create_superuser("root", password="pw")
    both = page(root, detail)
    assert both.count('class="send-decision"') == 2 and "2 tasks wait" in page(root, reverse("home"))
    assert text(page(roles["carol"], reverse("durable:tasks"))).count("Finance approval") == 1
    # bob approves on the expense page (its form posts to his task): the process still waits for finance
    form = re.search(r'<form method="post" action="([^"]+)"', element(bob_page, "decision-0-0"))[1]
    r = client(roles["bob"]).post(unescape(form), {**APPROVE, "event": "manager_decision", "next": detail})
    assert r.status_code == 302 and r["Location"] == detail
    after = page(roles["alice"], detail)
    assert text(element(after, "expense-state")) == "Waiting for finance"
    assert open_lines(after) == ["Finance approval: group finance"]
    assert "send-decision" not in page(roles["bob"], detail)
    assert page(roles["carol"], detail).count('class="send-decision"') == 1
    answer(roles["carol"], e.instance_id, "finance_decision", APPROVE)
    assert Expense.objects.get(pk=e.pk).state == Expense.State.PAID


def test_a_rejection_on_a_large_expense_closes_the_other_task(inline, roles):
    e = submit(roles["alice"], "2500")
    detail = reverse("expense", args=[e.pk])
    assert "Finance approval" in page(roles["carol"], reverse("durable:tasks"))
    answer(roles["bob"], e.instance_id, "manager_decision", REJECT)
    carol_page = page(roles["carol"], detail)
    assert "send-decision" not in carol_page and open_lines(carol_page) == []
    assert text(element(carol_page, "expense-state")) == "Rejected"
    assert decision(roles["alice"], e) == "Last decision: Rejected by bob (the manager): “no receipt”"
    assert "Nothing waits for you" in page(roles["carol"], reverse("durable:tasks"))
