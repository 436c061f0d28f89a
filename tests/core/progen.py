"""A hypothesis strategy that writes small random async programs (source text) for the differential tests.

A generated module defines ``async def prog(x, y)`` and ``async def sub(label, a, b)`` (called from ``prog``),
both drawn from one grammar: assignments of arithmetic over the function's int variables (and loop counters),
``v = await step(...)``, awaits inside expressions (operators, call arguments, conditional expressions, and/or,
comparisons), awaited nested durable calls that may raise (``helper``, ``sub``), ``wait_for_event``,
``if``/``else``, bounded ``for`` loops (over ranges, lists, ``reversed``/``sorted``/``enumerate``/``zip`` iterators) and
``while`` loops (with ``else``) with ``break``/``continue``,
``try``/``except``/``else``/``finally`` with awaits in every clause, ``raise ValueError`` on conditions,
``return`` from anywhere, and await-free ``with`` and ``match`` blocks (which may still break, continue, return
or raise). Every loop is bounded by construction (``range(n)`` with n <= 3; a while loop's counter is
incremented first thing in its body), so every program terminates.

Half of the programs define ``snap = lambda: ...`` and a ``bump`` closure with ``nonlocal`` first, which makes
the variables cells shared with closures that are called after later pauses (a different compilation path).
``acc[0]`` is a subscript target.

``multi_await=True`` also produces expressions with two awaits, and compound operands evaluated before an await
in the same expression (``(x + 1) * await step(...)``); ``mid_chain=True`` adds chained comparisons with an
await in the middle. (Both were compiler bugs, BUG-1 and BUG-9 in /tmp/difffail.md.)

``branches=True`` adds parallel branches to ``prog``: ``total(await durable.gather(...))`` (or
``asyncio.gather``), with or without ``return_exceptions=True``, and ``await durable.first(...)``, of 2-3 calls
of ``sub``, ``helper``, ``step`` (``flaky`` with ``retries``) and ``wait_for_event``. The branch labels read
``"g<n>.<i>|s<m>"`` (``sub`` prefixes its own labels with its ``label`` argument), so traces are compared up to
the interleaving of branches (``difftools.canonical``). Which branch ends first, or fails first, depends on
timing: plain asyncio runs a branch to its end (nothing in it suspends), a durable branch pauses on an event or a
backoff timer and lets the others go on, and a crash stops a branch half-way while others end. So that the native
run stays the oracle, no group's outcome depends on that order: ``gather`` (or ``asyncio.gather``) without
``return_exceptions`` only of branches that cannot fail, and ``first`` of one call against waits for an event
that never comes (``NEVER``; a plain run waits until cancelled).

``retries=True`` adds ``await flaky(label, fails, value)``: a step with a retry policy that fails its first
``fails`` (0-3) attempts; 3 exhausts its three attempts and raises ``ValueError`` at the await (issue 13).
"""

from __future__ import annotations

import hashlib

from hypothesis import strategies as st

HEADER = '''\
import asyncio
import contextlib

import durable
from {corpus} import flaky, step, note
from durable import wait_for_event

NEVER = "never"  # an event never published: a branch waiting for it ends only when cancelled


def total(results):
    """The results of a gather as an int (an exception, with return_exceptions=True, by its message)."""
    return sum(r if isinstance(r, int) else len(str(r)) for r in results) % 97


async def helper(label, v):
    r = await step(label, v)
    if r % 5 == 0:
        raise ValueError(f"helper {{label}} {{r}}")
    return r + 1


@contextlib.contextmanager
def ctx(label):
    note(label, "enter")
    try:
        yield label
    finally:
        note(label, "exit")

'''

EVENT_PAYLOAD = 7


class _Fn:
    """What the generator knows about the function it is writing."""

    def __init__(self, names: tuple, targets: list, ret: str, is_sub: bool) -> None:
        self.names = names
        self.targets = targets
        self.ret = ret
        self.is_sub = is_sub
        self.closures = False


class _Gen:
    def __init__(self, draw, multi_await: bool, max_stmts: int, mid_chain: bool = False,
                 retries: bool = False, branches: bool = False) -> None:
        self.draw = draw
        self.retries = retries
        self.branches = branches
        self.groups = 0
        #: can a call of ``sub`` pause (an event, a backoff timer) / raise? (known once sub is written)
        self.sub_pauses = True
        self.sub_raises = True
        self.multi = multi_await
        self.mid_chain = mid_chain
        self.n = 0
        self.left = max_stmts
        self.sync = 0
        self.fn: _Fn | None = None
        self.lines: list[str] = []

    # -- helpers ----------------------------------------------------------
    def pick(self, options):
        return self.draw(st.sampled_from(options))

    def label(self) -> str:
        self.n += 1
        return f"s{self.n}"

    def lbl(self) -> str:
        """A trace label as source text: ``"s3"``; in ``sub``, prefixed with its ``label`` argument (the branch
        it runs in, when it is one)."""
        name = self.label()
        return f'f"{{label}}/{name}"' if self.fn.is_sub else f'"{name}"'

    def emit(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    # -- expressions ------------------------------------------------------
    def atom(self, names) -> str:
        return self.pick(list(names) + ["1", "2", "3"])

    def arith(self, names, depth: int = 0) -> str:
        if depth >= 2 or self.draw(st.booleans()):
            return self.atom(names)
        op = self.pick(["+", "-", "*"])
        return f"({self.arith(names, depth + 1)} {op} {self.arith(names, depth + 1)}) % 97"

    def awaited(self, names) -> str:
        kinds = ["step", "step", "step", "helper", "event"] + ([] if self.fn.is_sub else ["sub"])
        if self.retries:
            kinds = ["flaky"] + kinds + ["flaky"] * 3  # first: what hypothesis draws most
        if self.branches and not self.fn.is_sub:
            kinds += ["group", "group"]
        kind = self.pick(kinds)
        if kind == "group":
            return self.group(names)
        if kind == "flaky":
            return f'await flaky({self.lbl()}, {self.pick([1, 2, 3, 0])}, {self.arith(names)})'
        if kind == "helper":
            return f'await helper({self.lbl()}, {self.arith(names)})'
        if kind == "sub":
            return f'await sub({self.lbl()}, {self.arith(names)}, {self.arith(names)})'
        if kind == "event":
            return 'await wait_for_event("ev")'
        return f'await step({self.lbl()}, {self.arith(names)})'

    def group(self, names) -> str:
        """``gather``/``first`` of 2-3 branches (see the module's docstring for which combinations)."""
        self.groups += 1
        g = self.groups
        kinds = ["sub", "sub", "helper", "step", "event"] + (["flaky"] if self.retries else [])
        calls, pauses, raises = [], False, False
        for i in range(self.draw(st.integers(2, 3))):
            kind = self.pick(kinds)
            label = f'"g{g}.{i}|{self.label()}"'
            if kind == "sub":
                calls.append(f"sub({label}, {self.arith(names)}, {self.arith(names)})")
                pauses, raises = pauses or self.sub_pauses, raises or self.sub_raises
            elif kind == "helper":
                calls.append(f"helper({label}, {self.arith(names)})")
                raises = True
            elif kind == "step":
                calls.append(f"step({label}, {self.arith(names)})")
            elif kind == "flaky":
                fails = self.pick([1, 3, 0])
                calls.append(f"flaky({label}, {fails}, {self.arith(names)})")
                pauses, raises = pauses or fails > 0, raises or fails == 3
            else:
                calls.append('wait_for_event("ev")')
                pauses = True
        args = ", ".join(calls)
        shapes = ["return_exceptions", "first"]
        if not raises:
            shapes += ["gather", "asyncio"]
        shape = self.pick(shapes)
        if shape == "first":  # the first call against waits that never end: it wins however the run is cut
            return f"(await durable.first({calls[0]}, {', '.join(['wait_for_event(NEVER)'] * (len(calls) - 1))}))"
        if shape == "asyncio":
            return f"total(await asyncio.gather({args}))"
        if shape == "gather":
            return f"total(await durable.gather({args}))"
        return f"total(await durable.gather({args}, return_exceptions=True))"

    def before_await(self, names) -> str:
        """An operand evaluated before an await in the same expression."""
        return self.arith(names) if self.multi else self.atom(names)

    def value(self, names) -> str:
        if self.sync:
            return self.arith(names)
        kinds = ["arith", "await", "await", "await_in_binop", "await_in_call", "ifexp", "boolop"]
        if self.multi:
            kinds += ["two_awaits", "two_awaits"]
        if self.fn.closures:
            kinds += ["bump"]
        kind = self.pick(kinds)
        if kind == "arith":
            return self.arith(names)
        if kind == "await":
            return self.awaited(names)
        if kind == "bump":
            return f"bump({self.awaited(names)})"
        if kind == "await_in_binop":
            a = self.arith(names)
            op = self.pick(["+", "-", "*"])
            if self.draw(st.booleans()):
                return f"(({self.awaited(names)}) {op} {a}) % 97"
            return f"({self.before_await(names)} {op} ({self.awaited(names)})) % 97"
        if kind == "await_in_call":
            return f"max({self.before_await(names)}, {self.awaited(names)}, {self.arith(names)})"
        if kind == "ifexp":
            return f"({self.awaited(names)} if {self.cond(names)} else {self.arith(names)})"
        if kind == "boolop":
            op = self.pick(["and", "or"])
            return f"({self.arith(names)} % 3 {op} {self.awaited(names)})"
        # two awaits in one expression
        op = self.pick(["+", "-", "*"])
        return f"(({self.awaited(names)}) {op} ({self.awaited(names)})) % 97"

    def cond(self, names) -> str:
        kinds = ["cmp", "mod"]
        if not self.sync:
            kinds += ["await_cmp", "chain"] + (["mid_chain"] * 2 if self.mid_chain else [])
        kind = self.pick(kinds)
        if kind == "cmp":
            return f"{self.arith(names)} > {self.arith(names)}"
        if kind == "mod":
            return f"{self.arith(names)} % 2 == 0"
        if kind == "await_cmp":
            return f"({self.awaited(names)}) % 3 == {self.pick(['0', '1'])}"
        if kind == "mid_chain":
            return f"{self.before_await(names)} < ({self.awaited(names)}) <= {self.arith(names)}"
        return f"0 <= {self.before_await(names)} < ({self.awaited(names)})"

    def shown(self, names) -> str:
        if self.fn.closures and self.draw(st.booleans()):
            return "snap()"
        return f'({", ".join(names)}, acc[0])'

    # -- statements -------------------------------------------------------
    def block(self, indent: int, names: tuple, loop: str | None, in_finally: bool, depth: int,
              least: int = 1, most: int = 3) -> None:
        """Between ``least`` and ``most`` statements at ``indent``."""
        count = self.draw(st.integers(least, most))
        for _ in range(count):
            self.stmt(indent, names, loop, in_finally, depth)

    def stmt(self, indent: int, names: tuple, loop: str | None, in_finally: bool, depth: int) -> None:
        self.left -= 1
        simple = ["assign", "assign", "note", "aug"] + (["bump"] if self.fn.closures else [])
        compound = ["if", "for", "for", "while", "try", "try", "raise", "with", "match"]
        jumps = []
        if loop is not None and not in_finally:
            jumps = ["break", "continue"]
        if not in_finally:
            jumps.append("return")
        options = simple + (compound if self.left > 0 and depth < 3 else []) + jumps
        kind = self.pick(options)
        target = self.pick(self.fn.targets)
        if kind == "assign":
            self.emit(indent, f"{target} = {self.value(names)}")
        elif kind == "aug":
            op = self.pick(["+=", "-=", "*="])
            self.emit(indent, f"{target} {op} {self.value(names)}")
            self.emit(indent, f"{target} %= 97")
        elif kind == "note":
            self.emit(indent, f'note({self.lbl()}, {self.shown(names)})')
        elif kind == "bump":
            self.emit(indent, f"bump({self.arith(names)})")
        elif kind == "raise":
            self.emit(indent, f"if {self.cond(names)}:")
            self.emit(indent + 1, f'raise ValueError(f"r{self.label()} {{{target}}}")')
        elif kind in ("break", "continue"):
            self.emit(indent, f"if {self.cond(names)}:")
            self.emit(indent + 1, kind)
        elif kind == "return":
            self.emit(indent, f"if {self.cond(names)}:")
            self.emit(indent + 1, f"return {self.fn.ret}")
        elif kind == "if":
            self.emit(indent, f"if {self.cond(names)}:")
            self.block(indent + 1, names, loop, in_finally, depth + 1)
            if self.draw(st.booleans()):
                self.emit(indent, "else:")
                self.block(indent + 1, names, loop, in_finally, depth + 1)
        elif kind == "for":
            var = f"i{self.label()}"
            k = self.draw(st.integers(0, 3))
            shape = self.pick(["range", "range", "list", "reversed", "sorted", "enumerate", "zip"])
            items = ", ".join(self.arith(names) for _ in range(k)) if shape in ("list", "sorted") else ""
            iterable = {"range": f"range({k})", "list": f"[{items}]", "reversed": f"reversed(range({k}))",
                        "sorted": f"sorted([{items}])", "enumerate": f"enumerate(range({k}))",
                        "zip": f"zip(range({k}), 'abc')"}[shape]
            if iterable.startswith(("enumerate", "zip")):
                self.emit(indent, f"for {var}, _{var} in {iterable}:")
            else:
                self.emit(indent, f"for {var} in {iterable}:")
            self.block(indent + 1, names + (var,), var, False, depth + 1)
            self.loop_else(indent, names, loop, in_finally, depth)
        elif kind == "while":
            var = f"w{self.label()}"
            self.emit(indent, f"{var} = 0")
            self.emit(indent, f"while {var} < {self.draw(st.integers(0, 3))}:")
            self.emit(indent + 1, f"{var} += 1")
            self.block(indent + 1, names + (var,), var, False, depth + 1)
            self.loop_else(indent, names, loop, in_finally, depth)
        elif kind == "try":
            self.emit(indent, "try:")
            self.block(indent + 1, names, loop, in_finally, depth + 1)
            shape = self.pick(["except", "finally", "both", "except_else", "all"])
            if shape != "finally":
                var = f"e{self.label()}"
                self.emit(indent, f"except ValueError as {var}:")
                self.emit(indent + 1, f'note({self.lbl()}, str({var}))')
                if self.draw(st.booleans()):
                    self.block(indent + 1, names, loop, in_finally, depth + 1)
            if shape in ("except_else", "all"):
                self.emit(indent, "else:")
                self.block(indent + 1, names, loop, in_finally, depth + 1)
            if shape in ("finally", "both", "all"):
                self.emit(indent, "finally:")
                self.emit(indent + 1, f'note({self.lbl()}, {self.shown(names)})')
                if self.draw(st.booleans()):
                    self.block(indent + 1, names, loop, True, depth + 1)
        elif kind == "with":
            var = f"c{self.label()}"
            where = f'f"{{label}}/{var}"' if self.fn.is_sub else f'"{var}"'
            self.emit(indent, f'with ctx({where}) as {var}:')
            self.sync += 1
            self.emit(indent + 1, f"note({var}, {self.shown(names)})")
            self.block(indent + 1, names, loop, in_finally, depth + 1)
            self.sync -= 1
        elif kind == "match":
            self.emit(indent, f"match {self.arith(names)} % 3:")
            self.sync += 1
            self.emit(indent + 1, "case 0:")
            self.block(indent + 2, names, loop, in_finally, depth + 1)
            self.emit(indent + 1, f"case 1 | 2 if {self.cond(names)}:")
            self.block(indent + 2, names, loop, in_finally, depth + 1)
            self.emit(indent + 1, "case _:")
            self.block(indent + 2, names, loop, in_finally, depth + 1)
            self.sync -= 1

    def loop_else(self, indent, names, loop, in_finally, depth) -> None:
        if self.draw(st.booleans()):
            self.emit(indent, "else:")
            self.block(indent + 1, names, loop, in_finally, depth + 1)

    def function(self, head: str, init: list[str], fn: _Fn, budget: int) -> list[str]:
        self.fn = fn
        self.left = budget
        self.top = (2, 4) if fn.is_sub else (4, 8)
        self.lines = [head] + ["    " + line for line in init]
        if self.draw(st.booleans()):
            fn.closures = True
            last = fn.names[-1]
            self.emit(1, f"snap = lambda: ({', '.join(fn.names)}, acc[0])")
            self.emit(1, "")
            self.emit(1, "def bump(d):")
            self.emit(2, f"nonlocal {last}")
            self.emit(2, f"{last} = ({last} + d) % 97")
            self.emit(2, f"return {last}")
            self.emit(1, "")
        self.block(1, fn.names, None, False, 0, *self.top)
        self.emit(1, f"return {fn.ret}")
        return self.lines


@st.composite
def programs(draw, corpus_module: str, multi_await: bool = False, max_stmts: int = 14, mid_chain: bool = False,
             retries: bool = False, branches: bool = False) -> str:
    """Source text of a module defining ``async def prog(x, y)`` (plus ``helper``, ``ctx`` and ``sub``)."""
    g = _Gen(draw, multi_await, max_stmts, mid_chain, retries, branches)
    sub = g.function("async def sub(label, a, b):", ["c = 0", "acc = [0]", "note(label, (a, b))"],
                     _Fn(("a", "b", "c"), ["a", "b", "c", "acc[0]"], "(a + b + c + acc[0]) % 97", True),
                     max(2, max_stmts // 3))
    text = "\n".join(sub)
    g.sub_pauses = "wait_for_event(" in text or "await flaky(" in text
    g.sub_raises = "raise " in text or "await helper(" in text or "await flaky(" in text
    prog = g.function("async def prog(x, y):", ["z = 0", "acc = [0]"],
                      _Fn(("x", "y", "z"), ["x", "y", "z", "acc[0]"], "(x, y, z, acc[0])", False), max_stmts)
    # A docstring naming this program keeps the code objects of different examples unequal: durable's compile
    # cache is keyed by code equality, which ignores the module (BUG-11; tested in test_differential).
    tag = hashlib.sha256("\n".join(sub + prog).encode()).hexdigest()[:12]
    doc = f'    """gen {tag}"""'
    body = "\n".join([sub[0], doc, *sub[1:]]) + "\n\n\n" + "\n".join([prog[0], doc, *prog[1:]]) + "\n"
    helper = HEADER.replace("async def helper(label, v):\n", f'async def helper(label, v):\n    """gen {tag}"""\n')
    return helper.format(corpus=corpus_module) + "\n" + body
