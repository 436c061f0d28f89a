"""The runnable examples of the concurrency pages (docs/concurrency.md, docs/children.md) run as written and print
what the pages say: a ```python block followed by "It prints:" and a ```text block."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXAMPLE = re.compile(r"```python\n((?:(?!```).)*)```\n\nIt prints:\n\n```text\n(.*?)```", re.S)


@pytest.mark.parametrize("page", ["concurrency.md", "children.md"])
def test_page_example_prints_what_the_page_says(tmp_path, page):
    examples = EXAMPLE.findall((DOCS / page).read_text())
    assert examples, f"no runnable example in docs/{page}"
    for n, (code, expected) in enumerate(examples):
        script = tmp_path / f"example_{n}.py"
        script.write_text(code)
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                             cwd=tmp_path, env={"PYTHONPATH": str(DOCS.parent), "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
        assert out.stdout == expected
