"""Delete finished instances (with their events and history) older than N days, in batches."""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from durable_django.models import FINISHED, DurableInstance


class Command(BaseCommand):
    help = "Delete completed/failed/cancelled instances that finished more than --days days ago."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=float, default=30)
        parser.add_argument("--status", action="append", choices=[str(s) for s in FINISHED])
        parser.add_argument("--batch", type=int, default=500)
        parser.add_argument("--dry-run", action="store_true")

    def handle(self, *args, **opts):
        if opts["days"] < 0 or opts["batch"] < 1:
            raise CommandError("--days must be >= 0 and --batch >= 1")
        cutoff = timezone.now() - timedelta(days=opts["days"])
        qs = DurableInstance.objects.filter(status__in=opts["status"] or FINISHED, finished_at__lt=cutoff)
        if opts["dry_run"]:
            self.stdout.write(f"{qs.count()} instance(s) would be deleted.")
            return
        total = 0
        while True:
            ids = list(qs.values_list("pk", flat=True)[: opts["batch"]])
            if not ids:
                break
            DurableInstance.objects.filter(pk__in=ids).delete()
            total += len(ids)
        self.stdout.write(self.style.SUCCESS(f"{total} instance(s) deleted."))
