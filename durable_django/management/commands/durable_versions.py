"""Instances by program and code version; flags those whose step layout no longer matches the code."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand
from django.db.models import Count

from durable_django import programs
from durable_django.exceptions import UnknownProgram
from durable_django.models import FINISHED, DurableInstance


class Command(BaseCommand):
    help = ("Count unfinished instances by program, declared version and step layout, and say whether the "
            "current code can resume them as they are.")

    def add_arguments(self, parser):
        parser.add_argument("--all", action="store_true", help="Include finished instances.")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **opts):
        qs = DurableInstance.objects.all() if opts["all"] else DurableInstance.objects.exclude(status__in=FINISHED)
        groups = qs.values("program", "program_version", "layout_hash", "status").annotate(n=Count("pk")).order_by(
            "program", "program_version", "layout_hash", "status")
        rows: list[dict[str, Any]] = []
        for g in groups:
            try:
                prog = programs.resolve(g["program"])
                current = prog.compiled.layout_hash
                verdict = "current" if g["layout_hash"] in ("", current) else (
                    "migration registered" if programs.migrator_for(g["program"], g["program_version"], prog)
                    else "CODE CHANGED (cannot resume)")
            except UnknownProgram as exc:
                current, verdict = None, f"PROGRAM MISSING: {exc}"
            rows.append({**g, "current_layout": current, "verdict": verdict})
        if opts["json"]:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        for r in rows:
            version = r["program_version"] or "-"
            self.stdout.write(f"{r['program']:<45} v={version:<6} layout={r['layout_hash'][:12]:<12} "
                              f"{r['status']:<10} {r['n']:>6}  {r['verdict']}")
        self.stdout.write(f"{sum(r['n'] for r in rows)} instance(s) in {len(rows)} group(s).")
