"""Paused states of parallel branches for the human-task tests, made by the core's own run of a real program.

The core (:class:`durable.testing.DurableTestEnv`) runs the program; each
state it saves is written to the instance's row as a worker writes it
(signed, with the row's wait columns and version) and the transition signals
are sent as a worker sends them. Events answered through the task pages are
delivered to the run as the worker's wake-up would deliver them. So the
human-task app is tested on the real ``"branches"`` waits without needing the
Django backend's branch storage (the end-to-end tests with real workers do).
"""

from __future__ import annotations

from typing import Any

from django.db.models import F
from django.utils import timezone

from durable.testing import DurableTestEnv, run_sync
from durable_django.backend import DjangoOrchestrationBackend, wait_columns
from durable_django.models import DurableEvent, DurableInstance, Status
from durable_django.programs import path_of
from durable_django.signals import send_transition
from durable_django.signing import STATE, blob_context, sign

#: The Django backend stores branches itself (the ``django-branches`` work): end-to-end runs are possible.
DJANGO_RUNS_BRANCHES = hasattr(DjangoOrchestrationBackend, "save_branch")

_KINDS = {Status.PAUSED: "paused", Status.COMPLETED: "completed", Status.FAILED: "failed",
          Status.CANCELLED: "cancelled"}


class StagedRun:
    """One instance whose program the core runs in memory; its row follows every state the run saves."""

    def __init__(self, program: Any, *args: Any, instance_id: str) -> None:
        self.iid, self.path = instance_id, path_of(program)
        self.env = DurableTestEnv()
        DurableInstance.objects.create(instance_id=instance_id, program=self.path, status=Status.RUNNING)
        run_sync(self.env.astart(program, *args, instance_id=instance_id))
        self.store()

    @property
    def state(self) -> dict:
        return run_sync(self.env.backend.load_state(self.iid))

    def store(self) -> None:
        """Write the run's state to the row (as a worker's checkpoint) and send its transition."""
        state = self.state
        status = state["status"]
        DurableInstance.objects.filter(pk=self.iid).update(
            state=sign(state, blob_context(self.iid, self.path, STATE)), status=status, steps=state["steps"],
            version=F("version") + 1, finished_at=timezone.now() if status != Status.PAUSED else None,
            **wait_columns(state))
        send_transition(_KINDS[status], self.iid, status, program=self.path)

    def deliver(self) -> list[str]:
        """Run the instance on the events published to it (as its wake-up would): each is consumed and given
        to the run; returns their names."""
        names = []
        for pk, name, payload in (DurableEvent.objects.filter(instance_id=self.iid, consumed_at__isnull=True)
                                  .order_by("id").values_list("pk", "name", "payload")):
            send_transition("resumed", self.iid, Status.RUNNING, program=self.path)
            DurableEvent.objects.filter(pk=pk).update(consumed_at=timezone.now())
            run_sync(self.env.apublish(self.iid, name, payload))
            self.store()
            names.append(name)
        return names
