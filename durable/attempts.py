"""Step attempts: run a step with its retry policy and timeout; back off on a durable timer."""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

from .exceptions import CheckpointException, DurableError, PauseForEventException, StepTimeout, TimerPause
from .retries import Step, _attempt
from .tracebacks import runtime_file
from .waits import Waits

runtime_file(__file__)  # frames of this module are the runtime's own (see durable.tracebacks)


class Attempts(Waits):
    """The runtime's step calls with retries (a mixin of :class:`~durable.DurableRuntime`)."""

    async def _step(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], attempt: int = 1,
                    first: Any = None) -> tuple[Any, BaseException | None]:
        """Run a step call with its retry policy and timeout: (value, None) or (None, exception to raise).

        A failed attempt that is retried after a delay pauses the instance on
        a durable timer (``state["retry"]`` says what to call again).
        """
        if func.__class__ is Step:
            policy, timeout, call = func.retry or self.retry, func.timeout, func.fn
        else:
            policy, timeout, call = self.retry, None, func
        while True:
            token = _attempt.set(attempt)
            limit = None
            try:
                aw, first = (call(*args, **kwargs) if first is None else first), None
                if timeout is None:
                    return await aw, None
                started = time.monotonic()
                async with asyncio.timeout(timeout) as limit:
                    value = await aw
                if time.monotonic() - started > timeout:  # it blocked the event loop, so the timer could not fire
                    raise StepTimeout(f"{_name(call)} ran longer than its timeout of {timeout} s (attempt {attempt}; "
                                      "it blocked the event loop, so its result is dropped)")
                return value, None
            except PauseForEventException:
                return None, pause_in_step(call)
            except Exception as exc:
                if limit is not None and isinstance(exc, TimeoutError) and limit.expired():
                    exc = StepTimeout(f"{_name(call)} ran longer than its timeout of {timeout} s (attempt {attempt})")
                await self._discard()
                if policy is None or not policy.retries(exc, attempt):
                    return None, exc
                stop = self._interruption() if self._watch else None
                if stop is not None:  # cancelled, or past the deadline, during the attempt: no more attempts
                    stop.__context__ = exc
                    return None, stop
                delay = policy.delay(attempt)
                attempt += 1
                if delay > 0:
                    await self._backoff(func, args, kwargs, attempt, exc, delay, policy.max_attempts)
            finally:
                _attempt.reset(token)

    async def _backoff(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], attempt: int,
                       exc: BaseException, delay: float, max_attempts: int) -> None:
        """Pause on a durable timer before attempt ``attempt`` of a step (raises the pause)."""
        state = self._live()
        due = self.clock() + delay
        state["retry"] = {"call": (func, args, kwargs), "attempt": attempt, "max_attempts": max_attempts,
                          "step": _name(func), "error": f"{type(exc).__name__}: {exc}"[:1000]}
        try:
            await self._pause({"kind": "timer", "due": due, "retry": True}, TimerPause(
                None, due=due, instance_id=self.instance_id))
        except CheckpointException as err:
            state.pop("retry", None)
            raise CheckpointException(f"the retry of {_name(func)} cannot be saved (its function and arguments are "
                                      f"kept for the next attempt and must be picklable): {err}") from err

    async def _discard(self) -> None:
        """Tell the backend a step failed: it drops the step's writes (the Django app rolls them back).

        Not in a parallel branch: the writes the backend would drop are those of every branch since the last
        checkpoint, other branches' completed steps included (see :mod:`durable.branches`)."""
        hook = getattr(self._io, "discard_step_writes", None)
        if hook is not None and self.branch is None:
            done = hook(self.instance_id)
            if inspect.isawaitable(done):
                await done


def pause_in_step(aw: Any) -> DurableError:
    return DurableError(f"{aw!r} raised PauseForEventException while running as one step; pauses must be written "
                        "in durable code (`raise PauseForEventException(name)` or `await wait_for_event(name)`)")


def _name(func: Any) -> str:
    return getattr(func, "__qualname__", None) or repr(func)
