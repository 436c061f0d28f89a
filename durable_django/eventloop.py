"""The worker thread's event loop: where the core runtime's coroutine runs during a run.

Why in the calling thread: the runtime's event loop runs in the (sync)
thread that holds the database connection, and the backend's calls and every
thread-sensitive ``sync_to_async`` call of the program (Django's async ORM,
``db_step``) run inline in that thread (see :class:`_InlineExecutor`), so
every query of a run happens on this thread's connection and in its open
transaction: a step's writes commit with the checkpoint that follows it. Each
thread keeps its loop for its later runs (a worker runs one instance after
the other). :func:`run` falls back to :func:`_run_async` (asgiref's
``async_to_sync`` on a long-lived loop of this thread) when this thread's loop
is busy or asgiref does not fit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import os
import threading
import weakref
from typing import Protocol

from asgiref.sync import AsyncToSync, SyncToAsync, async_to_sync

_local = threading.local()


class _Inline(Protocol):
    """A backend that calls its sync methods directly while ``inline`` is set (the loop runs in its thread)."""

    inline: bool


def hidden_loop_call(call, *args):
    """``call(*args)`` with this thread's running event loop hidden from Django's async-safety check.

    Only for the executor's inline mode, where the loop runs in the thread that owns the connection and is
    blocked for the duration of the call anyway.
    """
    loop = asyncio._get_running_loop()
    asyncio._set_running_loop(None)
    try:
        return call(*args)
    finally:
        asyncio._set_running_loop(loop)


class _InlineExecutor(concurrent.futures.Executor):
    """asgiref's thread-sensitive executor for a run whose event loop is in the executor's own thread.

    Every ``sync_to_async(thread_sensitive=True)`` call of the program (the
    async ORM, ``db_step``) runs right here, in the thread that holds the
    connection and its transaction, with no thread hop. asgiref hands over
    ``thread_handler(loop, exc_info, task_context, func, child)``, which would
    record this loop as the thread's "main loop", so that an ``async_to_sync``
    nested in the call (a signal handler pushing to a channel layer...) would
    wait for this very thread; ``func(child)`` is called instead (it restores
    the caller's context and runs the call), and a nested ``async_to_sync``
    gets a loop of its own as in any sync thread.
    """

    def submit(self, fn, /, *args, **kwargs):
        future: concurrent.futures.Future = concurrent.futures.Future()
        if (isinstance(fn, functools.partial) and getattr(fn.func, "__name__", "") == "thread_handler"
                and len(fn.args) == 5 and not args and not kwargs):
            call, call_args = fn.args[3], fn.args[4:]
        else:
            call, call_args = functools.partial(fn, **kwargs), args
        try:
            future.set_result(hidden_loop_call(call, *call_args))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            future.set_exception(exc)
        return future


def _asgiref_fits() -> bool:
    """The inline mode relies on asgiref's ``thread_handler(loop, exc_info, task_context, func, *args)``."""
    try:
        params = list(inspect.signature(SyncToAsync.thread_handler).parameters)
    except (AttributeError, TypeError, ValueError):
        return False
    return params[:5] == ["self", "loop", "exc_info", "task_context", "func"]


_INLINE = _InlineExecutor() if _asgiref_fits() else None


class _InlineLoop(asyncio.SelectorEventLoop):
    """The run's event loop: a call handed to the inline executor is done when ``run_in_executor`` returns.

    asgiref awaits ``run_in_executor``'s future (shielded); a future done at once is awaited without
    suspending the task. So a step's database writes (``db_step``, the async ORM) and the checkpoint that
    follows them run with no other task in between: with parallel branches (asyncio tasks of one run, on
    one connection and one transaction), another branch's checkpoint can never commit a step's writes
    before that step's own checkpoint does, and a failed step's rollback never drops another branch's
    (see :mod:`durable_django.branches`).
    """

    def run_in_executor(self, executor, func, *args):  # type: ignore[override]  # the same, typed loosely
        if executor is None or executor is not _INLINE:
            return super().run_in_executor(executor, func, *args)
        done = _INLINE.submit(func, *args)
        future = self.create_future()
        exc = done.exception()
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(done.result())
        return future


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    if not loop.is_running() and not loop.is_closed():
        try:
            loop.close()
        except Exception:  # noqa: BLE001 - best effort at thread exit
            pass


def run(backend: _Inline, func, *args):
    """Run ``func(*args)`` (the runtime) on an event loop in this thread, kept for the thread's later runs.

    The backend's calls and the program's thread-sensitive calls run inline in
    this thread (see :class:`_InlineExecutor`): the same connection and
    transaction as with ``async_to_sync``, without two thread switches per
    checkpoint and a new thread and event loop per run. Falls back to
    :func:`_run_async` when this thread's loop is already busy (a run nested
    in a step of another run) or asgiref does not fit.
    """
    loop = getattr(_local, "inline_loop", None)
    if _INLINE is None or (loop is not None and loop.is_running()) or asyncio._get_running_loop() is not None:
        return _run_async(func, *args)
    if loop is None or loop.is_closed() or _local.inline_pid != os.getpid():
        loop = _InlineLoop()
        _local.inline_loop, _local.inline_pid = loop, os.getpid()
        weakref.finalize(threading.current_thread(), _close_loop, loop)

    async def main():
        AsyncToSync.executors.current = _INLINE  # this task's context only (asgiref's Local copies on write)
        return await func(*args)

    backend.inline = True
    try:
        return loop.run_until_complete(main())
    finally:
        backend.inline = False


def _serve_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


def _stop_loop(loop: asyncio.AbstractEventLoop) -> None:
    if not loop.is_closed():
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:  # closed meanwhile
            pass


def _run_async(func, *args):
    """``async_to_sync(func)(*args)`` on a long-lived event loop of this thread.

    ``async_to_sync`` called from a plain thread starts a new thread and a new
    event loop for every call; a worker runs one instance after the other, so
    each thread gets one loop (in a daemon thread, stopped when this thread is
    gone) and asgiref is pointed at it the way it is inside ``sync_to_async``.
    Everything else is asgiref's: this thread still runs every thread-sensitive
    call (the backend's, the async ORM's), so they share its connection and
    transaction.
    """
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed() or _local.loop_pid != os.getpid():
        loop = asyncio.new_event_loop()
        threading.Thread(target=_serve_loop, args=(loop,), name="durable-loop", daemon=True).start()
        _local.loop, _local.loop_pid = loop, os.getpid()
        weakref.finalize(threading.current_thread(), _stop_loop, loop)
    tl = SyncToAsync.threadlocal
    saved = getattr(tl, "main_event_loop", None), getattr(tl, "main_event_loop_pid", None)
    tl.main_event_loop, tl.main_event_loop_pid = loop, os.getpid()
    try:
        return async_to_sync(func)(*args)
    finally:
        tl.main_event_loop, tl.main_event_loop_pid = saved
