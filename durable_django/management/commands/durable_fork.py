"""Fork an instance from one of its kept checkpoints (or list them): the command line of docs/fork.md."""

from __future__ import annotations

import getpass

from django.core.management.base import BaseCommand, CommandError

from durable_django import operations
from durable_django.exceptions import DurableDjangoError
from durable_django.forks import ForkRefused, kept_checkpoints
from durable_django.limits import parse_json


class Command(BaseCommand):
    help = ("Start a new instance from kept checkpoint --step of an instance (its program keeps a history), "
            "optionally with locals changed; --list shows the kept checkpoints.")

    def add_arguments(self, parser):
        parser.add_argument("instance_id")
        parser.add_argument("--step", type=int, help="the checkpoint to fork from (see --list)")
        parser.add_argument("--new-id", dest="new_id", default=None, help="id of the new instance (default: derived)")
        parser.add_argument("--set", dest="sets", action="append", default=[], metavar="[FRAME.]NAME=JSON",
                            help="set a local before the fork (frame index, 0 outermost; default the innermost); "
                                 "repeatable, e.g. --set total=10 --set 0.order_id='\"A-7\"'")
        parser.add_argument("--list", action="store_true", help="list the kept checkpoints and fork nothing")

    def handle(self, *args, **opts):
        iid = opts["instance_id"]
        try:
            if opts["list"]:
                rows = kept_checkpoints(iid)
                if not rows:
                    self.stdout.write(f"{iid}: no kept checkpoints (its program keeps no history)")
                for row in rows:
                    self.stdout.write(f"{row['step']:>6}  {row['status']:<9}  {row['at']:%Y-%m-%d %H:%M:%S}  "
                                      f"{row['position']}")
                return
            if opts["step"] is None:
                raise CommandError("give --step K (the checkpoint to fork from) or --list")
            edits = {}
            for item in opts["sets"]:
                name, eq, text = item.partition("=")
                if not eq or not name:
                    raise CommandError(f"--set {item!r}: write [FRAME.]NAME=JSON")
                try:
                    edits[name] = parse_json(text)
                except ValueError as exc:
                    raise CommandError(f"--set {item!r}: not valid JSON: {exc}") from None
            inst = operations.fork(iid, opts["step"], new_instance_id=opts["new_id"], locals=edits,
                                   actor=f"manage.py durable_fork ({_user()})")
        except (DurableDjangoError, ForkRefused) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(f"{inst.instance_id}: forked from {iid} at checkpoint {opts['step']} "
                                             f"({inst.status})"))


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return "unknown user"
