"""durable.debug: pdb driven with scripted input, as a user would type it.

Each test runs a small program in a subprocess with ``PYTHONBREAKPOINT`` set
and pdb commands on its stdin, then reads where pdb stopped (its ``> file(line)
function()`` lines).
"""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = '''
import asyncio, sys
from durable import DurableBackend, PauseForEventException, make_durable, wait_for_event


async def fetch(x):
    y = x * 2
    return y


async def flow(n):
    total = 0
    breakpoint()
    a = await fetch(n)
    total += a
    b = await fetch(a)
    total += b
    return total


async def waits(n):
    got = await wait_for_event("go")
    breakpoint()
    c = await fetch(got)
    return c + n


async def same(x):
    return x


async def load_limit(user):
    limits = await same({"bob": 10})
    return limits[user]


async def check(user):
    return await load_limit(user)


async def main(which):
    backend = DurableBackend()
    if which == "flow":
        print("result", await make_durable(flow)(3, orchestration_backend=backend, instance_id="a"))
    elif which == "waits":
        program = make_durable(waits)
        try:
            await program(1, orchestration_backend=backend, instance_id="b")
        except PauseForEventException:
            print("paused")
        backend.publish_event("b", "go", 20)
        print("result", await program(orchestration_backend=backend, instance_id="b"))
    else:
        import durable.debug
        try:
            await make_durable(check)("alice", orchestration_backend=backend, instance_id="c")
        except KeyError:
            durable.debug.post_mortem()

asyncio.run(main(sys.argv[1]))
'''


def debug(tmp_path: Path, which: str, commands: list[str], breakpoint_hook: str = "durable.debug.set_trace") -> str:
    (tmp_path / "prog.py").write_text(textwrap.dedent(PROGRAM))
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "PYTHONBREAKPOINT": breakpoint_hook}
    if sys.version_info >= (3, 13) and which != "post":  # pdb stops at the breakpoint() line itself first
        commands = ["n", *commands]
    done = subprocess.run([sys.executable, "prog.py", which], cwd=tmp_path, env=env, input="\n".join(commands) + "\n",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def stops(out: str) -> list[tuple[str, int, str]]:
    """(file name, line, function) of every place pdb stopped, in order (not at the ``breakpoint()`` line)."""
    found = [(Path(m[1]).name, int(m[2]), m[3]) for m in re.finditer(r"^(?:\(Pdb\) )*> (.+?)\((\d+)\)(\w+)\(\)",
                                                                       out, re.M)]
    calls = {i for i, line in enumerate(textwrap.dedent(PROGRAM).splitlines(), 1) if line.strip() == "breakpoint()"}
    return [f for f in found if f[0] != "prog.py" or f[1] not in calls]


def line_of(text: str) -> int:
    return next(i for i, line in enumerate(textwrap.dedent(PROGRAM).splitlines(), 1) if line.strip() == text)


def test_next_steps_over_awaits_in_user_code(tmp_path):
    out = debug(tmp_path, "flow", ["n", "n", "n", "n", "c"])
    assert stops(out) == [("prog.py", line_of(t), "flow") for t in
                          ("a = await fetch(n)", "total += a", "b = await fetch(a)", "total += b", "return total")]
    assert "result 18" in out and "runtime.py" not in out


def test_step_enters_a_durable_call_and_next_comes_back(tmp_path):
    out = debug(tmp_path, "flow", ["s", "n", "n", "n", "c"])
    assert stops(out) == [("prog.py", line_of("a = await fetch(n)"), "flow"),
                          ("prog.py", line_of("y = x * 2"), "fetch"),
                          ("prog.py", line_of("return y"), "fetch"),
                          ("prog.py", line_of("total += a"), "flow"),
                          ("prog.py", line_of("b = await fetch(a)"), "flow")]
    assert "result 18" in out


def test_where_lists_the_durable_calls(tmp_path):
    out = debug(tmp_path, "flow", ["s", "w", "c"])
    listed = out.partition("Durable calls")[2]
    assert f"prog.py({line_of('a = await fetch(n)')})flow()" in listed
    assert f"prog.py({line_of('y = x * 2')})fetch()" in listed


def test_next_after_a_resume(tmp_path):
    out = debug(tmp_path, "waits", ["n", "n", "c"])
    assert "paused" in out and "result 41" in out
    assert stops(out) == [("prog.py", line_of(t), "waits") for t in ("c = await fetch(got)", "return c + n")]


def test_plain_pdb_lands_in_the_runtime(tmp_path):
    """What durable.debug fixes: plain pdb's ``next`` at an await goes into the runtime's step loop."""
    out = debug(tmp_path, "flow", ["n", "n", "c"], breakpoint_hook="pdb.set_trace")
    assert ("runtime.py" in {name for name, _, _ in stops(out)}) or "--Return--" in out


def test_post_mortem_walks_the_durable_calls(tmp_path):
    out = debug(tmp_path, "post", ["w", "p limits", "up", "p user", "q"])
    names = [name for _, _, name in stops(out)]
    assert names[0] == "load_limit" and names[-1] == "check"  # where it failed; ``up``: its durable caller
    listed = out.split("(Pdb) ")[1]  # ``w``: the program's caller, the runtime, then the durable calls
    at = [listed.index(f"{name}()") for name in ("main", "_drive", "check", "load_limit")]
    assert at == sorted(at)
    assert "{'bob': 10}" in out and "'alice'" in out  # the variables of both calls
