"""Retry policies of steps: how often a failed step is tried again, and how long to wait in between.

A *step* is a call the runtime awaits as one unit (anything that is not a
nested durable call or a wait). :func:`step` declares one, with a
:class:`RetryPolicy` and a timeout; ``make_durable(fn, retry=...)`` gives every
step call of a program a default policy. The runtime (see
:meth:`durable.DurableRuntime`) runs the attempts; the wait between two of them
is a durable timer, so no worker is held during a backoff and a crash loses
nothing.
"""

from __future__ import annotations

import functools
import importlib
import math
import random
import sys
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, ParamSpec, TypeVar, overload

from .exceptions import DeadlineExceeded, InstanceCancelled

P = ParamSpec("P")
R = TypeVar("R")

#: The attempt number of the step running now (1 for a first attempt and outside retried steps).
_attempt: ContextVar[int] = ContextVar("durable_attempt", default=1)

#: Never retried, whatever the policy says: the instance is being stopped.
_NEVER = (DeadlineExceeded, InstanceCancelled)


def current_attempt() -> int:
    """The attempt number (1, 2, ...) of the step that is running; 1 outside a retried step."""
    return _attempt.get()


def _seconds(what: str, value: float | timedelta) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds or a timedelta, got {value!r}")
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class RetryPolicy:
    """How a failing step is tried again (Temporal's and DBOS's knobs, with their defaults' spirit).

    Attempt ``n`` (1-based) that fails with a retryable exception is followed,
    after ``min(initial_interval * backoff ** (n - 1), max_interval)`` seconds
    give or take ``jitter`` (a fraction: 0.1 is +/-10%), by attempt ``n + 1``,
    up to ``max_attempts`` in all. An exception of a ``non_retryable`` type (or
    not of a ``retry_on`` type) is raised at once; so are
    :class:`~durable.DeadlineExceeded` and :class:`~durable.InstanceCancelled`.
    """

    max_attempts: int = 3
    initial_interval: float = 1.0
    backoff: float = 2.0
    max_interval: float = 60.0
    jitter: float = 0.1
    non_retryable: tuple[type[BaseException], ...] = ()
    retry_on: tuple[type[BaseException], ...] = field(default=(Exception,))

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be an int >= 1, got {self.max_attempts!r}")
        object.__setattr__(self, "initial_interval", _seconds("RetryPolicy.initial_interval", self.initial_interval))
        object.__setattr__(self, "max_interval", _seconds("RetryPolicy.max_interval", self.max_interval))
        backoff = self.backoff
        if isinstance(backoff, bool) or not isinstance(backoff, int | float) or not 1 <= backoff < math.inf:
            raise ValueError(f"RetryPolicy.backoff must be a finite number >= 1, got {self.backoff!r}")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, int | float) or not 0 <= self.jitter <= 1:
            raise ValueError(f"RetryPolicy.jitter must be a fraction between 0 and 1, got {self.jitter!r}")
        for name in ("non_retryable", "retry_on"):
            types = getattr(self, name)
            if isinstance(types, type):
                types = (types,)
                object.__setattr__(self, name, types)
            if not isinstance(types, tuple) or not all(isinstance(t, type) and issubclass(t, BaseException)
                                                       for t in types):
                raise TypeError(f"RetryPolicy.{name} must be a tuple of exception classes, got {types!r}")

    def retries(self, exc: BaseException, attempt: int) -> bool:
        """Is attempt ``attempt``, which raised ``exc``, followed by another?"""
        return (attempt < self.max_attempts and isinstance(exc, self.retry_on)
                and not isinstance(exc, self.non_retryable) and not isinstance(exc, _NEVER))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after attempt ``attempt`` failed (jitter included)."""
        try:
            base = self.initial_interval * self.backoff ** (attempt - 1)
        except OverflowError:
            base = math.inf
        base = min(base, self.max_interval)
        if self.jitter and base:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return base


def as_policy(retry: RetryPolicy | int | None) -> RetryPolicy | None:
    """``retry=`` as given to :func:`step` or ``make_durable``: a policy, an attempt count, or None."""
    if retry is None or isinstance(retry, RetryPolicy):
        return retry
    if isinstance(retry, int) and not isinstance(retry, bool):
        return RetryPolicy(max_attempts=retry)
    raise TypeError(f"retry= takes a RetryPolicy or a number of attempts, not {retry!r}")


class Step(Generic[P, R]):
    """A function that runs as one step, with its retry policy and timeout (see :func:`step`).

    Calling it outside durable code calls the function once (no retries, no timeout).
    """

    def __init__(self, fn: Callable[P, Awaitable[R]], retry: RetryPolicy | None, timeout: float | None) -> None:
        self.fn = fn
        self.retry = retry
        self.timeout = timeout
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        """By reference when it is its module's attribute (a checkpoint then runs the code installed now)."""
        module, qualname = getattr(self, "__module__", None), getattr(self, "__qualname__", "")
        if module in sys.modules and "<locals>" not in qualname:
            obj: Any = sys.modules[module]
            for part in qualname.split("."):
                obj = getattr(obj, part, None)
            if obj is self:
                return (_step_by_ref, (module, qualname))
        return (Step, (self.fn, self.retry, self.timeout))

    def __repr__(self) -> str:
        return f"<durable.step {getattr(self.fn, '__qualname__', self.fn)!r}>"


def _step_by_ref(module: str, qualname: str) -> Step[..., Any]:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Step):
        raise TypeError(f"{module}.{qualname} is no longer a durable.step (it is {type(obj).__name__})")
    return obj


@overload
def step(fn: Callable[P, Awaitable[R]], /, *, retry: RetryPolicy | int | None = None,
         timeout: float | timedelta | None = None) -> Step[P, R]: ...


@overload
def step(fn: None = None, /, *, retry: RetryPolicy | int | None = None,
         timeout: float | timedelta | None = None) -> Callable[[Callable[P, Awaitable[R]]], Step[P, R]]: ...


def step(fn: Callable[P, Awaitable[R]] | None = None, /, *, retry: RetryPolicy | int | None = None,
         timeout: float | timedelta | None = None) -> Step[P, R] | Callable[[Callable[P, Awaitable[R]]], Step[P, R]]:
    """Declare a function that durable code awaits as one step, with a retry policy and a timeout.

    ``@step(retry=RetryPolicy(max_attempts=5), timeout=30)`` on an ``async def``
    (or on a ``db_step``, or any function returning an awaitable). The function
    runs as one step even when it is an ``async def`` of your own code: it is
    not a nested durable call, so it cannot pause. ``retry=3`` is
    ``RetryPolicy(max_attempts=3)``. ``timeout`` (seconds) raises
    :class:`~durable.StepTimeout` in an attempt that runs longer (retried like
    any error); a step that blocks the event loop cannot be interrupted, so its
    timeout is raised when it returns.
    """
    policy = as_policy(retry)
    limit = None if timeout is None else _seconds("step(timeout=...)", timeout)
    if limit is not None and limit <= 0:
        raise ValueError(f"step(timeout=...) must be > 0 seconds, got {timeout!r}")

    def wrap(f: Callable[P, Awaitable[R]]) -> Step[P, R]:
        if isinstance(f, Step):
            f = f.fn
        if not callable(f):
            raise TypeError(f"step() decorates a function, not {f!r}")
        return Step(f, policy, limit)

    return wrap if fn is None else wrap(fn)
