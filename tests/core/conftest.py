import asyncio
import importlib
import inspect
import sys
import textwrap
import uuid

import pytest


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def make_module(tmp_path, monkeypatch):
    """Write source to a real module file (durable code needs its source) and import it."""
    monkeypatch.syspath_prepend(str(tmp_path))
    created = []

    def make(source: str, name: str | None = None):
        name = name or f"mod_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        sys.modules.pop(name, None)
        created.append(name)
        return importlib.import_module(name)

    yield make
    for name in created:
        sys.modules.pop(name, None)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run ``async def`` tests in a fresh event loop (no pytest-asyncio in the venv)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{n: pyfuncitem.funcargs[n] for n in names}))
    return True
