"""Type-checked, never run: mistakes a type checker must report, one per line marked ``# error``.

tests/typecheck/test_public_types.py runs mypy (and pyright, when installed) over this file and
expects an error on exactly the marked lines. See docs/typing.md.
"""

from __future__ import annotations

from django.contrib.auth.models import User

import durable
import durable_django as dd
from durable import DurableBackend, make_durable


@make_durable
async def hello(name: str, times: int = 1) -> str:
    await durable.sleep("5")  # error
    await durable.wait_for_event("e", timeout="soon")  # error
    return name * times


@make_durable(version="1")
async def order(order_id: int, *, express: bool = False) -> list[str]:
    return []


async def core_calls(backend: DurableBackend) -> None:
    await hello()  # error
    await hello(1)  # error
    await hello("Ada", "twice")  # error
    await hello("Ada", colour="red")  # error
    await hello.instance("greet-1", orchestration_backend=backend)(5)  # error
    await hello.instance("greet-1", backend)("Ada")  # error
    await hello("Ada", instance_id=1)  # error
    await hello("Ada", orchestration_backend="memory")  # error
    _count: int = await hello("Ada")  # error
    await order(1, True)  # error
    make_durable(lambda: None)  # error


def django_calls(user: User) -> None:
    dd.start(hello)  # error
    dd.start(hello, 1)  # error
    dd.start(order, 1, express="yes")  # error
    dd.start(hello, "Ada", instance_id=5)  # error
    dd.start(hello, "Ada", link="not a model")  # error
    dd.start(program=hello)  # error
    dd.starter(order, instance_id="o-1", link=user)()  # error
    dd.starter(order, instance_id="o-1")("1")  # error
    dd.cancel(42)  # error
    dd.start(hello, "Ada", deadline="soon")  # error
    dd.starter(order, deadline="soon")(1)  # error
    dd.publish_event("order-1")  # error
    dd.strat(hello, "Ada")  # error
    dd.register(lambda: None)  # error
