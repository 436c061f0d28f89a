"""Calling a durable program with arguments that do not fit its signature: Python's TypeError, nothing saved."""

from __future__ import annotations

import asyncio

import pytest

from durable import DurableBackend, InMemoryStateStore, make_durable


async def hello(name):
    return f"hello {name}"


program = make_durable(hello)


@pytest.mark.parametrize("args, kwargs, words", [
    ((), {}, r"hello\(\) missing 1 required positional argument: 'name'"),
    (tuple(range(10_000)), {}, r"hello\(\) takes 1 positional argument but 10000 were given"),
    (("a",), {"nope": 1}, r"hello\(\) got an unexpected keyword argument 'nope'"),
])
def test_bad_arguments_raise_typeerror_naming_the_program_and_save_nothing(args, kwargs, words):
    store = InMemoryStateStore()
    backend = DurableBackend(store)
    with pytest.raises(TypeError, match=words):
        asyncio.run(program(*args, orchestration_backend=backend, instance_id="i1", **kwargs))
    assert list(store.keys()) == []
    assert asyncio.run(program("you", orchestration_backend=backend, instance_id="i1")) == "hello you"
