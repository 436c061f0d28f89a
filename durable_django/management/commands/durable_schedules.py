"""Manage schedules: sync the ones declared in code, list them with their next runs, fire, pause, resume."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from durable_django import schedules
from durable_django.models import DurableSchedule


class Command(BaseCommand):
    help = ("Durable schedules (docs/schedules.md). sync: write the schedules declared in code to the table; "
            "list: each schedule and its next run; fire: start what is due now; pause/resume NAME.")

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["sync", "list", "fire", "pause", "resume"])
        parser.add_argument("names", nargs="*", help="Schedules to pause or resume.")

    def handle(self, *args, **opts):
        action = opts["action"]
        if action == "sync":
            res = schedules.sync()
            for what, names in (("added", res.added), ("changed", res.changed), ("removed", res.removed)):
                for name in names:
                    self.stdout.write(f"{what}: {name}")
            self.stdout.write(self.style.SUCCESS(
                f"{len(res.added)} added, {len(res.changed)} changed, {len(res.removed)} removed."))
        elif action == "list":
            for row in DurableSchedule.objects.order_by("name"):
                when = row.cron or f"every {row.interval_seconds}s"
                state = "paused" if row.paused else f"next {row.next_run_at:%Y-%m-%d %H:%M:%S %Z}" \
                    if row.next_run_at else "no next run"
                self.stdout.write(f"{row.name}\t{row.program}\t{when} ({row.timezone})\t{state}\t"
                                  f"last: {row.last_instance_id or '-'}")
        elif action == "fire":
            fired = schedules.fire_due()
            for iid in fired if opts["verbosity"] > 1 else ():
                self.stdout.write(iid)
            self.stdout.write(self.style.SUCCESS(f"{len(fired)} scheduled instance(s) started."))
        else:
            if not opts["names"]:
                raise CommandError(f"{action} needs the names of the schedules")
            fn = schedules.pause if action == "pause" else schedules.resume
            missing = [name for name in opts["names"] if not fn(name)]
            if missing:
                raise CommandError(f"no such schedule: {', '.join(missing)}")
            self.stdout.write(self.style.SUCCESS(f"{len(opts['names'])} schedule(s) {action}d."))
