"""Stores, signed state, refused checkpoints, and resuming in another process."""

import asyncio
import os
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from durable import (
    CheckpointException,
    DiskStateStore,
    DurableBackend,
    InMemoryStateStore,
    PauseForEventException,
    StateTamperedError,
    make_durable,
    signing,
    wait_for_event,
)

ROOT = Path(__file__).resolve().parents[2]


def run(coro):
    return asyncio.run(coro)


def test_disk_store_roundtrip_and_atomic_replace(tmp_path):
    s = DiskStateStore(tmp_path)
    assert s.load_blob("a") is None
    s.save_blob("a", b"1")
    s.save_blob("a", b"22")
    assert s.load_blob("a") == b"22"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    s.delete_blob("a")
    assert s.load_blob("a") is None


def test_disk_store_keys_cannot_escape_directory(tmp_path):
    root = tmp_path / "store"
    s = DiskStateStore(root)
    for key in ["../evil", "/etc/passwd", "a/../../b", "..", ".hidden", "x" * 500, "ü/ñ"]:
        s.save_blob(key, key.encode())
        assert s.load_blob(key) == key.encode()
    assert sorted(p.parent for p in tmp_path.rglob("*") if p.is_file()) == [root] * len(list(root.iterdir()))
    with pytest.raises(ValueError):
        s.save_blob("", b"x")


def test_disk_store_crash_mid_save_keeps_old_blob(tmp_path, monkeypatch):
    s = DiskStateStore(tmp_path)
    s.save_blob("k", b"old")

    def boom(fd):
        raise OSError("disk died")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        s.save_blob("k", b"new-but-torn")
    monkeypatch.undo()
    assert s.load_blob("k") == b"old"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_disk_store_update_is_atomic_across_threads(tmp_path):
    s = DiskStateStore(tmp_path)

    def bump(_):
        for _ in range(50):
            s.update_blob("n", lambda b: str(int(b or b"0") + 1).encode())

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert s.load_blob("n") == b"200"


def test_signed_blob_roundtrip_and_tamper_detection():
    key = b"k" * 32
    blob = signing.dumps({"a": 1}, key)
    assert signing.loads(blob, key) == {"a": 1}
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(StateTamperedError):
        signing.loads(bytes(tampered), key)
    with pytest.raises(StateTamperedError):
        signing.loads(blob, b"other-key")
    with pytest.raises(StateTamperedError):
        signing.loads(signing.dumps({"a": 1}, None), key)


class Bomb:
    """Unpickling this would run code: a tampered blob must never reach pickle."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_tampered_state_is_never_unpickled(monkeypatch):
    key = b"secret"
    store = InMemoryStateStore()
    b = DurableBackend(store, signing_key=key)
    with pytest.raises(PauseForEventException):
        run(waiter(orchestration_backend=b, instance_id="w"))
    evil = b"DS1" + b"\0" * 32 + pickle.dumps(Bomb())
    store.save_blob("state:w", evil)
    loaded = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: loaded.append(a))
    with pytest.raises(StateTamperedError):
        run(waiter(orchestration_backend=b, instance_id="w"))
    assert loaded == []


@make_durable
async def waiter():
    got = await wait_for_event("go")
    return got


async def noop():
    return None


@make_durable
async def holds_unpicklable():
    ok = 1
    await noop()
    lock = threading.Lock()
    await noop()
    return ok, lock


def test_unpicklable_local_is_named_and_previous_checkpoint_kept():
    store = InMemoryStateStore()
    b = DurableBackend(store)
    with pytest.raises(CheckpointException) as e:
        run(holds_unpicklable(orchestration_backend=b, instance_id="u"))
    msg = str(e.value)
    assert "'lock'" in msg and "lock" in msg.lower() and "holds_unpicklable" in msg
    state = signing.loads(store.load_blob("state:u"))
    assert state["steps"] == 1 and state["status"] == "running"
    assert state["stack"].top.locals["ok"] == 1


DISK_PROGRAM = textwrap.dedent('''
    import asyncio, sys
    from durable import DiskStateStore, DurableBackend, PauseForEventException, make_durable, wait_for_event

    async def add(a, b):
        return a + b

    @make_durable
    async def tally(n):
        total = 0
        for i in range(n):
            total = await add(total, i)
            if i == 2:
                extra = await wait_for_event("more")
                total += extra
        return total

    def main():
        backend = DurableBackend(DiskStateStore(sys.argv[1]), signing_key="s3cret")
        if sys.argv[2] == "publish":
            backend.publish_event("tally-1", "more", 100)
            return
        try:
            print("result", asyncio.run(tally(5, orchestration_backend=backend, instance_id="tally-1")))
        except PauseForEventException as e:
            print("paused", e.event)

    if __name__ == "__main__":
        main()
''')


def test_disk_state_survives_process_restarts_with_pending_event(tmp_path):
    mod = tmp_path / "tallyprog.py"
    mod.write_text(DISK_PROGRAM)
    store = tmp_path / "state"

    def go(*args):
        out = subprocess.run([sys.executable, str(mod), str(store), *args], capture_output=True, text=True,
                             env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert go("run") == "paused more"
    assert go("run") == "paused more"
    go("publish")
    assert go("run") == "result 110"
    assert go("run") == "result 110"
