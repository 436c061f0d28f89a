"""Retry failed instances: each continues from its last checkpoint (see ``durable_django.operations.retry``)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from durable_django.exceptions import DurableDjangoError
from durable_django.limits import bad_character
from durable_django.models import DurableInstance, Status
from durable_django.operations import retry


class Command(BaseCommand):
    help = ("Retry failed durable instances after their code or data was fixed: each continues from its last "
            "checkpoint (completed steps do not run again); one failed before checkpoints were kept starts over.")

    def add_arguments(self, parser):
        parser.add_argument("instance_ids", nargs="*", help="The failed instances to retry.")
        parser.add_argument("--all-failed", action="store_true", help="Every failed instance (with --program: of it).")
        parser.add_argument("--program", help="With --all-failed: only programs with this dotted path (prefix match).")
        parser.add_argument("--limit", type=int, default=None, help="With --all-failed: at most this many.")
        parser.add_argument("--dry-run", action="store_true", help="List what would be retried; change nothing.")

    def handle(self, *args, **opts):
        ids = self._selected(opts)
        failed: list[str] = []
        done = 0
        for iid in ids:
            try:
                if opts["dry_run"]:
                    row = DurableInstance.objects.filter(pk=iid).values_list("status", "position").first()
                    if row is None:
                        raise CommandError(f"no durable instance with id {iid!r}")
                    status, position = row
                    where = f"from {position}" if position else "from the start"
                    verdict = f"would retry {where}" if status == Status.FAILED else "not failed: would not retry"
                    self.stdout.write(f"{iid}: {status} ({verdict})")
                    continue
                inst = retry(iid, actor="manage.py durable_retry")
                done += 1
                where = f"from {inst.position}" if inst.position else "from the start"
                self.stdout.write(self.style.SUCCESS(f"{iid}: retried {where} ({inst.status})"))
            except (DurableDjangoError, CommandError) as exc:
                failed.append(f"{iid}: {exc}")
                self.stderr.write(self.style.ERROR(failed[-1]))
        if not opts["dry_run"]:
            self.stdout.write(f"{done} instance(s) retried.")
        if failed:
            raise CommandError(f"{len(failed)} instance(s) could not be retried: " + "; ".join(failed))

    def _selected(self, opts) -> list[str]:
        for option in ("program",):
            bad = bad_character(opts[option] or "")
            if bad is not None:
                raise CommandError(f"{option} {opts[option]!r} contains {bad}")
        if opts["all_failed"]:
            if opts["instance_ids"]:
                raise CommandError("give instance ids or --all-failed, not both")
            qs = DurableInstance.objects.filter(status=Status.FAILED)
            if opts["program"]:
                qs = qs.filter(program__startswith=opts["program"])
            ids = qs.order_by("finished_at", "pk").values_list("pk", flat=True)
            return list(ids[: opts["limit"]] if opts["limit"] else ids)
        if opts["program"] or opts["limit"]:
            raise CommandError("--program and --limit select among all failed instances: add --all-failed")
        if not opts["instance_ids"]:
            raise CommandError("give the ids of failed instances, or --all-failed")
        return list(dict.fromkeys(opts["instance_ids"]))
