"""Durable Python: async functions that survive restarts, pause for events and timers.

A durable function is a plain ``async def``. :func:`make_durable` compiles it
into checkpointable code blocks; every ``await`` is a step boundary after which
the call stack (program counter and locals of every frame) is saved through an
:class:`OrchestrationBackend` into a :class:`StateStore`.

Hosts (such as the Django app) use the names exported here and the public
modules :mod:`durable.signing` (the signed blob format), :mod:`durable.state`
(the keys of a saved state), :mod:`durable.backend`, :mod:`durable.store` and
:mod:`durable.exceptions`; the other modules are internal.
"""

from . import signing
from .backend import DurableBackend, OrchestrationBackend
from .blocks import Cell, CodeBlock, CompiledFunction
from .children import ChildHandle, start_child, start_children
from .compiler import DurableAstTransformer
from .exceptions import (
    CheckpointException,
    CodeChangedError,
    CompileError,
    DeadlineExceeded,
    DurableError,
    EventTimeout,
    InstanceCancelled,
    PauseForEventException,
    StateTamperedError,
    StepTimeout,
    TimerPause,
    UnsignedStateWarning,
)
from .gathering import first, gather
from .history import fork, list_checkpoints
from .primitives import sleep, sleep_until, wait_for_event
from .program import DurableProgram, declared_program, make_durable
from .progress import get_status, publish, published, set_status
from .retries import RetryPolicy, Step, current_attempt, step
from .runtime import DurableRuntime
from .stack import CallStack, FunctionCall
from .state import SavedState, WaitInfo
from .store import BlobStore, DiskStateStore, InMemoryStateStore, StateStore

__version__ = "0.1.0"

__all__ = [
    "BlobStore", "CallStack", "Cell", "CheckpointException", "ChildHandle", "CodeBlock", "CodeChangedError",
    "CompileError", "CompiledFunction", "DeadlineExceeded", "DiskStateStore", "DurableAstTransformer",
    "DurableBackend", "DurableError", "DurableProgram", "DurableRuntime", "EventTimeout", "FunctionCall",
    "InMemoryStateStore", "InstanceCancelled", "OrchestrationBackend", "PauseForEventException", "RetryPolicy",
    "SavedState", "StateStore", "StateTamperedError", "Step", "StepTimeout", "TimerPause", "UnsignedStateWarning",
    "WaitInfo", "current_attempt", "declared_program", "first", "fork", "gather", "get_status", "list_checkpoints",
    "make_durable", "publish", "published", "set_status", "signing", "sleep", "sleep_until", "start_child",
    "start_children", "step",
    "wait_for_event",
]
