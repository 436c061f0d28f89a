"""The progress the expense process reports from inside (``durable.set_status``), for the employee's page.

The process calls :func:`report` at each stage; the status is saved with its next checkpoint (no write of
its own) and pushed on the page's websocket (``progress`` and ``progress_text`` in the status JSON), where
the bar and the line under the state follow it. See docs/progress.md.
"""

from __future__ import annotations

import durable

#: stage -> (percent, what the employee reads)
STAGES: dict[str, tuple[int, str]] = {
    "manager": (25, "waiting for the manager's decision"),
    "director": (25, "waiting for the director's decision (your own expense as a manager)"),
    "both": (25, "waiting for the manager and finance (asked at the same time)"),
    "finance_left": (60, "approved by the manager, waiting for finance"),
    "manager_left": (60, "approved by finance, waiting for the manager"),
    "escalated": (70, "finance is late: escalated to the director"),
    "paying": (90, "approved: recording the payment"),
    "paid": (100, "paid"),
    "rejected": (100, "rejected"),
}


def report(stage: str) -> None:
    """Report ``stage`` as the process's status, e.g. ``{"stage": "finance", "percent": 60, "message": ...}``."""
    percent, message = STAGES[stage]
    durable.set_status({"stage": stage, "percent": percent, "message": message})
