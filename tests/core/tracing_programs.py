"""Programs for tests/core/test_tracebacks.py: each line a test checks is marked ``# at: <tag>``.

Every function here is also run as plain Python by the tests, which compare the
two tracebacks: a durable run must tell the same story.
"""

import asyncio

from durable import wait_for_event


async def step(value):
    return value


async def load_limit(user):
    limits = await step({"bob": 10})
    return limits[user]  # at: load_limit


async def check(user, amount):
    limit = await load_limit(user)  # at: check
    return amount <= limit


async def approve(user, amount):
    ok = await check(user, amount)  # at: approve
    return ok


async def approve_after_event(user, amount):
    await wait_for_event("go")
    ok = await check(user, amount)  # at: approve_after_event
    return ok


async def check_reraises(user):
    try:
        return await load_limit(user)  # at: check_reraises
    except KeyError:
        await step("logged")
        raise


async def check_raises_it_again(user):
    try:
        return await load_limit(user)  # at: check_raises_it_again
    except KeyError as e:
        await step("logged")
        raise e  # at: raise e


async def check_wraps(user):
    try:
        return await load_limit(user)  # at: check_wraps
    except KeyError as e:
        await step("logged")
        raise LookupError(f"no limit for {user}") from e  # at: raise from


async def check_with_finally(user, seen):
    try:
        return await load_limit(user)  # at: check_with_finally
    finally:
        await step("cleanup")
        seen.append("finally")


async def check_no_match(user):
    try:
        return await load_limit(user)  # at: check_no_match
    except ValueError:
        await step("not this one")
        return -1


async def caller(fn, *args):
    return await fn(*args)  # at: caller


async def formats_inside(user):
    import traceback

    try:
        await load_limit(user)  # at: formats_inside
    except KeyError:
        await step("in the handler")
        return traceback.format_exc()


def down():
    fut = asyncio.get_running_loop().create_future()
    fut.set_exception(ConnectionError("down"))
    return fut


async def failing_future():
    await step(1)
    return await down()  # at: failing_future


async def takes_one(a):
    return a


async def bad_call():
    await step(1)
    return await takes_one(1, 2)  # at: bad_call


async def times_out():
    await step(1)
    return await wait_for_event("never", timeout=0)  # at: times_out


async def loop_fails(n):
    total = 0
    for i in range(n):
        total += await step(i)
        if i == 2:
            raise RuntimeError(f"at {i}")  # at: loop_fails
    return total
