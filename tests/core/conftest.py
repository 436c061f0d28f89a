import asyncio
import importlib
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
