"""Durable Python: async functions that survive restarts, pause for events and timers.

A durable function is a plain ``async def``. :func:`make_durable` compiles it
into checkpointable code blocks; every ``await`` is a step boundary after which
the call stack (program counter and locals of every frame) is saved through an
:class:`OrchestrationBackend` into a :class:`StateStore`.
"""

from .backend import DurableBackend, OrchestrationBackend
from .compiler import Cell, CodeBlock, CompiledFunction, DurableAstTransformer
from .exceptions import (
    CheckpointException,
    CodeChangedError,
    CompileError,
    DurableError,
    EventTimeout,
    InstanceCancelled,
    PauseForEventException,
    StateTamperedError,
    TimerPause,
    UnsignedStateWarning,
)
from .primitives import sleep, sleep_until, wait_for_event
from .runtime import DurableProgram, DurableRuntime, make_durable
from .stack import CallStack, FunctionCall
from .store import DiskStateStore, InMemoryStateStore, StateStore

__version__ = "0.1.0"

__all__ = [
    "CallStack", "Cell", "CheckpointException", "CodeBlock", "CodeChangedError", "CompileError",
    "CompiledFunction", "DiskStateStore", "DurableAstTransformer", "DurableBackend", "DurableError",
    "DurableProgram", "DurableRuntime", "EventTimeout", "FunctionCall", "InMemoryStateStore",
    "InstanceCancelled", "OrchestrationBackend", "PauseForEventException", "StateStore", "StateTamperedError",
    "TimerPause", "UnsignedStateWarning", "make_durable", "sleep", "sleep_until", "wait_for_event",
]
