"""Issue 10: signatures bound to a context (DS2), the unsigned-store warning, declared programs."""

import asyncio
import pickle
import warnings

import pytest

import durable
import durable.backend
from durable import (
    DiskStateStore,
    DurableBackend,
    DurableProgram,
    InMemoryStateStore,
    PauseForEventException,
    StateTamperedError,
    UnsignedStateWarning,
    make_durable,
    signing,
)
from durable.program import declared_program

KEY = b"k" * 32


class Tripwire:
    unpickled = 0

    def __reduce__(self):
        return (_trip, ())


def _trip():
    Tripwire.unpickled += 1
    return "tripped"


# -- the bound format ----------------------------------------------------------------
def test_bound_blob_verifies_only_in_its_context():
    blob = signing.dumps({"a": 1}, KEY, b"row-1/state")
    assert blob[:3] == b"DS2"
    assert signing.loads(blob, KEY, b"row-1/state") == {"a": 1}
    for context in (b"row-2/state", b"row-1/arguments", b"", None):
        with pytest.raises(StateTamperedError):
            signing.loads(blob, KEY, context)
    with pytest.raises(StateTamperedError):
        signing.loads(blob, b"x" * 32, b"row-1/state")


def test_a_reader_with_a_context_refuses_unbound_and_unsigned_blobs_without_unpickling():
    Tripwire.unpickled = 0
    for blob in (signing.dumps(Tripwire(), KEY), signing.dumps(Tripwire())):
        with pytest.raises(StateTamperedError):
            signing.loads(blob, KEY, b"ctx")
    tampered = bytearray(signing.dumps(Tripwire(), KEY, b"ctx"))
    tampered[-2] ^= 1
    with pytest.raises(StateTamperedError):
        signing.loads(bytes(tampered), KEY, b"ctx")
    assert Tripwire.unpickled == 0
    assert signing.loads(signing.dumps(Tripwire(), KEY, b"ctx"), KEY, b"ctx") == "tripped"


def test_the_context_is_length_prefixed():
    """(context, pickle) pairs cannot be shifted into each other: moving bytes between them breaks the tag."""
    data = pickle.dumps(1, protocol=5)
    blob = signing.sign_pickled(data, KEY, b"ab")
    shifted = b"DS2" + blob[3:35] + data  # same tag, claimed for context b"a" + one byte moved
    with pytest.raises(StateTamperedError):
        signing.loads(shifted, KEY, b"a")
    assert signing.verify(blob, KEY, b"ab") == data


def test_unbound_format_still_reads_without_a_context():
    assert signing.loads(signing.dumps([1], KEY), KEY) == [1]
    with pytest.raises(ValueError, match="needs a signing key"):
        signing.dumps(1, None, b"ctx")


# -- the unsigned core's warning -------------------------------------------------------
@make_durable
async def waits():
    raise PauseForEventException("go")


def _run_twice(backend: DurableBackend, iid: str) -> None:
    for _ in range(2):
        with pytest.raises(PauseForEventException):
            asyncio.run(waits(orchestration_backend=backend, instance_id=iid))


def _recorded(fn) -> list:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fn()
    return [w for w in seen if issubclass(w.category, UnsignedStateWarning)]


@pytest.fixture
def fresh_warning(monkeypatch):
    monkeypatch.setattr(durable.backend, "_warned_unsigned", False)


def test_unsigned_backend_on_a_disk_store_warns_once_per_process(tmp_path, fresh_warning):
    def both():
        _run_twice(DurableBackend(DiskStateStore(tmp_path / "a")), "i1")
        _run_twice(DurableBackend(DiskStateStore(tmp_path / "b")), "i2")

    seen = _recorded(both)
    assert len(seen) == 1
    assert "DiskStateStore" in str(seen[0].message) and "signing_key" in str(seen[0].message)


def test_no_warning_for_the_in_memory_store_or_a_signed_backend(tmp_path, fresh_warning):
    def both():
        _run_twice(DurableBackend(InMemoryStateStore()), "i1")
        _run_twice(DurableBackend(DiskStateStore(tmp_path), signing_key=KEY), "i2")

    assert _recorded(both) == []
    assert durable.backend._warned_unsigned is False


def test_the_warning_class_is_exported():
    assert durable.UnsignedStateWarning is UnsignedStateWarning and issubclass(UnsignedStateWarning, UserWarning)
    assert "UnsignedStateWarning" in durable.__all__


# -- declared programs ----------------------------------------------------------------
def test_make_durable_declares_its_function():
    async def fn():
        return 1

    async def other():
        return 2

    assert declared_program(fn) is None
    program = make_durable(fn)
    assert declared_program(fn) is program
    assert declared_program(other) is None
    DurableProgram(other, declare=False)
    assert declared_program(other) is None
    assert declared_program(len) is None  # not weak-referenceable: never declared
    versioned = make_durable(version="2")(other)  # the decorator form with options
    assert declared_program(other) is versioned and versioned.version == "2"
