"""Helpers for steps that write to the database.

A durable step is any awaited call. Its ORM writes are exactly-once when they
run on the worker's connection, inside the transaction that the next
checkpoint commits. Two ways get there:

* Django's async ORM (``await Order.objects.acreate(...)``, ``await obj.asave()``);
* a plain function decorated with :func:`db_step` and awaited::

      @db_step
      def reserve(order_id):
          Order.objects.filter(pk=order_id).update(reserved=True)
          Stock.objects.filter(...).update(count=F("count") - 1)

      async def order_process(order_id):
          await reserve(order_id)       # one step; commits with its checkpoint

In parallel branches (``durable.gather``), a ``db_step`` runs alone: no other
branch's ``db_step`` starts until its checkpoint has committed it, and a
failure rolls back its own savepoint only. Plain async-ORM writes in a
branch's step are at least once there (another branch's checkpoint may commit
them first): write through ``db_step`` in branches.

Do not call the sync ORM directly in durable code (Django refuses it in async
context), and do not wrap a step in ``sync_to_async(thread_sensitive=False)``
or ``asyncio.to_thread``: that moves the writes to another connection, which
commits on its own.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, connections, router, transaction

from durable.state import current_branch

P = ParamSpec("P")
R = TypeVar("R")


def db_step(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Make a sync function an awaitable durable step that runs on the worker's connection.

    A step that raises leaves none of its writes behind: they are rolled back
    before the exception reaches the program, so an ``except`` around the
    await (or the failed instance's last checkpoint) commits nothing of it.
    """

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        if _in_branch():  # other branches' writes may wait for their checkpoints too
            with transaction.atomic(using=_alias()):
                return func(*args, **kwargs)
        try:
            return func(*args, **kwargs)
        except BaseException:
            _discard_writes()
            raise

    wrapped = sync_to_async(run, thread_sensitive=True)

    @functools.wraps(func)
    def call(*args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        return wrapped(*args, **kwargs)

    # In a parallel branch, the step runs alone until its checkpoint commits it (see durable.branches), and a
    # failure rolls back its savepoint only.
    call.durable_exclusive = True  # type: ignore[attr-defined]
    return call


def _in_branch() -> bool:
    """Does the step run in a parallel branch? (A function, not the context variable itself, in ``run``: a step
    pickled by value with its retry must not carry the variable, which cannot be pickled.)"""
    return current_branch.get() is not None


def _alias() -> str:
    """The database of the app's rows, as the routers say (this module is imported before the apps are ready, so
    it looks the model up by name)."""
    return router.db_for_write(apps.get_model("durable_django", "DurableInstance")) or DEFAULT_DB_ALIAS


def _discard_writes() -> None:
    """Roll back the failed step's writes in the transaction the executor manages.

    That transaction holds only this step's writes: the checkpoint after the
    previous step committed. Rolling it back also leaves a usable connection
    where a failed statement aborted the transaction (PostgreSQL), so the
    checkpoint that follows can be written. Inside an ``atomic`` block (the
    executor does not manage it: a test's transaction, ``ATOMIC_STEPS`` off)
    the caller's block decides. (The routers' database of the app's rows, as
    :func:`durable_django.db.alias` finds it; this module is imported before
    the apps are ready, so it does not import the models.)
    """
    conn = connections[_alias()]
    if conn.connection is not None and not conn.get_autocommit() and not conn.in_atomic_block:
        conn.rollback()
