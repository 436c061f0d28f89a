"""End to end in headless Chromium: the employee submits, the manager approves in a second session,
and the employee's page shows the status change live, without a reload.

Real parts: daphne (ASGI, websockets) and a Celery worker as subprocesses on the
test database, the example project's pages, two independent browser sessions.
Skipped only when Chromium or chromedriver is not installed, and never in CI (``CI`` set, as ``.ci/run``
runs): there a missing browser fails the test instead of hiding it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, User

import durable_django as dd
from durable_django.humantasks.sync import answer
from example_project.expenses.durable_programs import expense_approval
from example_project.expenses.models import Expense, Payment
from tests.django.test_channels_live import asgi_server  # noqa: F401  (fixture)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = os.environ.get("DURABLE_SCREENSHOTS")  # a directory to keep screenshots in, if set


@pytest.fixture
def browser_factory(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail("CI expects headless Chromium and chromedriver (.ci/run installs them with apt-get); "
                        "neither may be missing there")
        pytest.skip("headless Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    drivers = []

    def start():
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                    "--window-size=1200,900", f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"):
            opts.add_argument(arg)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        driver.set_page_load_timeout(30)
        drivers.append(driver)
        return driver

    yield start
    for d in drivers:
        d.quit()


def shot(driver, name: str) -> None:
    if SCREENSHOTS:
        os.makedirs(SCREENSHOTS, exist_ok=True)
        driver.save_screenshot(os.path.join(SCREENSHOTS, f"{name}.png"))


def login(driver, base: str, username: str, password: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base}/accounts/login/")
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.ID, "login").click()
    # Wait for the redirect after login: a get() issued before it lands can be overtaken by it.
    WebDriverWait(driver, 20, 0.1).until(lambda d: "/accounts/login/" not in d.current_url,
                                         message=f"{username}'s login to complete")


def test_submit_approve_and_watch_live(asgi_server, worker_factory, browser_factory):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    User.objects.create_user("alice", password="alice-pw")
    bob = User.objects.create_user("bob", password="bob-pw")
    bob.groups.add(Group.objects.create(name="managers"))
    worker_factory()
    base = asgi_server.url

    alice = browser_factory()
    login(alice, base, "alice", "alice-pw")
    alice.find_element(By.NAME, "description").send_keys("Train to Lyon")
    alice.find_element(By.NAME, "amount").send_keys("84.50")
    alice.find_element(By.ID, "submit-expense").click()
    state = lambda d: d.find_element(By.ID, "expense-state").text  # noqa: E731
    WebDriverWait(alice, 60, 0.2).until(lambda d: state(d) == "Waiting for the manager",
                                        message="the page to show the manager's wait live")
    assert WebDriverWait(alice, 30).until(lambda d: d.find_element(By.ID, "live-status")
                                          .get_attribute("data-connection") == "open")
    alice.execute_script("window.__not_reloaded = true")
    shot(alice, "1-alice-waiting")

    manager = browser_factory()
    login(manager, base, "bob", "bob-pw")
    manager.get(f"{base}/durable/tasks/")
    # the task itself (the home page also names the expense, under "Expenses of others")
    WebDriverWait(manager, 30).until(lambda d: any("Train to Lyon" in t.text
                                                   for t in d.find_elements(By.CSS_SELECTOR, ".task")))
    shot(manager, "2-bob-tasks")
    manager.find_element(By.CSS_SELECTOR, "input[name=decision][value=approve]").click()
    manager.find_element(By.NAME, "comment").send_keys("Fine")
    manager.find_element(By.CSS_SELECTOR, ".task button[type=submit]").click()
    WebDriverWait(manager, 30).until(lambda d: "Answered" in d.page_source)

    WebDriverWait(alice, 60, 0.2).until(lambda d: state(d) == "Paid", message="the page to show Paid live")
    assert alice.execute_script("return window.__not_reloaded") is True  # same page: it was pushed, not reloaded
    # "Paid" is written by the payment step; the process completes at the next checkpoint, pushed live too
    WebDriverWait(alice, 30, 0.2).until(lambda d: d.find_element(By.ID, "process-status").text == "completed",
                                        message="the page to show the process completed")
    assert alice.execute_script("return window.__not_reloaded") is True
    expense = Expense.objects.get(description="Train to Lyon")
    reference = Payment.objects.get(expense=expense).reference
    WebDriverWait(alice, 20, 0.2).until(  # the refreshed parts of the page follow too
        lambda d: reference in d.find_element(By.ID, "outcome").text and "Completed" in d.find_element(
            By.ID, "timeline").text, message="the payment and the timeline to appear without a reload")
    assert alice.execute_script("return window.__not_reloaded") is True
    shot(alice, "3-alice-paid")
    assert (expense.state, expense.decided_by, expense.comment) == (Expense.State.PAID, "manager", "Fine")
    assert Payment.objects.filter(expense=expense, amount=Decimal("84.50")).count() == 1

    # The bar's colour is the outcome's: green once paid; a rejected expense turns it red, live (both processes
    # completed, so the process status alone could not tell them apart).
    bar_colour = lambda d: d.execute_script(  # noqa: E731
        "return getComputedStyle(document.getElementById('live-status')).borderLeftColor")
    assert alice.find_element(By.ID, "live-status").get_attribute("data-tone") == "positive"
    assert bar_colour(alice) == GREEN
    alice.get(f"{base}/")
    alice.find_element(By.NAME, "description").send_keys("Gold-plated stapler")
    alice.find_element(By.NAME, "amount").send_keys("120")
    alice.find_element(By.ID, "submit-expense").click()
    WebDriverWait(alice, 60, 0.2).until(lambda d: state(d) == "Waiting for the manager"
                                        and d.find_element(By.ID, "live-status").get_attribute(
                                            "data-connection") == "open", message="the second expense's page")
    assert bar_colour(alice) == BLUE
    alice.execute_script("window.__not_reloaded = true")
    second = Expense.objects.get(description="Gold-plated stapler")
    answer(bob, second.instance_id, "manager_decision", {"decision": "reject", "comment": "No"})
    WebDriverWait(alice, 60, 0.2).until(lambda d: state(d) == "Rejected" and bar_colour(d) == RED,
                                        message="the bar to turn red without a reload")
    assert alice.execute_script("return window.__not_reloaded") is True
    WebDriverWait(alice, 20, 0.2).until(lambda d: "Rejected by bob (the manager)" in d.find_element(
        By.ID, "outcome").text, message="the decision to appear without a reload")
    assert alice.execute_script("return window.__not_reloaded") is True
    shot(alice, "4-alice-rejected")


GREEN, RED, BLUE = "rgb(31, 138, 76)", "rgb(194, 57, 43)", "rgb(47, 111, 179)"  # pages.css: --good, --bad, --open


def test_admin_lists_fit_a_1280px_screen(asgi_server, browser_factory):  # noqa: F811
    """The operator's lists need no horizontal scrolling at 1280 px, with realistic (long) values."""
    from selenium.webdriver.common.by import By

    from durable_django.humantasks.models import HumanTask
    from durable_django.models import DurableHistory

    User.objects.create_superuser("root", password="root-pw")
    employee = User.objects.create_user("alexandra.longname", password="pw")
    Group.objects.create(name="managers")
    for n in range(3):
        e = Expense.objects.create(employee=employee, amount=Decimal("1234.56"),
                                   description=f"Conference travel, hotel and meals in Saint-Jean-de-Luz #{n}")
        dd.start(expense_approval, e.pk, instance_id=e.instance_id, link=e)
        dd.resume(e.instance_id, inline=True)  # to the manager's and finance's waits: two tasks, a paused row
    assert HumanTask.objects.count() == 6
    worker = "celery@build-runner-17.internal.example.com:build-runner-17:10018:5f0c2a9e4b7d4c1e"
    DurableHistory.objects.create(instance_id=e.instance_id, kind="recovered", status="running", actor=worker,
                                  detail="the previous worker's lease expired")
    dd.publish_event(e.instance_id, "manager_decision", {"decision": "approve"},
                     idempotency_key="a-client-key-" + "k" * 60)
    driver = browser_factory()
    driver.set_window_size(1280, 900)
    login(driver, asgi_server.url, "root", "root-pw")
    for path in ("/admin/durable_django/durableinstance/", "/admin/durable_humantasks/humantask/",
                 "/admin/durable_django/durablehistory/", "/admin/durable_django/durableevent/"):
        driver.get(f"{asgi_server.url}{path}")
        assert driver.find_elements(By.ID, "result_list") or "0 " in driver.page_source
        # neither the page nor the results box (the admin scrolls a wide table inside it) scrolls sideways
        inner, page_width, box, box_width = driver.execute_script(
            "var r = document.querySelector('#changelist .results');"
            "return [window.innerWidth, document.documentElement.scrollWidth, r ? r.clientWidth : 0,"
            " r ? r.scrollWidth : 0]")
        assert inner <= 1280 and page_width <= inner and box_width <= box, (path, inner, page_width, box, box_width)
        shot(driver, "admin-" + path.strip("/").replace("/", "-"))
