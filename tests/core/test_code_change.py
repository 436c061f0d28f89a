"""Instances paused under old code: same step layout resumes, a new layout stops clearly."""

import asyncio
import importlib
import sys

import pytest

from durable import CodeChangedError, DurableBackend, InMemoryStateStore, PauseForEventException

V1 = '''
from durable import make_durable, wait_for_event

async def work(x):
    return x

@make_durable
async def proc(n):
    a = await work(n)
    b = await wait_for_event("go")
    return a + b + 1
'''

V2_SAME_LAYOUT = V1.replace("a + b + 1", "a + b + 1000")
V2_NEW_LAYOUT = V1.replace('    b = await wait_for_event("go")',
                           '    c = await work(5)\n    b = await wait_for_event("go")')


def reload(tmp_path, name, source):
    (tmp_path / f"{name}.py").write_text(source)
    importlib.invalidate_caches()
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def pause_under_v1(tmp_path, monkeypatch, name):
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = reload(tmp_path, name, V1)
    backend = DurableBackend(InMemoryStateStore())
    with pytest.raises(PauseForEventException):
        asyncio.run(mod.proc(1, orchestration_backend=backend, instance_id="p"))
    backend.publish_event("p", "go", 10)
    return backend


def test_fix_inside_a_block_resumes_with_new_code(tmp_path, monkeypatch):
    backend = pause_under_v1(tmp_path, monkeypatch, "cc_same")
    mod = reload(tmp_path, "cc_same", V2_SAME_LAYOUT)
    assert asyncio.run(mod.proc(1, orchestration_backend=backend, instance_id="p")) == 1011
    sys.modules.pop("cc_same", None)


def test_changed_layout_stops_with_clear_error_and_keeps_state(tmp_path, monkeypatch):
    backend = pause_under_v1(tmp_path, monkeypatch, "cc_new")
    mod = reload(tmp_path, "cc_new", V2_NEW_LAYOUT)
    blob = backend.store.load_blob("state:p")
    with pytest.raises(CodeChangedError, match="proc.*changed its step layout"):
        asyncio.run(mod.proc(1, orchestration_backend=backend, instance_id="p"))
    assert backend.store.load_blob("state:p") == blob
    mod = reload(tmp_path, "cc_new", V1)
    assert asyncio.run(mod.proc(1, orchestration_backend=backend, instance_id="p")) == 12
    sys.modules.pop("cc_new", None)


def test_migration_hook_can_accept_a_changed_frame(tmp_path, monkeypatch):
    backend = pause_under_v1(tmp_path, monkeypatch, "cc_mig")
    mod = reload(tmp_path, "cc_mig", V2_NEW_LAYOUT)
    seen = []

    def migrate(frame):
        seen.append(frame.position())
        frame.move_to("wait_for_event")
        return True

    rt = mod.proc.runtime(backend, "p", migrate=migrate)
    assert asyncio.run(rt.run(mod.proc, (1,), {})) == 12
    assert seen
    sys.modules.pop("cc_mig", None)
