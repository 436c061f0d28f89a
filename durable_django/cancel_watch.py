"""How a run learns of a cancel requested for its instance (the backend's part of :mod:`durable_django.cancellation`).

A mixin of :class:`~durable_django.backend.DjangoOrchestrationBackend`, which
calls :meth:`CancelWatch._deliver_pending_cancel` when it loads the state and
:meth:`CancelWatch._check_cancel` after each checkpoint. The executor arms it
with the runtime's ``request_cancel`` (:meth:`CancelWatch.watch_cancel`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.db import transaction

from durable.state import SavedState

from .conf import durable_settings
from .models import Status


class CancelWatch:
    """Delivers a cancel requested before the run at the load, and one requested during it at a checkpoint."""

    db: Any  # the backend's Operations
    using: str
    commit: bool

    def _init_cancel_watch(self) -> None:
        #: the runtime's ``request_cancel`` (see :meth:`watch_cancel`); None: cancels are not watched.
        self._on_cancel: Callable[[str], None] | None = None
        #: the reason of a cancel requested before the run, delivered when the state is loaded
        self._cancel_pending: str | None = None
        #: a cancel requested for this instance is known to this run (no more flag reads)
        self.cancel_known = False
        self._next_cancel_check = 0.0
        #: a cancel learnt at a checkpoint that ended the run (a pause): the executor wakes it again
        self.cancel_missed = False

    def watch_cancel(self, on_cancel: Callable[[str], None], reason: str | None) -> None:
        """Call ``on_cancel(reason)`` (the runtime's ``request_cancel``) when this run learns of a cancel.

        ``reason``: a cancel requested before the run (the row's flag, read by the claim), delivered when the
        state is loaded unless the state shows the program is already cleaning up after it (``"cancel"`` in
        the state: the core's ``request_cancel`` does not look there, and delivering it again would interrupt
        the cleanup). None: a cancel requested while the run goes on is read from the row at a checkpoint, at
        most every ``CANCEL_CHECK_SECONDS``.
        """
        self._on_cancel = on_cancel
        self._cancel_pending = reason
        self.cancel_known = reason is not None
        self._next_cancel_check = time.monotonic() + float(durable_settings.CANCEL_CHECK_SECONDS)

    def _deliver_pending_cancel(self, state: SavedState | None) -> None:
        reason, self._cancel_pending = self._cancel_pending, None
        if reason is not None and self._on_cancel is not None and (state is None or "cancel" not in state):
            self._on_cancel(reason)

    def _check_cancel(self, instance_id: str, status: str) -> None:
        """After a checkpoint: read the row's cancel flag (one SELECT) if it is time to; deliver a cancel found."""
        if self._on_cancel is None or self.cancel_known or status not in (Status.RUNNING, Status.PAUSED):
            return
        now = time.monotonic()
        if now < self._next_cancel_check:
            return
        self._next_cancel_check = now + float(durable_settings.CANCEL_CHECK_SECONDS)
        # Not left open while the next step runs (a long step would hold a snapshot, and a table lock that
        # blocks migrations): in autocommit where the database allows it, else its transaction is ended now,
        # which holds nothing else (the checkpoint just committed).
        with self.db.standalone() as alone:
            row = self.db.cancel_flag(instance_id)
        if not alone and self.commit:
            transaction.commit(using=self.using)
        if row is None or row[0] is None:
            return
        self.cancel_known = True
        if status == Status.RUNNING:
            self._on_cancel(row[1] or "")  # raised at the program's next await
        else:
            self.cancel_missed = True  # this checkpoint ended the run: the next run delivers it


def cancel_text(state: SavedState) -> str:
    """The ``error`` of an instance its cancellation ended: the reason (or the exception that carried it)."""
    reason = state.get("cancel")
    if isinstance(reason, str) and reason:
        return reason
    err = state.get("error")
    return str(err) if err is not None else ""
