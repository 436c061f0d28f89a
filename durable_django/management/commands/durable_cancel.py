"""Cancel one or more instances (their cleanup runs first; --force ends them at once)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from durable_django.api import cancel
from durable_django.exceptions import DurableDjangoError
from durable_django.models import Status


class Command(BaseCommand):
    help = ("Cancel durable instances: InstanceCancelled is raised in the program at its current await so that "
            "its except/finally blocks clean up. A second cancel, or --force, ends it at once, running nothing.")

    def add_arguments(self, parser):
        parser.add_argument("instance_ids", nargs="+")
        parser.add_argument("--reason", default="cancelled by an operator")
        parser.add_argument("--force", action="store_true",
                            help="end the instances 'cancelled' now, without running their cleanup")

    def handle(self, *args, **opts):
        failed = 0
        for iid in opts["instance_ids"]:
            try:
                inst = cancel(iid, opts["reason"], actor="manage.py durable_cancel", force=opts["force"])
            except DurableDjangoError as exc:
                failed += 1
                self.stderr.write(self.style.ERROR(f"{iid}: {exc}"))
                continue
            if inst.status == Status.CANCELLED:
                self.stdout.write(self.style.SUCCESS(f"{iid}: cancelled"))
            else:
                self.stdout.write(self.style.SUCCESS(
                    f"{iid}: cancel requested (it cleans up, then ends cancelled; cancel it again or use --force "
                    "to end it now)"))
        if failed:
            raise CommandError(f"{failed} instance(s) could not be cancelled")
