"""Celery signal receiver of the fault-injection workers: records each finished wake-up."""

from __future__ import annotations

from typing import Any

TASKS = {"durable_django.run_instance", "durable_django.run_instances"}


def record_wakeup(sender: Any = None, task: Any = None, args: Any = None, retval: Any = None, **kwargs: Any) -> None:
    """Count wake-ups per instance, redelivered messages (broker restores) and runs that found nothing to do.

    ``run_instance`` carries one id and returns its outcome; ``run_instances`` (a batch) carries a list and
    returns ``{id: outcome}``. A task that raised has an exception as ``retval``.
    """
    if getattr(task, "name", "") not in TASKS or not args:
        return
    from .models import WakeUp

    ids = [args[0]] if isinstance(args[0], str) else list(args[0])
    info = task.request.delivery_info or {}

    def outcome(iid: str) -> str:
        if isinstance(retval, str):
            return retval
        if isinstance(retval, dict):
            return str(retval.get(iid, "sent-back"))  # not started within BATCH_SECONDS: sent again
        return type(retval).__name__

    WakeUp.objects.bulk_create([
        WakeUp(instance_id=str(iid)[:200], worker=str(task.request.hostname or "")[:200], outcome=outcome(iid)[:40],
               redelivered=bool(info.get("redelivered")), batch=len(ids) > 1) for iid in ids])
