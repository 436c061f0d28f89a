"""FunctionCall.append_code_block: code appended to a running call (streamed code)."""

import asyncio

import pytest

from durable import (
    CallStack,
    CodeBlock,
    CompileError,
    DurableBackend,
    DurableRuntime,
    FunctionCall,
    PauseForEventException,
    wait_for_event,
)

seen = []


async def step(x):
    seen.append(x)
    return x


def test_appended_chunks_share_locals_and_run_in_order():
    seen.clear()
    call = FunctionCall(module=__name__)
    call.append_code_block("x = await step(1)\ny = x + 1")
    call.append_code_block(CodeBlock.from_source("""
        for i in range(3):
            y += await step(i)
    """))
    call.append_code_block("return y * 10")
    rt = DurableRuntime(DurableBackend(), "script-1")
    assert asyncio.run(rt.run_stack(CallStack([call]))) == 50
    assert seen == [1, 0, 1, 2]


def test_script_call_pauses_and_resumes_from_saved_chunks():
    backend = DurableBackend()
    call = FunctionCall(module=__name__)
    call.append_code_block("a = await step('first')")
    call.append_code_block("b = await wait_for_event('more')\nreturn a, b")
    with pytest.raises(PauseForEventException):
        asyncio.run(DurableRuntime(backend, "script-2").run_stack(CallStack([call])))
    backend.publish_event("script-2", "more", 7)
    assert asyncio.run(DurableRuntime(backend, "script-2").run(None)) == ("first", 7)
    assert wait_for_event  # imported for the chunk's globals


def test_chunk_ending_without_return_finishes_with_none():
    call = FunctionCall(module=__name__)
    call.append_code_block("z = 1")
    assert asyncio.run(DurableRuntime(DurableBackend(), "s3").run_stack(CallStack([call]))) is None


def test_bad_chunks_are_refused():
    call = FunctionCall(module=__name__)
    with pytest.raises(CompileError):
        call.append_code_block("x = = 1")
    with pytest.raises(TypeError):
        call.append_code_block(42)
