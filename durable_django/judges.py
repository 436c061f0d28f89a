"""Who judges the event that reaches a human-task wait: a hook the human-task app fills in.

A wait whose metadata names an assignee or a form (:data:`TASK_KEYS`) takes
only an event whose publisher may answer it and whose payload fits the form.
The backend asks the judge when the wait consumes an event; the optional
``durable_django.humantasks`` app registers its judge in ``AppConfig.ready()``,
so that the backend never imports the app. Without the app installed such a
wait has no judge and the run stops with ``ImproperlyConfigured``: the
instance is handed back untouched, no event is taken unchecked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured

#: Keys of a wait's metadata that make it a human task (see :mod:`durable_django.humantasks.assignment`).
TASK_KEYS = ("user", "group", "permission", "form", "schema")

#: ``judge(meta, publisher_id, payload) -> (True, cleaned payload) | (False, reason)``.
Judge = Callable[[dict, Any, Any], tuple[bool, Any]]

_judge: Judge | None = None


def is_task_meta(meta: dict | None) -> bool:
    """Does a wait with this metadata wait for a person (an assignee, or a form its payload must fit)?"""
    if not meta:
        return False
    return any(meta.get(k) for k in TASK_KEYS)


def register_judge(judge: Judge) -> None:
    """Make ``judge`` decide which events answer a human-task wait (idempotent: the last one registered wins)."""
    global _judge
    _judge = judge


def judge_answer(meta: dict, publisher_id: Any, payload: Any) -> tuple[bool, Any]:
    """Ask the registered judge whether an event (its publisher's id, its payload) answers the wait ``meta``."""
    if _judge is None:
        raise ImproperlyConfigured("a wait names an assignee or a form (a human task), but no judge of answers is "
                                   "registered: add 'durable_django.humantasks' to INSTALLED_APPS")
    return _judge(meta, publisher_id, payload)
