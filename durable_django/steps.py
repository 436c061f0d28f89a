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

P = ParamSpec("P")
R = TypeVar("R")


def db_step(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Make a sync function an awaitable durable step that runs on the worker's connection."""
    wrapped = sync_to_async(func, thread_sensitive=True)

    @functools.wraps(func)
    def call(*args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        return wrapped(*args, **kwargs)

    return call
