"""Re-sign every stored blob with the current signing key (the middle step of a key rotation)."""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import DEFAULT_DB_ALIAS

from durable_django.checkpoints import resign_all
from durable_django.models import DurableInstance
from durable_django.signing import convert_rows, resign


class Command(BaseCommand):
    help = ("Re-sign the state and arguments of every instance, and every kept checkpoint, that verify only "
            "with a fallback key (SIGNING_KEY_FALLBACKS / SECRET_KEY_FALLBACKS) with the current key, so the old "
            "key can be dropped. Blobs that verify with no key are left as they are. Nothing is unpickled.")

    def add_arguments(self, parser):
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)

    def handle(self, *args, **opts):
        n = convert_rows(DurableInstance, opts["database"], resign)
        n += resign_all(opts["database"])  # kept checkpoints (docs/fork.md)
        self.stdout.write(self.style.SUCCESS(f"{n} blob(s) re-signed with the current key."))
