"""Resume instances that should run: due timers, expired leases, pending events (or one id)."""

from __future__ import annotations

import signal
import threading
import time

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, InterfaceError, OperationalError, connections

from durable_django import schedules, worker
from durable_django.api import get_instance, resume
from durable_django.conf import durable_settings
from durable_django.exceptions import DurableDjangoError
from durable_django.models import DurableInstance, Status
from durable_django.wakeups import send_task


class Command(BaseCommand):
    help = ("Resume durable instances that are due, stuck with an expired lease, or have a pending event "
            "(or one instance by id). --loop makes it a small scheduler; --sync runs them here, without Celery.")

    def add_arguments(self, parser):
        parser.add_argument("instance_ids", nargs="*", help="Only these instances (default: all that should run).")
        parser.add_argument("--dry-run", action="store_true", help="List what would be resumed; change nothing.")
        parser.add_argument("--sync", action="store_true", help="Run instances in this process instead of Celery.")
        parser.add_argument("--loop", action="store_true", help="Repeat every --interval seconds until SIGTERM.")
        parser.add_argument("--interval", type=float, default=None, help="Seconds between sweeps (--loop).")
        parser.add_argument("--limit", type=int, default=None, help="At most this many instances per sweep.")
        parser.add_argument("--iterations", type=int, default=None, help="Stop after this many sweeps (--loop).")
        parser.add_argument("--no-schedules", action="store_true",
                            help="Do not fire due schedules after each sweep (docs/schedules.md).")

    def check(self, *args, **kwargs):
        """Only the checks that need no database: the scheduler starts while the database is down and sweeps
        once it is back. (Django 6 runs the model checks against every database when given none.)"""
        return super().check(*args, **{**kwargs, "databases": []})

    def handle(self, *args, **opts):
        if opts["instance_ids"]:
            return self._explicit(opts)
        interval = opts["interval"] or durable_settings.SWEEP_INTERVAL
        stop = threading.Event()
        if opts["loop"]:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
        done = 0
        while True:
            try:
                ids = worker.sweep(dry_run=opts["dry_run"], inline=opts["sync"], limit=opts["limit"])
                if not (opts["dry_run"] or opts["no_schedules"]):
                    fired = schedules.fire_due()
                    if fired:
                        self.stdout.write(f"{len(fired)} scheduled instance(s) started.")
                    for iid in fired if opts["sync"] and not durable_settings.RUN_INLINE else ():
                        worker.run_instance(iid)  # --sync: here too, not through Celery
            except (OperationalError, InterfaceError) as exc:
                if not opts["loop"]:
                    raise
                # The database restarted or is unreachable: the scheduler outlives it and sweeps again
                # on a new connection once it is back.
                self.stderr.write(f"sweep failed, database unavailable ({type(exc).__name__}: "
                                  f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); retrying")
                try:
                    connections.close_all()
                except DatabaseError:  # a dead connection is dropped either way
                    pass
            else:
                verb = "would resume" if opts["dry_run"] else ("ran" if opts["sync"] else "scheduled")
                for iid in ids if opts["dry_run"] or opts["verbosity"] > 1 else ():
                    self.stdout.write(iid)
                self.stdout.write(self.style.SUCCESS(f"{len(ids)} instance(s) {verb}."))
            done += 1
            if not opts["loop"] or (opts["iterations"] and done >= opts["iterations"]):
                return
            start = time.monotonic()
            while not stop.is_set() and time.monotonic() - start < interval:
                stop.wait(min(0.2, interval))
            if stop.is_set():
                return

    def _explicit(self, opts):
        failed: list[str] = []
        for iid in opts["instance_ids"]:
            try:
                if opts["dry_run"]:
                    inst = get_instance(iid)
                    self.stdout.write(f"{iid}: {inst.status} (would resume)")
                    continue
                if opts["sync"]:
                    outcome = resume(iid, inline=True)
                    if outcome in (Status.SUSPENDED, Status.FAILED):  # it ran, and stopped on an error
                        error = DurableInstance.objects.filter(pk=iid).values_list("error", flat=True).first()
                        lines = (error or "").strip().splitlines() or ["no error recorded"]
                        # a failure's error is a traceback (its last line says what); a suspension's starts with why
                        reason = (lines[-1] if outcome == Status.FAILED else lines[0])[:500]
                        failed.append(f"{iid} is {outcome}: {reason}")
                        self.stderr.write(self.style.ERROR(failed[-1]))
                        continue
                    self.stdout.write(f"{iid}: {outcome}")
                else:
                    resume(iid)
                    if durable_settings.RUN_INLINE:
                        continue
                    self.stdout.write(f"{iid}: scheduled")
            except DurableDjangoError as exc:
                failed.append(f"{iid}: {exc}")
                self.stderr.write(self.style.ERROR(failed[-1]))
        if failed:
            raise CommandError(f"{len(failed)} instance(s) could not be resumed: " + "; ".join(failed))


__all__ = ["Command", "send_task"]
