"""List durable instances, or inspect one (stack, locals, inbox, history)."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from durable_django.limits import bad_character
from durable_django.models import DurableInstance, Status
from durable_django.payloads import instance_detail, instance_summary


class Command(BaseCommand):
    help = "List durable instances (filters) or show one instance in detail."

    def add_arguments(self, parser):
        parser.add_argument("instance_id", nargs="?", help="Show this instance in detail.")
        parser.add_argument("--status", choices=Status.values, action="append", help="Filter by status.")
        parser.add_argument("--program", help="Filter by program path (prefix match).")
        parser.add_argument("--parent", help="Only the child instances of this instance.")
        parser.add_argument("--limit", type=int, default=50)
        parser.add_argument("--json", action="store_true", help="Machine-readable output.")

    def handle(self, *args, **opts):
        for option in ("instance_id", "program", "parent"):
            bad = bad_character(opts[option] or "")
            if bad is not None:
                raise CommandError(f"{option} {opts[option]!r} contains {bad}")
        if opts["instance_id"]:
            inst = DurableInstance.objects.filter(pk=opts["instance_id"]).first()
            if inst is None:
                raise CommandError(f"no durable instance with id {opts['instance_id']!r}")
            data = instance_detail(inst)
            if opts["json"]:
                self.stdout.write(json.dumps(data, indent=2, default=str))
                return
            for key, value in data.items():
                if key in ("events", "history", "stack", "retrying", "branches", "children") or (
                        key == "parent" and not value):
                    continue
                self.stdout.write(f"{key:>16}: {value}")
            retrying = data["retrying"]
            if retrying:  # paused in a step retry's backoff
                self.stdout.write(f"{'retrying':>16}: step {retrying['step']}, attempt {retrying['failed_attempt']} of "
                                  f"{retrying['max_attempts']} failed; attempt {retrying['attempt']} at "
                                  f"{retrying['next_at']}")
                self.stdout.write(f"{'last error':>16}: {retrying['error']}")
            self.stdout.write("stack:")
            stack = data["stack"]
            if isinstance(stack, dict):  # the state could not be read: say why, show the rest of the row
                self.stdout.write(self.style.ERROR(f"  state unreadable: {stack['error']}"))
                stack = None
            for frame in stack or ():
                self.stdout.write(f"  {frame['position']}")
                for name, value in frame["locals"].items():
                    self.stdout.write(f"      {name} = {value}")
            if data["branches"]:  # parallel branches: each one's own call stack is in its row
                self.stdout.write("branches:")
                for b in data["branches"]:
                    wait = f" waits for {b['waits_for']}" if b["waits_for"] else ""
                    self.stdout.write(f"  {b['path']:<12} {b['status']:<10} {b['position']}{wait}")
            if data["children"]:
                total = inst.children.count()
                self.stdout.write(f"children ({total}):")
                for child in data["children"]:
                    self.stdout.write(f"  {child['instance_id']:<36} {child['status']:<10} {child['program']} "
                                      f"(on parent close: {child['on_parent_close']})")
                if total > len(data["children"]):
                    self.stdout.write(f"  ... {total - len(data['children'])} more (--parent {inst.instance_id})")
            self.stdout.write("events:")
            for ev in data["events"]:
                self.stdout.write(f"  #{ev['id']} {ev['name']} consumed={ev['consumed_at']} payload={ev['payload']}")
            self.stdout.write("history:")
            for h in data["history"]:
                self.stdout.write(f"  {h['at']} {h['kind']} -> {h['status']} {h['actor']} {h['detail'][:200]}")
            return
        qs = DurableInstance.objects.defer("state", "arguments").select_related("content_type")
        if opts["status"]:
            qs = qs.filter(status__in=opts["status"])
        if opts["program"]:
            qs = qs.filter(program__startswith=opts["program"])
        if opts["parent"]:
            qs = qs.filter(parent_id=opts["parent"])
        rows = [instance_summary(i) for i in qs.order_by("-created_at")[: opts["limit"]]]
        if opts["json"]:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        for r in rows:
            wait = r["waiting_for"] or (f"timer {r['wake_at']}" if r["wait_kind"] == "timer" else "")
            self.stdout.write(f"{r['instance_id']:<36} {r['status']:<10} {r['program']:<40} {wait}")
        self.stdout.write(f"{len(rows)} instance(s).")
