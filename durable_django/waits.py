"""The row's copies of a state's wait, and the words people read for it.

A paused instance's (or parallel branch's) wait is in its signed state; the
row copies it into ``wait_kind``, ``waiting_for`` and ``wake_at`` for the
queries that find what to wake, and describes it for the admin, the
``durable_status`` command, the live status and the history. A ``"branches"``
wait (parallel branches, see :mod:`durable_django.branches`) lists every
paused branch's wait: its ``waiting_for`` is that list as text, its
``wake_at`` the earliest due time.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from durable.state import describe_waits, leaf_waits

#: The ``waiting_for`` column holds at most this many characters.
_WAITING_FOR = 200


def to_datetime(due: float | None) -> datetime | None:
    """A core due time (POSIX seconds) as an aware datetime."""
    return None if due is None else datetime.fromtimestamp(due, tz=UTC)


def event_names(wait: Mapping[str, Any] | None) -> set[str]:
    """The events that end a wait: its own, or (a ``"branches"`` wait) any paused branch's, nested ones too."""
    return {leaf.get("event") or "" for leaf in leaf_waits(wait) if leaf.get("kind") == "event"}  # type: ignore[arg-type]


def waiting_for(wait: Mapping[str, Any]) -> str:
    """The ``waiting_for`` column of a row whose wait is ``wait`` (the event's name for an event wait: the
    wake-up queries join on it)."""
    if wait.get("kind") == "branches":
        text = describe_waits(wait)  # type: ignore[arg-type]  # a WaitInfo read back from the state
        return text if len(text) <= _WAITING_FOR else text[:_WAITING_FOR - 1] + "…"
    return (wait.get("event") or "")[:_WAITING_FOR]


def retry_backoff(state: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The step retry a state waits for (``state["retry"]``, while its wait is the backoff timer), or None."""
    retry = state.get("retry")
    wait = state.get("wait") or {}
    return retry if retry and wait.get("retry") and wait.get("kind") == "timer" else None


def retry_text(state: Mapping[str, Any]) -> str:
    """The history's line for a step retry's backoff: which attempt failed, why, and when the next one runs."""
    retry = retry_backoff(state) or {}
    due = to_datetime((state.get("wait") or {}).get("due"))
    attempt, most = int(retry.get("attempt") or 2), retry.get("max_attempts") or "?"
    return (f"step {retry.get('step', '?')} failed (attempt {attempt - 1} of {most}): {retry.get('error', '')}; "
            f"next attempt at {due.isoformat() if due else 'an unknown time'}")[:4000]


def retry_status(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """A step retry's backoff the state is paused in, for people: the step, the attempt that failed and the
    next one, the most attempts, the last error and when the next attempt runs (None: not in a backoff)."""
    retry = retry_backoff(state)
    if retry is None:
        return None
    attempt = int(retry.get("attempt") or 2)
    due = to_datetime((state.get("wait") or {}).get("due"))
    return {"step": str(retry.get("step", "?")), "attempt": attempt, "failed_attempt": attempt - 1,
            "max_attempts": retry.get("max_attempts"), "error": str(retry.get("error", "")),
            "next_at": due.isoformat() if due else None}


def wait_columns(state: Mapping[str, Any]) -> dict[str, Any]:
    """The row's copies of the state's wait: ``wait_kind``, ``waiting_for``, ``wake_at``.

    A step retry's backoff is a timer whose ``waiting_for`` says which attempt comes next.
    """
    wait: Mapping[str, Any] = state.get("wait") or {}
    text = waiting_for(wait)
    retry = retry_backoff(state)
    if retry is not None:
        text = f"retry {retry.get('step', '?')} (attempt {retry.get('attempt')}/{retry.get('max_attempts')})"
    return {"wait_kind": wait.get("kind", "") or "", "waiting_for": text[:_WAITING_FOR],
            "wake_at": to_datetime(wait.get("due"))}


def wait_text(wait: Mapping[str, Any]) -> str:
    """A paused instance's wait for its history entry."""
    if not wait:
        return ""
    if wait.get("kind") == "branches":
        return f"branches: {describe_waits(wait)}"  # type: ignore[arg-type]
    due = to_datetime(wait.get("due"))
    if wait.get("kind") == "timer":
        return f"timer until {due.isoformat() if due else 'an unknown time'}"
    return f"event {wait.get('event')!r}" + (f" until {due.isoformat()}" if due else "")
