"""Constructs that cannot be checkpointed are refused at make_durable time with file:line."""

import textwrap

import pytest

from durable import CompileError, make_durable

CASES = {
    "await inside with": '''
        async def f(x):
            with open(x) as fh:
                await g()
    ''',
    "async with": '''
        async def f(x):
            async with x:
                pass
    ''',
    "async for": '''
        async def f(x):
            async for i in x:
                pass
    ''',
    "comprehension": '''
        async def f(xs):
            return [await g(x) for x in xs]
    ''',
    "async generator": '''
        async def f():
            yield 1
    ''',
    "match": '''
        async def f(x):
            match x:
                case 1:
                    await g()
    ''',
    "asyncio.create_task": '''
        async def f(x):
            t = asyncio.create_task(g(x))
            return await t
    ''',
    "ensure_future": '''
        async def f(x):
            await asyncio.ensure_future(g(x))
    ''',
    "loop.create_task": '''
        async def f(x):
            await asyncio.get_running_loop().create_task(g(x))
    ''',
    "asyncio.wait": '''
        async def f(x):
            done, pending = await asyncio.wait([g(x)], return_when=asyncio.FIRST_COMPLETED)
    ''',
    "pause inside with": '''
        async def f(x):
            with x:
                raise PauseForEventException("e")
    ''',
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_refused_with_file_and_line(make_module, name):
    header = "import asyncio\nfrom durable import PauseForEventException\nasync def g(*a):\n    pass\n"
    mod = make_module(header + textwrap.dedent(CASES[name]))
    with pytest.raises(CompileError) as e:
        make_durable(mod.f)
    assert mod.__file__ in str(e.value)
    line = int(str(e.value).split(mod.__file__ + ":")[1].split(":")[0])
    assert 6 <= line <= 11


@pytest.mark.parametrize("name", ["asyncio.create_task", "ensure_future", "loop.create_task", "asyncio.wait"])
def test_tasks_are_refused_with_the_durable_form(make_module, name):
    mod = make_module("import asyncio\nasync def g(*a):\n    pass\n" + textwrap.dedent(CASES[name]))
    with pytest.raises(CompileError, match=r"durable\.first\(\.\.\.\)") as e:
        make_durable(mod.f)
    assert f"{mod.__file__}:6:" in str(e.value)


def test_not_async_is_refused():
    def sync():
        return 1

    with pytest.raises(TypeError):
        make_durable(sync)


def test_with_without_await_is_fine(make_module):
    mod = make_module('''
        import contextlib
        async def g():
            return 2
        async def f():
            with contextlib.nullcontext(1) as one:
                x = one
            return x + await g()
    ''')
    import asyncio
    assert asyncio.run(make_durable(mod.f)()) == 3


def test_async_comprehension_is_refused_clearly(make_module):
    mod = make_module('''
        async def f(xs):
            return [i async for i in xs]
    ''')
    with pytest.raises(CompileError, match="async comprehension"):
        make_durable(mod.f)
