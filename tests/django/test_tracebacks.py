"""A failed instance tells where it failed: the durable call chain in its ``error`` field and in the admin.

The chain comes from the core (``durable.tracebacks``); these tests check that
it reaches the row and the page, when the failure happens inline after a
resume and on a real worker process that resumed the instance.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

import durable_django as dd
from durable_django.models import DurableInstance, Status
from durable_django.operations import ERROR_SHOWN, error_shown, failure_chain
from tests.django import tracing_programs as tp
from tests.django.conftest import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

SOURCE = Path(tp.__file__).read_text().splitlines()
CHAIN = ["approve", "check", "load_limit"]


def at(tag: str) -> int:
    return next(i for i, text in enumerate(SOURCE, 1) if text.rstrip().endswith(f"# at: {tag}"))


def expected_chain() -> list[dict]:
    return [{"function": name, "file": tp.__file__, "line": at(name), "source": SOURCE[at(name) - 1].strip()}
            for name in CHAIN]


def admin_page(uid: str) -> str:
    user = User.objects.create_superuser(f"root-{uid}", f"{uid}@example.com", "pw")
    client = Client()
    client.force_login(user)
    r = client.get(reverse("admin:durable_django_durableinstance_change", args=[uid]))
    assert r.status_code == 200
    return r.content.decode()


def assert_error_tells_the_chain(error: str) -> None:
    assert "_dur__" not in error
    assert error.rstrip().endswith("KeyError: 'alice'")
    assert failure_chain(error) == expected_chain()


def test_error_field_and_admin_page_show_the_chain(inline, uid):
    dd.start(tp.approve, "alice", 5, instance_id=uid)
    assert DurableInstance.objects.get(pk=uid).status == Status.PAUSED
    dd.publish_event(uid, "go")  # resumes inline, then fails two durable calls deep
    row = DurableInstance.objects.get(pk=uid)
    assert row.status == Status.FAILED
    assert_error_tells_the_chain(row.error)
    page = admin_page(uid)
    assert 'id="failure-chain"' in page
    table = page.partition('id="failure-chain"')[2].partition("</table>")[0]
    for name in CHAIN:
        assert f"<strong>{name}</strong>" in table and f"{tp.__file__}:{at(name)}" in table
    assert "return limits[user]" in table and "limit = await load_limit(user)" in table
    assert "KeyError: &#x27;alice&#x27;" in page.partition('id="durable-error"')[2].partition("</pre>")[0]


def test_chain_after_a_resume_on_a_worker(worker_factory, uid):
    worker_factory()
    dd.start(tp.approve, "alice", 5, instance_id=uid)
    wait_until(lambda: DurableInstance.objects.get(pk=uid).status == Status.PAUSED, timeout=60,
               message="the instance to pause on the worker")
    dd.publish_event(uid, "go")
    wait_until(lambda: DurableInstance.objects.get(pk=uid).status == Status.FAILED, timeout=60,
               message="the instance to fail on the worker")
    assert_error_tells_the_chain(DurableInstance.objects.get(pk=uid).error)


def test_wrapped_error_shows_the_chain_of_the_error_that_ended_it(inline, uid):
    dd.start(tp.approve_wrapped, "alice", instance_id=uid)
    dd.publish_event(uid, "go")
    row = DurableInstance.objects.get(pk=uid)
    assert row.status == Status.FAILED
    assert "The above exception was the direct cause" in row.error
    assert [(e["function"], e["line"]) for e in failure_chain(row.error)] == [
        ("approve_wrapped", at("approve_wrapped")), ("lookup", at("raise from"))]
    first = row.error.partition("The above exception")[0]
    assert f'line {at("lookup")}, in lookup' in first and f'line {at("load_limit")}, in load_limit' in first


def test_long_errors_keep_their_end():
    text = "Traceback (most recent call last):\n" + '  File "x.py", line 1, in f\n    f()\n' * 1000 + "E: boom\n"
    shown = error_shown(text)
    assert len(shown) == ERROR_SHOWN + 1 and shown.endswith("E: boom\n")
    assert error_shown("short") == "short" and failure_chain("no traceback here") == []
