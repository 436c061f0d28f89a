"""Publish an event to an instance from the shell.

A wait with an assignee or a form (a human task) takes only answers from a
user it is assigned to: ``--as USERNAME`` publishes as that user, with the
task's checks (an event published without a user is rejected by such a wait).
"""

from __future__ import annotations

from django.apps import apps
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError

from durable_django.api import publish_event
from durable_django.exceptions import DurableDjangoError
from durable_django.limits import parse_json

HUMAN_TASKS = apps.is_installed("durable_django.humantasks")
if HUMAN_TASKS:  # --as answers with the task's checks: the optional human-task app
    from durable_django.humantasks.assignment import error_text
    from durable_django.humantasks.sync import answer


class Command(BaseCommand):
    help = "Publish an event (name, JSON payload) to a durable instance."

    def add_arguments(self, parser):
        parser.add_argument("instance_id")
        parser.add_argument("event")
        parser.add_argument("--payload", default=None, help="JSON payload (default: null).")
        parser.add_argument("--idempotency-key", default=None)
        parser.add_argument("--as", dest="username", default=None, metavar="USERNAME",
                            help="Publish as this user (needed to answer a human task; its checks apply).")

    def handle(self, *args, **opts):
        payload = None
        if opts["payload"] is not None:
            try:
                payload = parse_json(opts["payload"], "--payload")
            except ValueError as exc:
                raise CommandError(f"--payload is not valid JSON: {exc}")
        try:
            if opts["username"] is None:
                ev = publish_event(opts["instance_id"], opts["event"], payload,
                                   idempotency_key=opts["idempotency_key"])
            elif not HUMAN_TASKS:
                raise CommandError("--as needs 'durable_django.humantasks' in INSTALLED_APPS")
            else:
                User = get_user_model()
                user = User._default_manager.filter(**{User.USERNAME_FIELD: opts["username"]}).first()
                if user is None:
                    raise CommandError(f"no user {opts['username']!r}")
                ev = answer(user, opts["instance_id"], opts["event"], payload,
                            idempotency_key=opts["idempotency_key"])
        except PermissionDenied as exc:
            raise CommandError(f"{opts['username']!r} may not publish this: {exc}")
        except ValidationError as exc:
            raise CommandError(f"invalid payload: {error_text(exc)}")
        except (DurableDjangoError, ValueError) as exc:
            raise CommandError(str(exc))
        self.stdout.write(self.style.SUCCESS(f"event #{ev.pk} {ev.name!r} stored for {opts['instance_id']}."))
