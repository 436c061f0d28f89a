"""A corpus of small async programs for the differential tests (plain Python vs durable).

Conventions:

* ``TRACE`` is the outside world: every side effect of a program lands there. ``await step(label, value)``
  (a nested durable call) records ``(label, value)`` and returns ``value``; its completion is checkpointed.
  ``note(label, value)`` is a plain (non-awaited) side effect between steps.
* ``Crash`` simulates a process dying: ``arm_crash(n)`` makes the n-th ``step`` call raise it before it
  records anything. It is a ``BaseException``, so neither the programs nor the runtime catch it.
* Programs keep their locals picklable (they are checkpointed after every await) and use no globals for
  state, so that plain Python and a durable run (with crashes and resumes) must agree on result and trace.
* Trace entries are deep copies (a program may mutate a value after recording it).
* ``wait_for_event`` is the real durable primitive; the plain-Python run swaps in a stand-in that returns the
  case's payload (see ``plain_events``).
* ``await flaky(label, fails, value)`` is a step with a retry policy (:data:`RETRY`) that fails (``ValueError``)
  its first ``fails`` attempts; each attempt records ``(label, "attempt", n)``. The plain-Python run swaps in
  :func:`plain_flaky`, the same retry loop written by hand (issue 13).

* Parallel branches (``durable.gather``, ``asyncio.gather``, ``durable.first``): a branch's trace labels read
  ``"A|x"`` (branch ``A``; nested ``"A|B|x"``), so that traces are compared up to the interleaving of
  independent branches (see ``difftools.canonical``). ``OWNERS`` holds, for each entry, the durable branch path
  it was made in (``durable.state.current_branch``; None in plain runs): a crash loses, per branch, what ran
  since *that branch's* last checkpoint. In plain runs, waiting for an event the case does not publish waits
  until cancelled (a branch that only ends by being cancelled when another decides its group). A branch
  cancelled in a durable run gets ``InstanceCancelled`` at its next await, in a plain run ``CancelledError`` in
  the native await it is suspended at: the corpus cancels only branches that wait for such an event, and
  branches make no plain effect (``note``) before a native suspension without a checkpoint between them.

Each ``@case(...)`` registers one run of the decorated function with those arguments.
"""

import asyncio
import contextlib
import copy
from dataclasses import dataclass, field

import durable
from durable import RetryPolicy, current_attempt, sleep, wait_for_event
from durable.state import current_branch

TRACE: list = []
#: The durable branch path each TRACE entry was made in (None: the instance itself, or a plain run).
OWNERS: list = []
_CRASH = {"at": None, "count": 0}


class Crash(BaseException):
    """A simulated process crash."""


def reset() -> None:
    TRACE.clear()
    OWNERS.clear()
    _CRASH["at"] = None
    _CRASH["count"] = 0


def arm_crash(n: int | None) -> None:
    """Make the n-th ``step`` call from now crash (None: never)."""
    _CRASH["count"] = 0
    _CRASH["at"] = n


def disarm() -> None:
    _CRASH["at"] = None


def step_calls() -> int:
    return _CRASH["count"]


def record(entry) -> None:
    TRACE.append(entry)
    OWNERS.append(current_branch.get())


def note(label, value=None):
    record((label, copy.deepcopy(value)))
    return value


async def step(label, value=None):
    _CRASH["count"] += 1
    if _CRASH["count"] == _CRASH["at"]:
        _CRASH["at"] = None
        raise Crash(label)
    record((label, copy.deepcopy(value)))
    return value


async def fail(label, exc_type=ValueError):
    """A nested durable call that pauses, then raises."""
    await step(label, "fail")
    raise exc_type(label)


@dataclass
class Case:
    id: str
    fn: object
    args: tuple
    kwargs: dict = field(default_factory=dict)
    events: dict = field(default_factory=dict)
    marks: tuple = ()


CASES: list[Case] = []


def case(*args, id=None, events=None, kwargs=None):
    def deco(fn):
        CASES.append(Case(id or fn.__name__, fn, args, kwargs or {}, events or {}))
        return fn
    return deco


@contextlib.contextmanager
def plain_events(events: dict):
    """Run plain Python with ``wait_for_event`` returning the case's payloads (and ``sleep`` a no-op)."""
    async def fake_wait(name, timeout=None):
        if name not in events:  # never published: wait until cancelled
            await asyncio.get_running_loop().create_future()
        return events[name]

    async def fake_sleep(seconds):
        return None

    globals().update(wait_for_event=fake_wait, sleep=fake_sleep, flaky=plain_flaky,
                     current_attempt=lambda: _ATTEMPT[0])
    try:
        yield
    finally:
        globals().update(wait_for_event=durable.wait_for_event, sleep=durable.sleep, flaky=_durable_flaky,
                         current_attempt=durable.current_attempt)


async def leaf(value):
    """A native awaitable (asyncio.sleep) run as one step, returning ``value``."""
    return await asyncio.sleep(0, result=value)


# ---------------------------------------------------------------------------------------------------------------
# a retried step (issue 13) and its plain-Python oracle

#: The policy of ``flaky``: durable timers of ~1s, ~2s between its attempts (the drivers' clocks jump to them).
MAX_ATTEMPTS = 3
RETRY = RetryPolicy(max_attempts=MAX_ATTEMPTS, initial_interval=1.0, backoff=2.0, max_interval=10.0, jitter=0.1,
                    non_retryable=(KeyError,))
_ATTEMPT = [1]  # the attempt of the plain-Python retry loop (what current_attempt() says in a durable run)


async def _flaky_body(label, fails, value):
    _CRASH["count"] += 1
    if _CRASH["count"] == _CRASH["at"]:
        _CRASH["at"] = None
        raise Crash(label)
    attempt = current_attempt()
    record((label, "attempt", attempt))
    if attempt <= fails:
        raise ValueError(f"{label} failed attempt {attempt}")
    if value == "non-retryable":
        raise KeyError(label)
    return value


@durable.step(retry=RETRY)
async def flaky(label, fails, value=None):
    """Fails (ValueError) on its first ``fails`` attempts, then returns ``value`` (KeyError for "non-retryable")."""
    return await _flaky_body(label, fails, value)


_durable_flaky = flaky


async def plain_flaky(label, fails, value=None):
    """The oracle of ``flaky``: RETRY's loop written by hand (KeyError is not retried)."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        _ATTEMPT[0] = attempt
        try:
            return await _flaky_body(label, fails, value)
        except KeyError:
            raise
        except Exception:
            if attempt == MAX_ATTEMPTS:
                raise
        finally:
            _ATTEMPT[0] = 1


# ---------------------------------------------------------------------------------------------------------------
# straight line, if, loops


@case(2, 3)
async def straight_line(a, b):
    x = await step("a", a)
    note("between", x)
    y = await step("b", b)
    z = await asyncio.sleep(0, result=x * y)
    return x + y + z


@case(0, id="if_elif_else_0")
@case(1, id="if_elif_else_1")
@case(5, id="if_elif_else_5")
async def if_elif_else(n):
    if await step("cond1", n) == 0:
        r = await step("zero", "z")
    elif await step("cond2", n) == 1:
        note("one")
        r = await step("one", "o")
    else:
        r = "many"
        if n > 3:
            r = await step("big", r + "!")
    note("end", r)
    return r


@case(2, id="for_else_no_break")
@case(6, id="for_else_break")
async def for_break_else(n):
    acc = []
    for i in range(n):
        v = await step("i", i)
        if v == 3:
            note("break", v)
            break
        acc.append(v)
    else:
        await step("else", len(acc))
    return acc


@case(7)
async def for_continue(n):
    total = 0
    for i in range(n):
        if i % 2:
            await step("skip", i)
            continue
        total += await step("add", i)
        if i == 4:
            continue
        note("after", i)
    return total


@case(4)
async def while_await_condition(n):
    i = 0
    while await step("cond", i) < n:
        i += await step("inc", 1)
    else:
        note("while-else", i)
    return i


@case(10)
async def while_break_continue_else(n):
    i = 0
    out = []
    while i < n:
        i += 1
        if i % 3 == 0:
            await step("cont", i)
            continue
        if await step("check", i) > 7:
            break
        out.append(i)
    else:
        out.append("else")
    return out


@case(3)
async def nested_loops(n):
    found = None
    for i in range(n):
        for j in range(n):
            if await step("pair", (i, j)) == (1, 2):
                found = (i, j)
                break
            if j > i:
                continue
            note("inner", (i, j))
        else:
            await step("inner-else", i)
            continue
        break
    return found


@case([3, 1, 2], {"a": 1, "b": 2})
async def loops_over_iterators(items, mapping):
    out = []
    for i, x in enumerate(items):
        out.append(await step("enum", (i, x)))
    for k, v in mapping.items():
        out.append(await step("item", (k, v)))
    for a, b in zip(items, "xyz"):
        out.append(await step("zip", a + ord(b)))
    for x in sorted(items, reverse=True):
        out.append(await leaf(x))
    for ch in "ab":
        out.append(await step("str", ch))
    return out


# ---------------------------------------------------------------------------------------------------------------
# try / except / else / finally


@case(False, id="try_all_clauses_ok")
@case(True, id="try_all_clauses_raise")
async def try_all_clauses(flag):
    try:
        await step("try", 1)
        if flag:
            await fail("inner")
        await step("try-end", 2)
    except ValueError as e:
        await step("except", str(e))
    else:
        await step("else", 3)
    finally:
        await step("finally", 4)
    return await step("after", 5)


@case(1)
async def return_in_try_finally(x):
    try:
        v = await step("try", x)
        return v * 10
    finally:
        x = await step("finally", x + 1)
        note("x", x)


@case(1)
async def finally_overrides_return(x):
    try:
        await step("try", x)
        return "from-try"
    finally:
        await step("finally", x)
        return "from-finally"  # noqa: B012


@case(6)
async def break_continue_in_try_finally(n):
    out = []
    for i in range(n):
        try:
            if i == 1:
                continue
            if i == 4:
                break
            out.append(await step("body", i))
        finally:
            out.append(await step("fin", i))
    return out


@case(3)
async def nested_finally_order(x):
    try:
        try:
            await step("inner-try", x)
            return await step("ret", x * 2)
        finally:
            await step("inner-finally", x)
    finally:
        await step("outer-finally", x)


@case(0, id="except_handler_raises")
async def except_handler_raises(x):
    try:
        try:
            await fail("a")
        except ValueError as e:
            await step("handler", str(e))
            raise KeyError("from-handler") from e
        finally:
            await step("finally", x)
    except KeyError as e:
        cause = e.__cause__
        await step("outer", (repr(e), type(cause).__name__, str(cause)))
        return "caught"


@case(1)
async def bare_reraise(x):
    try:
        await fail("deep", KeyError)
    except KeyError:
        await step("log", x)
        raise


@case(5)
async def uncaught_after_pauses(x):
    await step("one", x)
    if x > 2:
        raise RuntimeError(f"bad x={x}")
    return x


@case(2)
async def exception_context(x):
    try:
        try:
            await fail("first")
        except ValueError:
            await step("mid", x)
            raise TypeError("second")
    except TypeError as e:
        ctx = e.__context__
        return await step("ctx", (type(e).__name__, type(ctx).__name__, str(ctx)))


@case(3)
async def except_var_is_unbound_after(x):
    try:
        await fail("boom")
    except ValueError as e:
        msg = await step("msg", str(e))
    try:
        e  # noqa: B018
        unbound = False
    except NameError:
        unbound = True
    return await step("unbound", (msg, unbound))


@case(3, id="except_tuple_types")
async def except_tuple_and_order(x):
    out = []
    for exc in (ValueError, KeyError, ZeroDivisionError, IndexError):
        try:
            await step("try", exc.__name__)
            if exc is ZeroDivisionError:
                out.append(x / 0)
            elif exc is IndexError:
                out.append([][x])
            else:
                await fail("f", exc)
        except (KeyError, ZeroDivisionError) as e:
            out.append(await step("first", type(e).__name__))
        except LookupError as e:
            out.append(await step("lookup", type(e).__name__))
        except Exception as e:
            out.append(await step("any", type(e).__name__))
    return out


@case(4)
async def exception_in_else_clause(x):
    try:
        try:
            await step("try", x)
        except KeyError:
            await step("never", x)
        else:
            await step("else", x)
            raise ValueError("from-else")
        finally:
            await step("finally", x)
    except ValueError as e:
        return await step("caught", str(e))


@case(5)
async def break_in_finally_swallows(n):
    out = []
    for i in range(n):
        try:
            await step("body", i)
            if i == 2:
                raise ValueError("swallowed")
        finally:
            out.append(i)
            if i == 2:
                await step("fin-break", i)
                break  # noqa: B012
    return out


@case(4)
async def continue_in_finally(n):
    out = []
    for i in range(n):
        try:
            if i % 2:
                raise KeyError(i)
            out.append(await step("even", i))
        finally:
            await step("fin", i)
            continue  # noqa: B012
    return out


@case(6)
async def return_deep_in_loops_in_try(n):
    out = []
    try:
        for i in range(n):
            try:
                while True:
                    v = await step("v", i)
                    if v == 3:
                        return ("early", out)
                    out.append(v)
                    break
            finally:
                out.append(await step("inner-fin", -i))
    finally:
        await step("outer-fin", len(out))
    return "unreached"


@case(3)
async def raise_with_awaits(x):
    try:
        raise ValueError(await step("msg", f"m{x}"))
    except ValueError as e:
        r = str(e)
    try:
        assert await step("ok", x > 5), await step("why", "x small")
    except AssertionError as e:
        r += "|" + str(e)
    return r


# ---------------------------------------------------------------------------------------------------------------
# frames: nested durable calls, recursion, methods, arguments


async def level3(x):
    await step("l3", x)
    if x < 0:
        raise ValueError(f"neg {x}")
    return x * 3


async def level2(x):
    v = await level3(x)
    return await step("l2", v + 1)


async def level1(x):
    try:
        return await level2(x)
    except ValueError as e:
        await step("l1-caught", str(e))
        return None


@case([1, -2, 3])
async def exceptions_cross_frames(xs):
    out = []
    for x in xs:
        out.append(await level1(x))
    try:
        await level2(-9)
    except ValueError as e:
        out.append(("top", str(e)))
    return out


async def fib(n):
    if n < 2:
        return await step("base", n)
    return await fib(n - 1) + await fib(n - 2)


@case(6)
async def recursion(n):
    return await fib(n)


class Account:
    def __init__(self, owner):
        self.owner = owner
        self.balance = 0
        self.history = []

    async def deposit(self, amount):
        self.balance += await step("deposit", amount)
        self.history.append(amount)
        return self.balance

    async def withdraw(self, amount):
        if amount > self.balance:
            await step("refused", amount)
            raise ValueError(f"{self.owner}: insufficient funds for {amount}")
        self.balance -= await step("withdraw", amount)
        return self.balance

    @classmethod
    async def open(cls, owner):
        await step("open", owner)
        return cls(owner)

    @staticmethod
    async def fee(amount):
        return await step("fee", amount // 10)


class Savings(Account):
    async def deposit(self, amount):
        bonus = await self.fee(amount)
        return await super().deposit(amount + bonus)


@case("ann")
async def methods(owner):
    acc = await Account.open(owner)
    await acc.deposit(50)
    await acc.withdraw(20)
    try:
        await acc.withdraw(100)
    except ValueError as e:
        note("error", str(e))
    sav = Savings(owner + "-s")
    await sav.deposit(100)
    return (acc.balance, acc.history, sav.balance, sav.history)


async def signature(a, b=2, *rest, c, d=4, **kw):
    await step("sig", (a, b, rest, c, d, sorted(kw.items())))
    return a + b + sum(rest) + c + d + sum(kw.values())


@case(1, kwargs={"extra": 100})
async def args_kwargs_defaults(a, *more, **extra):
    r1 = await signature(a, c=3)
    r2 = await signature(a, 10, 20, 30, c=1, d=2, e=5)
    args = (await step("args", [1, 2]))
    kws = await step("kws", {"c": 7, "z": 9})
    r3 = await signature(*args, *more, **kws, **extra)
    try:
        await signature(a)
    except TypeError as e:
        r4 = "TypeError" in type(e).__name__ and "c" in str(e)
    return (r1, r2, r3, r4)


@case(2, 5, id="defaults_given")
@case(2, id="defaults_default")
async def own_defaults(a, b=7, *, c=(1, 2)):
    await step("args", (a, b, c))
    b += await step("more", a)
    return (a, b, c)


# ---------------------------------------------------------------------------------------------------------------
# closures, lambdas, comprehensions, nested defs


@case(1)
async def closure_sees_reassignment(x):
    f = lambda: x * 10
    await step("pause", x)
    x = 2
    first = f()
    await step("pause2", first)
    x = await step("set", 3)
    return (first, f())


@case(5)
async def nonlocal_counter(start):
    count = start

    def bump(by=1):
        nonlocal count
        count += by
        return count

    bump()
    await step("a", count)
    bump(await step("by", 10))
    await step("b", count)
    count = 100
    return (bump(), count)


@case(3)
async def lambdas_and_comprehensions(n):
    k = await step("k", 2)
    squares = [i * i for i in range(n)]
    scale = lambda v: v * k
    pick = {i: scale(i) for i in range(n)}
    evens = {i for i in range(n * 2) if i % 2 == 0}
    await step("pause", len(squares))
    k = 3
    late = [lambda: i for i in range(3)]  # noqa: B023 - late binding is the point
    bound = [lambda i=i: i * k for i in range(3)]
    await step("pause2", None)
    return (squares, pick, sorted(evens), scale(5), [f() for f in late], [f() for f in bound],
            sum(x for x in squares if x > k))


@case(4)
async def nested_defs_after_pause(x):
    def helper(y):
        return y + x

    async def inner(v):
        w = await step("inner", v)
        return helper(w) * 2

    await step("pause", x)
    x = 10
    r1 = await inner(1)

    class Local:
        base = 5

        def get(self):
            return self.base + x

    await step("pause2", r1)
    return (helper(0), r1, Local().get())


@case(2)
async def closure_over_loop_variable(n):
    fs = []
    for i in range(n + 1):
        await step("i", i)
        fs.append(lambda: i)  # noqa: B023 - late binding is the point
    got = [f() for f in fs]
    i = 42
    return (got, [f() for f in fs])


@case(3)
async def nested_closure_levels(x):
    def outer():
        y = x + 1

        def inner():
            return x + y

        return inner

    f = outer()
    await step("p", f())
    x = 100
    return f()


# ---------------------------------------------------------------------------------------------------------------
# awaits inside expressions


def combine(*parts):
    note("combine", parts)
    return parts


@case(1)
async def await_in_call_args(x):
    r = combine(await step("a", x), note("mid", 2), await step("b", 3))
    r2 = combine(*await step("star", [4, 5]), **await step("kw", {}))
    r3 = max(await leaf(7), note("n", 1), await step("c", 6))
    return (r, r2, r3)


@case(3)
async def await_in_binops(x):
    a = await step("l", x) + note("r", 2) * await step("rr", 4)
    b = note("first", 10) - await step("second", 3)
    c = (await step("p", 2)) ** (await step("q", 3)) % await step("m", 5)
    d = [1, 2] + [await step("list", 3)]
    e = -(await step("neg", x)) + ~await step("inv", 0)
    return (a, b, c, d, e)


@case(5, id="compare_true")
@case(0, id="compare_shortcircuit")
async def await_in_comparisons(x):
    a = await step("a", x) > 2
    b = 1 < await step("mid", x) < note("hi", 10)
    c = 3 <= await step("m", x) <= await step("last", 6) != await step("x", 7)
    d = await step("in", x) in [0, 5]
    e = await step("is", None) is None
    return (a, b, c, d, e)


@case(0, id="boolops_falsy")
@case(2, id="boolops_truthy")
async def await_in_boolops(x):
    a = await step("and1", x) and await step("and2", x + 1)
    b = await step("or1", x) or await step("or2", "dflt")
    c = not await step("not", x)
    d = (await step("m1", x) and note("m2", "n")) or await step("m3", "e")
    e = x > 1 and await step("gated", x) or None
    return (a, b, c, d, e)


@case(True, id="ifexp_true")
@case(False, id="ifexp_false")
async def await_in_conditional_expr(flag):
    a = await step("yes", 1) if await step("cond", flag) else await step("no", 2)
    b = (await step("inner", 3) if not flag else 4) + 10
    return (a, b)


@case(3)
async def await_in_fstrings(x):
    s = f"{await step('a', x)}-{note('mid', 'm')}-{await step('b', 'q')!r:>5}|{await step('w', 4):0{x}d}"
    t = "%s/%s" % (await step("p", 1), await leaf(2))
    return (s, t)


@case(2)
async def await_in_displays(x):
    lst = [await step("l0", x), note("l1", 1), *await step("lstar", [7, 8]), await step("l2", 2)]
    tup = (await step("t0", "a"), await step("t1", "b"))
    dct = {await step("k", "key"): await step("v", "val"), "n": note("n", 0), **await step("dstar", {"z": 1})}
    st = {await step("s", 1), 2}
    return (lst, tup, dct, sorted(st))


class Recorder:
    """A mapping that records item access, to check evaluation order of subscript targets.

    Not a dict subclass: unpickling a dict subclass calls ``__setitem__``, which would record phantom sets.
    """

    def __init__(self, **items):
        self.data = dict(items)

    def __getitem__(self, k):
        note("get", k)
        return self.data[k]

    def __setitem__(self, k, v):
        note("set", (k, v))
        self.data[k] = v


class Box:
    def __init__(self):
        self.a = 1
        self.b = 2


@case(1)
async def await_in_subscripts_and_targets(x):
    d = Recorder(a=1, b=2)
    d[await step("key", "c")] = await step("val", 3)
    v = d[await step("read", "a")]
    lst = [10, 20, 30, 40]
    sl = lst[await step("lo", 1):await step("hi", 3)]
    lst[await step("idx", 0)] = await step("new", 99)
    box = Box()
    box.a, box.b = await step("pair", (5, 6))
    first, *rest = await step("unpack", [1, 2, 3])
    (p, q), r = await step("nested", ((7, 8), 9))
    return (d.data, v, sl, lst, box.a, box.b, first, rest, p, q, r)


@case(2)
async def augmented_assignment(x):
    n = x
    n += await step("n", 5)
    n *= await leaf(2)
    box = Box()
    box.a += await step("attr", 10)
    d = Recorder(k=1)
    d[await step("key", "k")] += await step("inc", 4)
    lst = [1, 2, 3]
    lst[await step("i", 1)] -= await step("dec", 1)
    s = "a"
    s += f"{await step('f', 'b')}"
    return (n, box.a, d.data, lst, s)


@case(3)
async def walrus_and_del(x):
    if (n := await step("walrus", x)) > 2:
        note("big", n)
    tmp = await step("tmp", [n])
    del tmp
    await step("after-del", None)
    try:
        tmp  # noqa: B018
        gone = False
    except NameError:
        gone = True
    return (n, gone)


@case(4)
async def await_in_return_expr(x):
    try:
        return await step("r", x) + await step("s", 1)
    finally:
        note("fin", x)


@case(3)
async def mutable_locals_across_pauses(n):
    log = []
    seen = {}
    for i in range(n):
        log.append(await step("i", i))
        seen[i] = list(log)
    await step("end", None)
    log.append("done")
    return (log, seen)


# ---------------------------------------------------------------------------------------------------------------
# events


@case(10, events={"approve": "yes"})
async def event_simple(amount):
    await step("submitted", amount)
    decision = await wait_for_event("approve")
    await step("decided", decision)
    return {"amount": amount, "decision": decision}


@case(3, events={"tick": 1, "stop": "now"})
async def events_in_loop_and_finally(n):
    total = 0
    try:
        for i in range(n):
            total += await step("work", i)
            if i == 1:
                total += await wait_for_event("tick")
    finally:
        reason = await wait_for_event("stop")
        await step("stopped", reason)
    return (total, reason)


async def ask(name):
    await step("ask", name)
    answer = await wait_for_event(name)
    if answer == "bad":
        raise ValueError(f"bad answer to {name}")
    return answer


@case(events={"q1": "good", "q2": "bad"})
async def nested_call_pauses(*_):
    a = await ask("q1")
    try:
        b = await ask("q2")
    except ValueError as e:
        b = await step("fallback", str(e))
    return (a, b)


@case(2, events={"x": 5})
async def event_in_expression(k):
    v = k * await wait_for_event("x") + await step("after", 1)
    return f"{v}:{await step('tail', k)}"


@case(events={"go": None})
async def event_payload_none(*_):
    v = await wait_for_event("go")
    return await step("got", v)


# ---------------------------------------------------------------------------------------------------------------
# narrower variants (one construct each, so one compiler bug does not hide the others)


async def countdown(n):
    if n == 0:
        return [await step("bottom", 0)]
    rest = await countdown(n - 1)
    rest.append(n)
    return rest


@case(40)
async def deep_recursion(n):
    out = await countdown(n)
    return await step("len", len(out))


async def fact(n):
    if n <= 1:
        return await step("fact1", 1)
    sub = await fact(n - 1)
    return n * sub


@case(5)
async def recursion_one_await_per_statement(n):
    return await fact(n)


class Counter:
    def __init__(self):
        self.n = 0
        self.log = []

    async def add(self, v):
        got = await step("add", v)
        self.n = self.n + got
        self.log.append(got)
        return self

    async def twice(self, v):
        await self.add(v)
        return await self.add(v)


@case(3)
async def methods_simple(v):
    c = Counter()
    await c.add(v)
    same = await c.twice(v + 1)
    return (same is c, c.n, c.log)


@case(2)
async def simple_targets(x):
    d = {}
    d["k"] = await step("d", x)
    lst = [0, 0]
    lst[1] = await step("l", x + 1)
    box = Box()
    box.a = await step("attr", x + 2)
    i = await step("i", 1)
    got = lst[i]
    n = x
    n += await step("n", 10)
    n -= await leaf(1)
    return (d, lst, box.a, got, n)


async def kwonly(a, /, b, *, c=3, d):
    await step("kwonly", (a, b, c, d))
    return a * 1000 + b * 100 + c * 10 + d


async def mutable_default(v, acc=[]):  # noqa: B006 - shared default is the point
    acc.append(await step("md", v))
    return list(acc)


@case(1)
async def posonly_kwonly_and_defaults(a):
    r = [await kwonly(a, 2, d=4)]
    r.append(await kwonly(a, b=5, c=6, d=7))
    try:
        await kwonly(a=1, b=2, d=3)
    except TypeError as e:
        r.append(("TypeError", "positional-only" in str(e)))
    r.append(await mutable_default(1, []))
    return r


async def raises_through_finally(x):
    try:
        await step("callee-try", x)
        raise KeyError(x)
    finally:
        await step("callee-finally", x)


async def finally_returns(x):
    try:
        await step("fr-try", x)
        raise KeyError(x)
    finally:
        return await step("fr-finally", "swallowed")  # noqa: B012


@case(7)
async def exceptions_through_callee_finally(x):
    out = []
    try:
        await raises_through_finally(x)
    except KeyError as e:
        out.append(await step("caller", repr(e)))
    out.append(await finally_returns(x))
    return out


def failed_future(msg):
    fut = asyncio.get_running_loop().create_future()
    fut.set_exception(ValueError(msg))
    return fut


@case("nope")
async def native_awaitable_raises(msg):
    try:
        await failed_future(msg)
    except ValueError as e:
        r = await step("caught", str(e))
    r2 = await asyncio.gather(leaf(1), leaf(2))
    note("gathered", r2)
    return (r, r2, await step("after", len(r2)))


@case(4)
async def except_paths(n):
    out = []
    for i in range(n):
        try:
            if i % 2:
                raise ValueError(i)
            await step("ok", i)
        except ValueError:
            await step("odd", i)
            if i == 3:
                return ("returned-from-except", out)
            continue
        else:
            out.append(await step("else", i))
            if i == 2:
                break
    return ("end", out)


@case(3)
async def lambda_in_object_after_pause(k):
    box = Box()
    box.fn = lambda v: v * k + box.a
    table = {"double": lambda v: v * 2, "neg": lambda v: -v}
    await step("pause", k)
    box.a = 100
    k = 5
    arg = await step("arg", 7)
    neg = table["neg"](arg)
    return (box.fn(2), [table[name](3) for name in ("double", "neg")], neg)


@case(2)
async def global_helpers_and_builtins(n):
    s = sorted([await step("a", 3), n, 1])
    t = sum(await step("range", list(range(n + 3))))
    u = "".join(reversed(await step("str", "abc")))
    return (s, t, u, isinstance(await step("int", n), int))


@case(events={"first": 1, "second": 2})
async def two_events_then_error(*_):
    a = await wait_for_event("first")
    await step("between", a)
    b = await wait_for_event("second")
    if a + b == 3:
        raise ValueError(f"sum {a + b}")
    return a + b


@case(3, events={"go": "ok"})
async def event_inside_while_with_await_condition(n):
    i = 0
    seen = []
    while await step("cond", i) < n:
        if i == 1:
            seen.append(await wait_for_event("go"))
        i += 1
    return (i, seen)


@case(2)
async def nested_async_def_closure(x):
    data = [x]

    async def inner():
        return len(data) + x

    await step("pause", x)
    data.append(await step("more", 1))
    return await inner()


@case(1)
async def nested_async_def_awaits(x):
    async def inner(v):
        return await step("inner", v) + 1

    return await inner(x)


@case(1)
async def exception_in_finally_replaces_pending(x):
    try:
        try:
            await step("try", x)
            raise ValueError("first")
        finally:
            await step("finally", x)
            raise KeyError("second")
    except KeyError as e:
        return await step("caught", (repr(e), repr(e.__context__)))


@case(2)
async def exc_info_in_handler_after_await(x):
    import sys

    try:
        raise ValueError("v")
    except ValueError:
        await step("handler", x)
        info = sys.exc_info()[0]
    return await step("info", (repr(info), repr(sys.exc_info()[0])))


@case([1, 2])
async def list_mutated_while_iterating(lst):
    out = []
    for x in lst:
        out.append(await step("x", x))
        if x == 1:
            lst.append(3)
    return (out, lst)


@case(3)
async def tuple_swap_and_chained_assign(x):
    a, b = x, x + 1
    a, b = b, await step("b", a)
    c = d = await step("cd", [a])
    c.append(b)
    return (a, b, c, d, c is d)


@case(3, events={"late": "L"})
async def zero_timers_and_events(n):
    out = []
    for i in range(n):
        t = await sleep(0)
        out.append((i, t))
        if i == 1:
            out.append(await wait_for_event("late"))
    await step("done", out)
    return out


class OrderError(Exception):
    """An exception whose __init__ takes other arguments than its args (default pickling cannot rebuild it)."""

    def __init__(self, code, where):
        super().__init__(f"code {code} at {where}")
        self.code = code


@case(5, id="custom_exception_caught")
async def custom_exception_held_across_pauses(code):
    try:
        await step("try", code)
        raise OrderError(code, "checkout")
    except OrderError as e:
        err = e
    await step("after", err.code)
    return (err.code, str(err), type(err).__name__)


@case(6)
async def custom_exception_uncaught(code):
    await step("before", code)
    raise OrderError(code, "payment")


@case(events={"first": "F", "go": "G"})
async def nested_async_def_waits_after_pause(*_):
    async def inner(tag):
        await step("inner", tag)
        return await wait_for_event("go")

    first = await wait_for_event("first")
    return (first, await inner(first))


@case(1)
async def name_read_before_await(x):
    async def rebind(v):
        nonlocal x
        x = await step("rebind", v)
        return 0

    a = x + await rebind(10)
    b = [x, await rebind(20)]
    c = max(x, await rebind(30), 0)
    return (a, b, c, x)


@case(3, 1, 7, 2)
async def range_loops(n, *span):
    out = []
    for i in range(n):
        n = 10  # the range was evaluated once
        i = i * 100  # rebinding the loop variable does not steer the loop
        out.append(await step("i", i))
    for j in range(10, 0, -3):
        out.append(await step("down", j))
    for k in range(5, 5):
        out.append(await step("never", k))
    else:
        out.append(await step("empty-else", n))
    for i in range(2):
        for i in range(2):
            out.append(await step("inner", i))
        out.append(i)
    for big in range(2 ** 70, 2 ** 70 + 2):
        out.append(await step("big", big))
    for m in range(*span):
        fn = lambda: m  # noqa: B023 - read after the loop on purpose
        out.append(await step("span", fn()))
    return (out, n, i, m, fn())


@case(2)
async def nonlocal_from_nested_frame(x):
    total = 0

    async def add(v):
        nonlocal total
        got = await step("add", v)
        total = total + got
        return total

    await add(x)
    r = await add(10)
    note("total", total)
    return (total, r)


@case(events={"first": "F", "go": "G"})
async def local_class_async_method_after_pause(*_):
    class Local:
        async def ask(self, tag):
            await step("ask", tag)
            return await wait_for_event("go")

    obj = Local()
    first = await wait_for_event("first")
    return (first, await obj.ask(first))


@case(3)
async def imports_captured_by_closures(n):
    import json
    import os.path
    from collections import OrderedDict as OD

    def dump(v):
        return json.dumps(OD(v=v)) + os.path.sep

    first = await step("first", dump(n))
    import json as js

    def again(v):
        return js.loads(v[:-1])["v"]

    return (first, again(await step("second", dump(n + 1))))


# ---------------------------------------------------------------------------------------------------------------
# retried steps (issue 13): RETRY's durable timers vs the same loop written by hand, with compensations


@case(2)
async def retried_step_succeeds(x):
    a = await step("before", x)
    b = await flaky("charge", 2, a + 1)  # fails twice, the third attempt succeeds
    c = await step("after", b * 2)
    return (a, b, c)


@case(4)
async def retried_step_exhausted_compensated(x):
    await step("reserve", x)
    try:
        paid = await flaky("pay", 5, x)  # never succeeds: the third attempt's ValueError reaches the except
    except ValueError as e:
        await step("release", str(e))
        paid = None
    finally:
        await step("audit", x)
    return paid


@case(3)
async def retried_steps_in_loop_with_finally(n):
    got = []
    for i in range(n):
        try:
            got.append(await flaky(f"item{i}", i % 3, i))
        finally:
            note("tried", i)
    return got


async def charge_card(order, fails):
    try:
        r = await flaky("card", fails, order)
        return await step("receipt", r)
    except ValueError:
        await step("refund", order)
        raise


@case(7, 1, events={"ship": "box"})
@case(7, 3, id="retried_steps_in_a_saga_card_fails")
async def retried_steps_in_a_saga(order, card_fails):
    done = []
    try:
        done.append(await charge_card(order, card_fails))
        shipped = await wait_for_event("ship")
        done.append(await flaky("label", 1, shipped))
        done.append(await flaky("notify", 3, "late"))  # exhausted
    except ValueError as e:
        for item in reversed(done):
            await step("undo", item)
        return ("compensated", str(e), done)
    return ("ok", done)


@case(5)
async def non_retryable_raised_at_once(x):
    try:
        await flaky("lookup", 0, "non-retryable")
    except KeyError as e:
        await step("fallback", str(e))
    finally:
        await step("cleanup", x)
    return await flaky("second", 2, x)


@case(1)
async def retried_step_exhausted_uncaught(x):
    try:
        await flaky("doomed", 3, x)
    finally:
        await step("finally", x)


# ---------------------------------------------------------------------------------------------------------------
# parallel branches (issue 14): durable.gather / asyncio.gather / durable.first vs the same calls run natively


async def branch_work(tag, n):
    """A branch with a loop of steps."""
    total = 0
    for i in range(n):
        total += await step(f"{tag}|i", i)
    return await step(f"{tag}|total", total)


async def waits_forever(tag):
    """A branch that only ends by being cancelled (its event is never published); its finally is checkpointed."""
    try:
        await step(f"{tag}|start", tag)
        await wait_for_event("never")
        await step(f"{tag}|unreachable", tag)
    finally:
        await step(f"{tag}|finally", tag)


async def fails_after(tag, n):
    for i in range(n):
        await step(f"{tag}|i", i)
    raise ValueError(f"{tag} failed after {n}")


async def event_branch(tag, name="go"):
    await step(f"{tag}|before", tag)
    got = await wait_for_event(name)
    return await step(f"{tag}|got", got)


def shown(results):
    """Results of return_exceptions=True, comparable (exceptions are not equal to equal exceptions)."""
    return [f"{type(r).__name__}: {r}" if isinstance(r, BaseException) else r for r in results]


@case(3)
async def gather_results_in_order(n):
    await step("before", n)
    r = await durable.gather(branch_work("A", n), step("B|only", 10), leaf(7), branch_work("C", 1))
    note("gathered", r)
    empty = await durable.gather()
    return (r, empty, await step("after", sum(r)))


@case(2)
async def asyncio_gather_in_durable_code(n):
    r = await asyncio.gather(branch_work("A", n), leaf("x"), step("B|b", n * 2))
    return await step("after", r)


@case(2)
async def gather_one_fails_others_cancelled(n):
    try:
        await durable.gather(waits_forever("A"), fails_after("B", n), branch_work("C", 1), waits_forever("D"))
    except ValueError as e:
        await step("caught", str(e))
    return await step("after", n)


@case(1)
async def gather_failure_uncaught(n):
    try:
        return await durable.gather(branch_work("A", n), fail("B|boom"), waits_forever("C"))
    finally:
        await step("finally", n)


@case(3)
async def gather_return_exceptions(n):
    rs = await durable.gather(branch_work("A", n), fails_after("B", 1), fail("C|f", KeyError), leaf(5),
                              return_exceptions=True)
    note("shown", shown(rs))
    return shown(rs)


@case(2, events={"go": "ev-payload"})
async def asyncio_gather_return_exceptions_with_event(n):
    rs = await asyncio.gather(event_branch("E"), fails_after("F", n), branch_work("W", n), return_exceptions=True)
    return await step("after", shown(rs))


@case(2)
async def first_one_wins(n):
    r = await durable.first(waits_forever("A"), branch_work("B", n), waits_forever("C"))
    await step("won", r)
    return r


@case(1)
async def first_to_end_fails(n):
    try:
        return await durable.first(waits_forever("A"), fails_after("B", n))
    except ValueError as e:
        return await step("caught", str(e))


@case(events={"go": 11})
async def first_wins_after_an_event(*_):
    r = await durable.first(event_branch("E"), waits_forever("W"))
    return await step("won", r)


async def inner_group(tag, n):
    await step(f"{tag}|start", n)
    rs = await durable.gather(branch_work(f"{tag}|x", n), branch_work(f"{tag}|y", n + 1))
    return await step(f"{tag}|sum", sum(rs))


async def inner_first(tag):
    try:
        return await durable.first(waits_forever(f"{tag}|w"), step(f"{tag}|s|quick", tag))
    finally:
        await step(f"{tag}|after", tag)


@case(2)
async def nested_gathers(n):
    rs = await durable.gather(inner_group("A", n), inner_group("B", 1), step("C|c", 3), inner_first("D"))
    rs2 = await durable.gather(durable.gather(leaf(1), step("E|e", 2)), step("F|f", 4))
    return (rs, rs2)


async def checked(tag, x):
    v = await step(f"{tag}|in", x)
    if v % 2:
        raise KeyError(f"{tag} odd {v}")
    return v * 10


async def nested_calls(tag, xs):
    """A branch calling durable functions (that raise) in a loop, with except/else/finally."""
    out = []
    for x in xs:
        try:
            r = await checked(tag, x)
        except KeyError as e:
            out.append(await step(f"{tag}|odd", str(e)))
        else:
            out.append(r)
        finally:
            await step(f"{tag}|done", x)
    return out


@case([1, 2, 3])
async def branch_calls_nested_functions(xs):
    rs = await durable.gather(nested_calls("A", xs), nested_calls("B", list(reversed(xs))), checked("C", 4))
    return await step("after", rs)


async def looping_branch(tag, n):
    got = []
    i = 0
    while True:
        i += 1
        if i > n:
            break
        if i % 2 == 0:
            continue
        got.append(await step(f"{tag}|odd", i))
    else:
        await step(f"{tag}|never", i)
    for j in range(n):
        for k in range(j):
            got.append(await step(f"{tag}|pair", (j, k)))
    return got


@case(4)
async def branches_with_loops(n):
    return await durable.gather(looping_branch("A", n), looping_branch("B", n - 1), looping_branch("C", 0))


@case(3, events={"go": "approved"})
async def branch_waits_for_event_others_go_on(n):
    await step("start", n)
    r = await durable.gather(event_branch("E"), branch_work("W", n), leaf("L"), branch_work("V", 1))
    return await step("end", r)


@case(events={"go": 1, "stop": 2})
async def two_branches_wait_for_two_events(*_):
    return await durable.gather(event_branch("E", "go"), event_branch("F", "stop"), step("S|s", 0))


async def flaky_branch(tag, fails):
    v = await flaky(f"{tag}|charge", fails, 42)
    return await step(f"{tag}|done", v)


async def flaky_exhausted_branch(tag):
    try:
        return await flaky(f"{tag}|doomed", 5, 0)
    except ValueError as e:
        return await step(f"{tag}|gave up", str(e))


@case(2)
async def retried_step_in_a_branch(n):
    rs = await durable.gather(flaky_branch("R", 2), branch_work("W", n), flaky_exhausted_branch("X"),
                              flaky("D|direct", 1, "d"))
    return await step("after", rs)


@case(4)
async def gather_of_coroutines_built_in_a_loop(n):
    coros = []
    for i in range(n):
        if i % 2:
            coros.append(step(f"L{i}|odd", i))
        else:
            coros.append(branch_work(f"L{i}", i))
    rs = await durable.gather(*coros)
    return await step("after", rs)


@case(4)
async def gather_of_calls_built_in_a_loop(n):
    """The loop builds (function, args): the coroutines exist only in the call."""
    calls = []
    for i in range(n):
        calls.append((step, (f"L{i}|odd", i)) if i % 2 else (branch_work, (f"L{i}", i)))
    rs = await durable.gather(*[fn(*args) for fn, args in calls])
    return await step("after", rs)


@case(3)
async def gathers_in_a_loop(n):
    out = []
    for i in range(n):
        try:
            out.append(await durable.gather(step(f"G{i}a|x", i), branch_work(f"G{i}b", i)))
        finally:
            note("round", i)
    return out


class Shop:
    def __init__(self, name):
        self.name = name

    async def buy(self, item):
        return await step(f"{self.name}|buy", item)


@case("ann")
async def methods_and_closures_as_branches(owner):
    shop = Shop(owner)
    prefix = await step("prefix", "p-")

    async def tagged(tag, v):
        return await step(f"{tag}|tagged", prefix + v)

    r = await durable.gather(shop.buy("tea"), tagged("T", "x"), Shop("other").buy("cake"))
    return (r, await step("after", len(r)))


@case(2)
async def gather_result_feeds_first(n):
    a, b = await durable.gather(branch_work("A", n), step("B|b", 5))
    w = await durable.first(step("C|c", a + b), waits_forever("D"))
    return await step("after", (a, b, w))


# ---------------------------------------------------------------------------------------------------------------
# plain Python and durable differ here by design; refused at make_durable time

REFUSED_SOURCES = {
    "async_for": "async def f(xs):\n    async for x in xs:\n        pass\n",
    "async_with": "async def f(cm):\n    async with cm:\n        pass\n",
    "await_in_with": "async def f(cm):\n    with cm:\n        await g()\n",
    "await_in_listcomp": "async def f(xs):\n    return [await g(x) for x in xs]\n",
    "await_in_genexp": "async def f(xs):\n    return list(await g(x) for x in xs)\n",
    "await_in_match": "async def f(v):\n    match v:\n        case 1:\n            await g()\n",
    "async_generator": "async def f():\n    yield 1\n",
}
