"""Programs for tests/django/test_tracebacks.py (module level: worker processes import them by dotted path).

The lines the tests check are marked ``# at: <tag>``.
"""

from durable import make_durable, wait_for_event


async def load_limit(user):
    limits = {"bob": 10}
    return limits[user]  # at: load_limit


async def check(user, amount):
    limit = await load_limit(user)  # at: check
    return amount <= limit


@make_durable
async def approve(user, amount):
    await wait_for_event("go")
    ok = await check(user, amount)  # at: approve
    return ok


async def lookup(user):
    try:
        return await load_limit(user)  # at: lookup
    except KeyError as exc:
        raise LookupError(f"no limit for {user}") from exc  # at: raise from


@make_durable
async def approve_wrapped(user):
    await wait_for_event("go")
    return await lookup(user)  # at: approve_wrapped
