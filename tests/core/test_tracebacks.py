"""Tracebacks of durable programs tell the story plain Python would: the durable call chain.

Most tests run the same ``async def`` twice, as plain Python and as a durable
program, and compare the entries of the two tracebacks that are in the
programs' file (names and lines). The rest check what plain Python has no
counterpart for: resumes, stored errors, timeouts, the frames' variables.
"""

import asyncio
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import pytest

from durable import (
    DiskStateStore,
    DurableBackend,
    EventTimeout,
    PauseForEventException,
    make_durable,
    tracebacks,
)
from durable.compiler import DurableAstTransformer

from . import tracing_programs as tp

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(tp.__file__).read_text().splitlines()


def at(tag: str) -> int:
    """The line marked ``# at: <tag>`` in tracing_programs.py."""
    return next(i for i, text in enumerate(SOURCE, 1) if text.rstrip().endswith(f"# at: {tag}"))


def user_entries(tb) -> list[tuple[str, int]]:
    """(function, line) of the traceback entries in the programs' file, outermost first."""
    return [(f.name, f.lineno) for f in traceback.extract_tb(tb) if f.filename == tp.__file__]


def plain(fn, *args) -> BaseException:
    try:
        asyncio.run(fn(*args))
    except BaseException as exc:  # noqa: BLE001 - whatever it raises is compared
        return exc
    raise AssertionError("the plain run did not fail")


def durable(fn, *args, backend=None, instance_id="i") -> BaseException:
    program = make_durable(fn)
    try:
        asyncio.run(program(*args, orchestration_backend=backend or DurableBackend(), instance_id=instance_id))
    except BaseException as exc:  # noqa: BLE001
        return exc
    raise AssertionError("the durable run did not fail")


def same_story(fn, *args) -> tuple[BaseException, BaseException]:
    want, got = plain(fn, *args), durable(fn, *args)
    assert type(got) is type(want)
    assert user_entries(got.__traceback__) == user_entries(want.__traceback__)
    return want, got


def test_the_issue_chain_approve_check_load_limit():
    _, got = same_story(tp.approve, "alice", 5)
    assert user_entries(got.__traceback__) == [
        ("approve", at("approve")), ("check", at("check")), ("load_limit", at("load_limit"))]
    text = "".join(traceback.format_exception(got))
    assert "_dur__" not in text
    assert "return limits[user]" in text and "limit = await load_limit(user)" in text


@pytest.mark.parametrize("fn", [tp.check_reraises, tp.check_raises_it_again, tp.check_no_match])
def test_caught_and_raised_again(fn):
    want, got = same_story(tp.caller, fn, "alice")
    assert [n for n, _ in user_entries(got.__traceback__)][-2:] == [fn.__name__, "load_limit"]
    if fn is tp.check_raises_it_again:  # ``raise e`` adds its line, as in plain Python
        assert ("check_raises_it_again", at("raise e")) in user_entries(got.__traceback__)


def test_wrapped_error_keeps_the_cause_story():
    want, got = same_story(tp.caller, tp.check_wraps, "alice")
    assert user_entries(got.__traceback__) == [("caller", at("caller")), ("check_wraps", at("raise from"))]
    assert isinstance(got.__cause__, KeyError)
    assert user_entries(got.__cause__.__traceback__) == user_entries(want.__cause__.__traceback__) == [
        ("check_wraps", at("check_wraps")), ("load_limit", at("load_limit"))]


def test_finally_reraise_adds_no_entry():
    seen: list[str] = []
    want = plain(tp.check_with_finally, "alice", [])
    got = durable(tp.check_with_finally, "alice", seen)
    assert seen == ["finally"]
    assert user_entries(got.__traceback__) == user_entries(want.__traceback__)


def test_format_exc_inside_a_durable_handler():
    plain_text = asyncio.run(tp.formats_inside("alice"))
    program = make_durable(tp.formats_inside)
    durable_text = asyncio.run(program("alice", orchestration_backend=DurableBackend(), instance_id="f"))
    def story(text):  # an added entry draws no carets under the await
        return [line for line in text.splitlines() if line.strip(" ^~")][-5:]

    assert story(durable_text) == story(plain_text)
    assert f'line {at("formats_inside")}, in formats_inside' in durable_text


@pytest.mark.parametrize("fn,args", [(tp.failing_future, ()), (tp.bad_call, ()), (tp.loop_fails, (5,))])
def test_errors_at_an_await_a_call_and_in_a_loop(fn, args):
    same_story(tp.caller, fn, *args)


def test_chain_across_a_resume_and_from_the_stored_error(tmp_path):
    backend = DurableBackend(DiskStateStore(tmp_path))
    program = make_durable(tp.approve_after_event)
    with pytest.raises(PauseForEventException):
        asyncio.run(program("alice", 5, orchestration_backend=backend, instance_id="r"))
    backend = DurableBackend(DiskStateStore(tmp_path))  # as another process would: state only from the store
    backend.publish_event("r", "go")
    with pytest.raises(KeyError) as first:
        asyncio.run(program(orchestration_backend=backend, instance_id="r"))
    chain = [("approve_after_event", at("approve_after_event")), ("check", at("check")),
             ("load_limit", at("load_limit"))]
    assert user_entries(first.value.__traceback__) == chain
    # a failed instance raises its stored error again, loaded from the store: the story comes with it
    with pytest.raises(KeyError) as again:
        asyncio.run(program(orchestration_backend=DurableBackend(DiskStateStore(tmp_path)), instance_id="r"))
    assert again.value is not first.value
    assert user_entries(again.value.__traceback__) == chain
    assert tracebacks.chain(again.value)[-3:] == [(tp.__file__, line, name) for name, line in chain]


def test_timeout_points_at_the_wait():
    got = durable(tp.caller, tp.times_out)
    assert isinstance(got, EventTimeout)
    assert user_entries(got.__traceback__) == [("caller", at("caller")), ("times_out", at("times_out"))]


def test_synthetic_frames_hold_the_calls_variables():
    got = durable(tp.approve, "alice", 5)
    frames = {f.f_code.co_name: f for f, _ in traceback.walk_tb(got.__traceback__)}
    assert frames["approve"].f_locals["user"] == "alice" and frames["approve"].f_locals["amount"] == 5
    assert frames["check"].f_locals == {"user": "alice", "amount": 5}
    assert frames["load_limit"].f_locals["limits"] == {"bob": 10}  # the real frame of the failing block
    assert frames["check"].f_globals is tp.__dict__


def test_runtime_frames_stay_out_of_the_stored_story():
    got = durable(tp.approve, "alice", 5)
    stored = getattr(got, tracebacks.SUMMARY_ATTR)
    assert [name for _, _, name in stored] == ["approve", "check", "load_limit"]


def test_block_code_is_named_after_the_function_and_layout_is_unchanged():
    compiled = DurableAstTransformer().compile(tp.check_reraises)
    assert {b.fn.__code__.co_name for b in compiled.blocks} == {"check_reraises"}
    assert {b.fn.__code__.co_qualname for b in compiled.blocks} == {"check_reraises"}


def test_resumed_in_another_process_prints_the_chain(tmp_path):
    (tmp_path / "shop.py").write_text(textwrap.dedent('''
        import asyncio, sys
        from durable import DiskStateStore, DurableBackend, PauseForEventException, make_durable, wait_for_event

        async def load_limit(user):
            return {"bob": 10}[user]

        async def check(user, amount):
            return amount <= await load_limit(user)

        async def approve(user, amount):
            await wait_for_event("go")
            return await check(user, amount)

        program = make_durable(approve)

        if __name__ == "__main__":
            backend = DurableBackend(DiskStateStore(sys.argv[1]))
            if sys.argv[2] == "start":
                try:
                    asyncio.run(program("alice", 5, orchestration_backend=backend, instance_id="x"))
                except PauseForEventException:
                    print("paused")
            else:
                backend.publish_event("x", "go")
                asyncio.run(program(orchestration_backend=backend, instance_id="x"))
    '''))
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}

    def shop(*args):
        return subprocess.run([sys.executable, "shop.py", str(tmp_path / "state"), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)

    assert shop("start").stdout.strip() == "paused"
    err = shop("resume").stderr
    lines = [line.strip() for line in err.splitlines()]
    i = lines.index('File "' + str(tmp_path / "shop.py") + '", line 13, in approve')
    assert lines[i + 1] == "return await check(user, amount)"
    assert lines[i + 2].endswith("line 9, in check") and lines[i + 3] == "return amount <= await load_limit(user)"
    assert lines[i + 4].endswith("line 6, in load_limit") and lines[i + 5] == 'return {"bob": 10}[user]'
    assert "_dur__" not in err and lines[-1] == "KeyError: 'alice'"
