"""The Quick Start of the documentation (docs/quickstart.md) runs as written and prints what the page says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"


def test_quickstart_snippet_prints_what_the_page_says(tmp_path):
    text = PAGE.read_text()
    code, expected = re.search(r"```python\n(.*?)```.*?It prints:\n\n```text\n(.*?)```", text, re.S).groups()
    script = tmp_path / "quickstart.py"
    script.write_text(code)
    root = str(PAGE.parents[1])
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout == expected
