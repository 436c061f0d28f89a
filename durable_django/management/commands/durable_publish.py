"""Publish an event to an instance from the shell."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from durable_django.api import publish_event
from durable_django.exceptions import DurableDjangoError
from durable_django.limits import parse_json


class Command(BaseCommand):
    help = "Publish an event (name, JSON payload) to a durable instance."

    def add_arguments(self, parser):
        parser.add_argument("instance_id")
        parser.add_argument("event")
        parser.add_argument("--payload", default=None, help="JSON payload (default: null).")
        parser.add_argument("--idempotency-key", default=None)

    def handle(self, *args, **opts):
        payload = None
        if opts["payload"] is not None:
            try:
                payload = parse_json(opts["payload"], "--payload")
            except ValueError as exc:
                raise CommandError(f"--payload is not valid JSON: {exc}")
        try:
            ev = publish_event(opts["instance_id"], opts["event"], payload, idempotency_key=opts["idempotency_key"])
        except (DurableDjangoError, ValueError) as exc:
            raise CommandError(str(exc))
        self.stdout.write(self.style.SUCCESS(f"event #{ev.pk} {ev.name!r} stored for {opts['instance_id']}."))
