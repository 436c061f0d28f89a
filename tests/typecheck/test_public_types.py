"""The public API as a type checker sees it: mypy (and pyright, when installed) over two usage files.

``usage_ok.py`` uses every documented call form and must check clean (mypy ``--strict``);
``usage_wrong.py`` must produce an error on exactly the lines marked ``# error``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
OK, WRONG = HERE / "usage_ok.py", HERE / "usage_wrong.py"
TIMEOUT = 600


def marked_lines(path: Path) -> set[int]:
    return {n for n, line in enumerate(path.read_text().splitlines(), 1) if line.rstrip().endswith("# error")}


def by_file(errors: list[tuple[str, int]]) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {OK.name: set(), WRONG.name: set()}
    for file, line in errors:
        found.setdefault(Path(file).name, set()).add(line)
    return found


def check(found: dict[str, set[int]], output: str) -> None:
    assert found[OK.name] == set(), f"usage_ok.py must check clean:\n{output}"
    expected = marked_lines(WRONG)
    assert len(expected) > 20
    missed, extra = expected - found[WRONG.name], found[WRONG.name] - expected
    assert not missed and not extra, f"usage_wrong.py: no error on lines {sorted(missed)}, " \
                                     f"unexpected errors on lines {sorted(extra)}:\n{output}"


def test_mypy() -> None:
    # --follow-imports=silent: the internal modules are checked by `make lint` under their own settings.
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-error-summary",
         "--hide-error-context", str(OK.relative_to(ROOT)), str(WRONG.relative_to(ROOT))],
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    output = proc.stdout + proc.stderr
    assert proc.returncode in (0, 1), output
    errors = [(m[1], int(m[2])) for m in re.finditer(r"^(.+?\.py):(\d+): error:", proc.stdout, re.M)]
    check(by_file(errors), output)


def _pyright() -> str | None:
    local = Path(sys.executable).with_name("pyright")
    return str(local) if local.exists() else shutil.which("pyright")


def test_pyright() -> None:
    exe = _pyright()
    if exe is None:
        pytest.skip("pyright is not installed (pip install pyright)")
    try:
        proc = subprocess.run([exe, "--outputjson", "--pythonpath", sys.executable, str(OK), str(WRONG)],
                              cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"pyright could not run: {exc}")
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        pytest.skip(f"pyright could not run (no node.js?): {proc.stdout[-500:]}{proc.stderr[-500:]}")
    errors = [(d["file"], d["range"]["start"]["line"] + 1) for d in report["generalDiagnostics"]
              if d["severity"] == "error"]
    check(by_file(errors), json.dumps(report["generalDiagnostics"], indent=1))
