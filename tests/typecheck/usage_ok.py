"""Type-checked, never run: the documented call forms, each with the type a checker must infer.

tests/typecheck/test_public_types.py runs mypy --strict (and pyright, when installed) over this
file and expects no error. See docs/typing.md.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, assert_type

from django.contrib.auth.models import User

import durable
import durable_django as dd
from durable import DurableBackend, InMemoryStateStore, make_durable
from durable_django.models import DurableEvent, DurableInstance


async def greet(name: str, times: int = 1) -> str:
    approval = await durable.wait_for_event("allow", timeout=timedelta(days=1), assignee="boss")
    assert_type(approval, Any)
    await durable.sleep(5)
    await durable.sleep_until(1_900_000_000.0)
    return name * times


durable_greet = make_durable(greet)
greet_shape: Callable[[str, int], Coroutine[Any, Any, str]] = durable_greet.instance()


@make_durable(name="shop.order", version="2")
async def order(order_id: int, *, express: bool = False) -> list[str]:
    label = await durable_greet(str(order_id))  # a nested durable call keeps its types
    assert_type(label, str)
    return [label] if express else []


@make_durable
async def no_result(flag: bool) -> None:
    return None


async def core_calls() -> None:
    backend = DurableBackend(InMemoryStateStore())
    # the documented call: the runtime's keywords among the function's arguments
    assert_type(await durable_greet("Ada", orchestration_backend=backend, instance_id="greet-1"), str)
    assert_type(await durable_greet("Ada", instance_id="greet-2"), str)
    assert_type(await durable_greet("Ada", 2, orchestration_backend=backend), str)
    # without them, and the checked form with them
    assert_type(await durable_greet("Ada", times=3), str)
    assert_type(await durable_greet.instance("greet-3", orchestration_backend=backend)("Ada", 2), str)
    assert_type(await order(7, express=True), list[str])
    assert_type(await no_result(True), None)
    backend.publish_event("greet-1", "allow", {"ok": True})


def register_migrations() -> None:
    @dd.register_migration(order, from_version="1")
    def adapt(frame: durable.FunctionCall) -> bool:
        return frame.pc == 0

    assert_type(adapt(durable.FunctionCall.__new__(durable.FunctionCall)), bool)


def django_calls(user: User) -> None:
    assert_type(dd.start(durable_greet, "Ada"), DurableInstance)
    assert_type(dd.start(durable_greet, "Ada", 2), DurableInstance)
    assert_type(dd.start(order, 1, express=True), DurableInstance)
    assert_type(dd.start(durable_greet, "Ada", instance_id="greet-4"), DurableInstance)
    assert_type(dd.start(order, 1, instance_id="order-1", link=user), DurableInstance)
    assert_type(dd.start("shop.processes.order", 1, express=True), DurableInstance)
    assert_type(dd.starter(order, instance_id="order-2", link=user)(2, express=True), DurableInstance)
    assert_type(dd.publish_event("order-1", "paid", {"amount": 10}, actor=user), DurableEvent)
    assert_type(dd.cancel("order-1", "no longer needed"), DurableInstance)
    assert_type(dd.cancel("order-1", "now", actor="ops", force=True), DurableInstance)
    assert_type(dd.start(durable_greet, "Ada", deadline=3600), DurableInstance)
    assert_type(dd.start(order, 1, deadline=timedelta(hours=2), instance_id="order-3"), DurableInstance)
    assert_type(dd.starter(order, deadline=datetime(2030, 1, 1, tzinfo=UTC))(3, express=True), DurableInstance)
    assert_type(dd.resume("order-1"), DurableInstance | str)
    assert_type(dd.get_instance("order-1"), DurableInstance)
    _order_shape: Callable[[int], Coroutine[Any, Any, list[str]]] = dd.register(order).instance()
    assert_type(dd.sweep(), list[str])
    assert_type(dd.run_instance("order-1"), str)
    dd.result("order-1")


@dd.db_step
def count_users(active: bool) -> int:
    return User.objects.filter(is_active=active).count()


async def steps() -> None:
    assert_type(await count_users(True), int)
