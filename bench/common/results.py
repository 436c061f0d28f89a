"""The end of every suite's run: the table printed, the JSON written, the exit status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def report(res: dict[str, Any], table: str, out: Path, check_ok: bool = False, indent: int = 2) -> None:
    """Print ``table``, write ``res`` as JSON to ``out`` (values JSON does not know as strings) and say so;
    with ``check_ok``, exit with status 1 unless ``res["ok"]`` (an invariant broke)."""
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=indent, default=str) + "\n")
    print(f"\nwrote {out}")
    if check_ok and not res["ok"]:
        raise SystemExit(1)
