"""Cancel one or more instances."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from durable_django.api import cancel
from durable_django.exceptions import DurableDjangoError


class Command(BaseCommand):
    help = "Cancel durable instances; they never run again."

    def add_arguments(self, parser):
        parser.add_argument("instance_ids", nargs="+")
        parser.add_argument("--reason", default="cancelled by an operator")

    def handle(self, *args, **opts):
        failed = 0
        for iid in opts["instance_ids"]:
            try:
                cancel(iid, opts["reason"], actor="manage.py durable_cancel")
                self.stdout.write(self.style.SUCCESS(f"{iid}: cancelled"))
            except DurableDjangoError as exc:
                failed += 1
                self.stderr.write(self.style.ERROR(f"{iid}: {exc}"))
        if failed:
            raise CommandError(f"{failed} instance(s) could not be cancelled")
