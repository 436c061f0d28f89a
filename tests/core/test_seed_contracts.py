"""Code written exactly as the seed (durable-python 0.1.0) documents its contracts runs unchanged.

The seed's README: "StateStore defines load / save" (``async def load(self, instance_id) -> dict | None``,
``async def save(self, instance_id, state: dict) -> None``), "OrchestrationBackend defines load_state,
save_state, and wait_for_event", ``DurableBackend(state_store=...)``, and ``DurableAstTransformer`` is an
``ast.NodeTransformer``. A store or backend that fits no contract is refused with the methods it lacks named.
"""

from __future__ import annotations

import ast
import asyncio
import pickle
import sys
import textwrap
import types
import warnings

import pytest

from durable import (
    BlobStore,
    CompileError,
    DiskStateStore,
    DurableAstTransformer,
    DurableBackend,
    DurableProgram,
    InMemoryStateStore,
    OrchestrationBackend,
    PauseForEventException,
    StateStore,
    UnsignedStateWarning,
    make_durable,
    wait_for_event,
)
from durable.store import blob_fast_path


def run(coro):
    return asyncio.run(coro)


async def greet(name: str):
    raise PauseForEventException("allow")
    return f"hello {name}"


durable_greet = make_durable(greet)


@make_durable
async def two_answers(n: int):
    first = await wait_for_event("a")
    second = await wait_for_event("b")
    return n + first + second


def greet_twice(backend) -> str:
    """The seed's Quick Start flow: pause, publish, run again."""
    with pytest.raises(PauseForEventException) as paused:
        run(durable_greet("Ada", orchestration_backend=backend, instance_id="greet-1"))
    assert paused.value.event == "allow"
    backend.publish_event("greet-1", "allow")
    return run(durable_greet("Ada", orchestration_backend=backend, instance_id="greet-1"))


# -- StateStore: a store of dicts, written as the seed documents it -------------------------------------------
class SeedStyleStore(StateStore):
    """The seed's own InMemoryStateStore, written against the documented contract."""

    def __init__(self) -> None:
        self.data: dict[str, dict] = {}
        self.saves: list[str] = []

    async def load(self, instance_id: str) -> dict | None:
        blob = self.data.get(instance_id)
        return None if blob is None else pickle.loads(blob)

    async def save(self, instance_id: str, state: dict) -> None:
        assert isinstance(state, dict)
        self.saves.append(instance_id)
        self.data[instance_id] = pickle.dumps(state)


def test_custom_async_dict_store_runs_the_quick_start():
    store = SeedStyleStore()
    assert greet_twice(DurableBackend(store)) == "hello Ada"
    assert set(store.data) == {"greet-1"}  # the store is keyed by instance id, as in the seed
    assert store.saves == ["greet-1"] * len(store.saves) and len(store.saves) >= 2
    saved = run(store.load("greet-1"))
    assert saved["status"] == "completed" and saved["result"] == "hello Ada"


def test_custom_store_keeping_the_dict_itself_works():
    """The seed's own stores keep the object they are given (no copy): that runs too."""

    class Keeping:  # duck-typed: no base class at all
        def __init__(self) -> None:
            self.states: dict[str, dict] = {}

        async def load(self, instance_id):
            return self.states.get(instance_id)

        async def save(self, instance_id, state):
            self.states[instance_id] = state

    assert greet_twice(DurableBackend(Keeping())) == "hello Ada"


def test_custom_sync_dict_store_is_accepted():
    class SyncStore:
        def __init__(self) -> None:
            self.data: dict[str, bytes] = {}

        def load(self, instance_id):
            return pickle.loads(self.data[instance_id]) if instance_id in self.data else None

        def save(self, instance_id, state):
            self.data[instance_id] = pickle.dumps(state)

    store = SyncStore()
    backend = DurableBackend(store)
    assert greet_twice(backend) == "hello Ada"
    assert backend.load_state_sync("greet-1")["result"] == "hello Ada"  # a sync store can be read without a loop


def test_events_with_a_dict_store_are_consumed_once():
    """With a dict store the inbox is the backend's (in memory, as in the seed's event bus); the store only ever
    sees the runtime's state."""
    store = SeedStyleStore()
    backend = DurableBackend(store)
    with pytest.raises(PauseForEventException):
        run(two_answers(1, orchestration_backend=backend, instance_id="t"))
    backend.publish_event("t", "a", 10)
    with pytest.raises(PauseForEventException) as paused:
        run(two_answers(1, orchestration_backend=backend, instance_id="t"))
    assert paused.value.event == "b"
    assert backend.pending_events("t") == []
    backend.publish_event("t", "b", 100)
    assert run(two_answers(1, orchestration_backend=backend, instance_id="t")) == 111
    assert "consumed" not in run(store.load("t"))


# -- subclasses of the stock stores ----------------------------------------------------------------------------
class LoggingStore(InMemoryStateStore):
    """An async subclass that calls super(), as a seed user writes it."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, str]] = []

    async def load(self, instance_id: str) -> dict | None:
        self.log.append(("load", instance_id))
        return await super().load(instance_id)

    async def save(self, instance_id: str, state: dict) -> None:
        self.log.append(("save", state["status"]))
        await super().save(instance_id, state)


def test_async_subclass_of_in_memory_store_calling_super_runs_and_saves():
    store = LoggingStore()
    assert not blob_fast_path(store)
    assert greet_twice(DurableBackend(store)) == "hello Ada"
    assert ("save", "paused") in store.log and store.log[-1] == ("save", "completed")
    assert store.log.count(("load", "greet-1")) == 2
    # it really saved: another backend on the same store sees the result
    assert run(DurableBackend(store).load_state("greet-1"))["result"] == "hello Ada"
    assert run(store.load("greet-1"))["result"] == "hello Ada"


def test_async_subclass_of_disk_store_resumes_from_disk(tmp_path):
    class CountingDisk(DiskStateStore):
        saves = 0

        async def save(self, instance_id, state):
            type(self).saves += 1
            await super().save(instance_id, state)

    with warnings.catch_warnings():  # unsigned state read from disk: warned once per process (maybe already)
        warnings.simplefilter("ignore", UnsignedStateWarning)
        assert greet_twice(DurableBackend(CountingDisk(tmp_path))) == "hello Ada"
    assert CountingDisk.saves >= 2
    assert run(DurableBackend(DiskStateStore(tmp_path)).load_state("greet-1"))["result"] == "hello Ada"


def test_subclass_overriding_only_blob_methods_keeps_the_fast_path():
    class CountingBlobs(InMemoryStateStore):
        def __init__(self) -> None:
            super().__init__()
            self.writes = 0

        def save_blob(self, key: str, data: bytes) -> None:
            self.writes += 1
            super().save_blob(key, data)

    store = CountingBlobs()
    assert blob_fast_path(store) and blob_fast_path(InMemoryStateStore())
    assert greet_twice(DurableBackend(store)) == "hello Ada"
    assert store.writes >= 2


# -- the stock stores honour the dict contract -------------------------------------------------------------------
@pytest.mark.parametrize("make", [InMemoryStateStore, "disk"])
def test_stock_stores_can_be_awaited_with_dicts(make, tmp_path):
    store = DiskStateStore(tmp_path) if make == "disk" else make()
    state = {"status": "paused", "steps": 3, "nested": {"a": [1, 2]}}

    async def roundtrip():
        assert await store.load("k") is None
        assert await store.save("k", state) is None
        return await store.load("k")

    got = run(roundtrip())
    assert got == state and got is not state
    # the same layout the backend uses: what the store saved, the backend loads
    assert run(DurableBackend(store).load_state("k")) == state


# -- DurableBackend ------------------------------------------------------------------------------------------------
def test_backend_takes_the_seeds_state_store_keyword():
    store = InMemoryStateStore()
    backend = DurableBackend(state_store=store)
    assert backend.state_store is store and backend.store is store
    assert DurableBackend(store=store).state_store is store  # the former keyword still works
    assert DurableBackend(store).state_store is store
    with pytest.raises(TypeError, match="both"):
        DurableBackend(state_store=store, store=store)
    assert greet_twice(backend) == "hello Ada"


@pytest.mark.parametrize("make", [InMemoryStateStore, SeedStyleStore, LoggingStore])
def test_save_state_neither_changes_the_callers_dict_nor_what_is_loaded(make):
    backend = DurableBackend(state_store=make())
    with pytest.raises(PauseForEventException):
        run(two_answers(1, orchestration_backend=backend, instance_id="s"))
    backend.publish_event("s", "a", 10)
    state = run(backend.load_state("s"))
    assert run(backend.wait_for_event("s", "a")) == 10  # consumed: the next save records it
    before = pickle.dumps(state)
    keys = set(state)
    run(backend.save_state("s", state))
    assert set(state) == keys and "consumed" not in state and pickle.dumps(state) == before
    loaded = run(DurableBackend(state_store=backend.store).load_state("s"))
    assert set(loaded) == keys and loaded["steps"] == state["steps"] and loaded["wait"] == state["wait"]
    if make is not SeedStyleStore:  # the inbox is in the store: the consumed event is gone from it, for good
        assert DurableBackend(state_store=backend.store).pending_events("s") == []


def test_save_load_roundtrip_is_equal():
    backend = DurableBackend(state_store=SeedStyleStore())
    state = {"format": 1, "status": "paused", "program": "p", "stack": [], "wait": None, "result": None,
             "error": None, "steps": 1}
    run(backend.save_state("r", dict(state)))
    assert run(backend.load_state("r")) == state
    assert run(backend.load_state("nobody")) is None


# -- a custom OrchestrationBackend, as the seed's README writes one ------------------------------------------------
class CustomBackend(OrchestrationBackend):
    def __init__(self) -> None:
        self.states: dict[str, bytes] = {}
        self.events: dict[str, set[str]] = {}

    async def load_state(self, instance_id: str) -> dict | None:
        blob = self.states.get(instance_id)
        return None if blob is None else pickle.loads(blob)

    async def save_state(self, instance_id: str, state: dict) -> None:
        self.states[instance_id] = pickle.dumps(state)

    async def wait_for_event(self, instance_id: str, event_name: str) -> None:
        if event_name not in self.events.get(instance_id, set()):
            raise PauseForEventException(event_name)

    def publish_event(self, instance_id: str, event_name: str) -> None:
        self.events.setdefault(instance_id, set()).add(event_name)


def test_custom_orchestration_backend_from_the_seed_readme():
    assert greet_twice(CustomBackend()) == "hello Ada"


def test_backend_with_plain_def_methods_is_accepted():
    class SyncBackend:
        def __init__(self) -> None:
            self.inner = CustomBackend()

        def load_state(self, instance_id):
            blob = self.inner.states.get(instance_id)
            return None if blob is None else pickle.loads(blob)

        def save_state(self, instance_id, state):
            self.inner.states[instance_id] = pickle.dumps(state)

        def wait_for_event(self, instance_id, event_name):
            return run_sync(self.inner.wait_for_event(instance_id, event_name))

        def publish_event(self, instance_id, event_name):
            self.inner.publish_event(instance_id, event_name)

    def run_sync(coro):
        try:
            coro.send(None)
        except StopIteration as stop:
            return stop.value
        raise AssertionError("suspended")

    assert greet_twice(SyncBackend()) == "hello Ada"


# -- what fits no contract is named -------------------------------------------------------------------------------
def test_an_object_that_is_no_store_is_refused_when_the_backend_is_built():
    with pytest.raises(TypeError, match=r"not a StateStore.*load\(instance_id\).*save\(instance_id.*load_blob"):
        DurableBackend(object())
    with pytest.raises(TypeError, match="orchestration_backend"):
        DurableBackend(CustomBackend())


def test_a_store_passed_as_the_backend_is_refused_with_a_hint():
    with pytest.raises(TypeError, match=r"load_state.*save_state.*wait_for_event.*DurableBackend\(state_store="):
        run(durable_greet("Ada", orchestration_backend=InMemoryStateStore(), instance_id="x"))


def test_a_store_of_bytes_written_against_load_save_is_named_at_first_use():
    class BytesStore:
        def __init__(self) -> None:
            self.data = {"x": b"\x80\x05N."}

        async def load(self, instance_id):
            return self.data.get(instance_id)

        async def save(self, instance_id, state):
            self.data[instance_id] = state

    with pytest.raises(TypeError, match=r"BytesStore.load returned bytes.*BlobStore.*load_blob/save_blob"):
        run(durable_greet("Ada", orchestration_backend=DurableBackend(BytesStore()), instance_id="x"))


def test_a_backend_returning_no_dict_is_named():
    class Odd(CustomBackend):
        async def load_state(self, instance_id):
            return b"blob"

    with pytest.raises(TypeError, match=r"Odd.load_state returned bytes"):
        run(durable_greet("Ada", orchestration_backend=Odd(), instance_id="x"))


def test_signing_key_with_a_store_that_serializes_itself_is_refused():
    with pytest.raises(TypeError, match="signing_key"):
        DurableBackend(SeedStyleStore(), signing_key="k")
    with pytest.raises(TypeError, match="signing_key"):
        DurableBackend(LoggingStore(), signing_key="k")
    DurableBackend(InMemoryStateStore(), signing_key="k")


def test_incomplete_store_subclasses_are_refused_by_the_abc():
    class Half(StateStore):
        async def load(self, instance_id):
            return None

    class HalfBlobs(BlobStore):
        def load_blob(self, key):
            return None

    for cls in (Half, HalfBlobs):
        with pytest.raises(TypeError, match="abstract"):
            cls()


def test_async_store_cannot_be_read_without_a_loop():
    backend = DurableBackend(SeedStyleStore())
    with pytest.raises(TypeError, match="await backend.load_state"):
        backend.load_state_sync("x")


# -- DurableAstTransformer is an ast.NodeTransformer --------------------------------------------------------------
MODULE = '''
import durable

async def greet(name):
    await durable.wait_for_event("allow")
    return f"hello {name}"

async def helper():
    return 1

def plain():
    return 2
'''


def test_transformer_visit_makes_module_level_async_defs_durable(tmp_path, monkeypatch):
    path = tmp_path / "seed_visited.py"
    path.write_text(MODULE)
    transformer = DurableAstTransformer(str(path))
    assert isinstance(transformer, ast.NodeTransformer)
    tree = transformer.visit(ast.parse(path.read_text(), str(path)))
    module = types.ModuleType("seed_visited")
    module.__file__ = str(path)
    monkeypatch.setitem(sys.modules, "seed_visited", module)
    exec(compile(tree, str(path), "exec"), module.__dict__)
    assert isinstance(module.greet, DurableProgram) and isinstance(module.helper, DurableProgram)
    assert module.plain() == 2
    backend = DurableBackend()
    with pytest.raises(PauseForEventException):
        run(module.greet("Ada", orchestration_backend=backend, instance_id="v"))
    backend.publish_event("v", "allow")
    assert run(module.greet("Ada", orchestration_backend=backend, instance_id="v")) == "hello Ada"
    # visiting again does not wrap twice
    again = transformer.visit(tree)
    assert len(again.body[1].decorator_list) == 1


def test_transformer_visit_reports_what_cannot_be_checkpointed():
    source = textwrap.dedent('''
        async def bad(items):
            async for x in items:
                pass
    ''')
    with pytest.raises(CompileError, match="async for") as info:
        DurableAstTransformer("flows.py").visit(ast.parse(source))
    assert "flows.py" in str(info.value) and "3" in str(info.value)
    node = ast.parse(source).body[0]
    with pytest.raises(CompileError):
        DurableAstTransformer("flows.py").visit(node)
