"""The functions the core benchmark runs.

They live in a real module (not ``exec``'d text) so that the runtime treats
the awaited ``async def`` helpers as nested durable calls, exactly as it
treats user code. Every function here is a plain ``async def``: the
benchmark runs the same objects natively (``asyncio``) and durably
(``make_durable``).
"""

from __future__ import annotations

from durable import wait_for_event


async def step(acc: int, i: int) -> int:
    """One trivial step: a nested durable call with no await inside (one checkpoint)."""
    return acc + i


async def many_steps(n: int) -> int:
    """``n`` awaited steps in a frame of ~20 small locals (ints and short strings)."""
    a0, a1, a2, a3, a4, a5, a6, a7, a8, a9 = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9
    s0, s1, s2, s3, s4 = "alpha", "beta", "gamma", "delta", "eps"
    s5, s6, s7, s8, s9 = "k-0001", "k-0002", "k-0003", "k-0004", "k-0005"
    acc = 0
    for i in range(n):
        acc = await step(acc, i)
    return acc + a0 + a9 + len(s0) + len(s9) + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + len(s1 + s2 + s3 + s4 + s5 + s6
                                                                                            + s7 + s8)


async def steps_then_wait(k: int) -> int:
    """``k`` awaited steps, then a pause until the event ``"go"`` arrives."""
    a0, a1, a2, a3, a4, a5, a6, a7, a8, a9 = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9
    s0, s1, s2, s3, s4 = "alpha", "beta", "gamma", "delta", "eps"
    acc = 0
    for i in range(k):
        acc = await step(acc, i)
    extra = await wait_for_event("go")
    return acc + extra + a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + len(s0 + s1 + s2 + s3 + s4)


async def nested(depth: int, m: int) -> int:
    """Recurse ``depth`` durable calls deep, then do ``m`` awaited steps at the bottom."""
    if depth > 0:
        r = await nested(depth - 1, m)
        return r + 1
    acc = 0
    for i in range(m):
        acc = await step(acc, i)
    return acc


async def nested_wait(depth: int) -> int:
    """Recurse ``depth`` durable calls deep, then pause until ``"go"``."""
    if depth > 0:
        r = await nested_wait(depth - 1)
        return r + 1
    return await wait_for_event("go")


async def medium(orders: list, limit: int = 10) -> dict:
    """A ~30-line workflow (loops, if, try/except/finally, while) used to time the compiler."""
    totals: dict = {}
    failed = []
    seen = 0
    for order in orders:
        seen += 1
        if seen > limit:
            break
        try:
            price = await step(order["qty"], order["price"])
            if price < 0:
                raise ValueError("negative price")
            totals[order["id"]] = price
        except KeyError as exc:
            failed.append(("missing", str(exc)))
            continue
        except ValueError:
            failed.append(("value", order.get("id")))
        finally:
            seen = await step(seen, 0)
    retries = 3
    while retries > 0:
        retries -= 1
        try:
            ok = await step(retries, 1)
        except Exception:
            ok = 0
        else:
            ok += 1
        if ok > 2:
            break
    summary = {"count": len(totals), "failed": failed, "retries": retries}
    summary["total"] = sum(totals.values()) if totals else 0
    return summary
