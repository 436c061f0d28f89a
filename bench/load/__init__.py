"""Load suite of durable_django on PostgreSQL: 100,000 waiting instances, concurrent publishers, admin, sweep.

``python -m bench load [--instances N] [--targets T] [--publishers P] [--workers W] [--quick]``
(see ``bench/README.md``, section "Load suite"):

1. A database of its own (``durable_load``, dropped and created) holding N
   instances that really wait: one instance of each kind is run through the
   app until it pauses, then its row is cloned by ``COPY`` with new ids, the
   frame's locals and the start arguments re-signed for each clone.
2. P publisher processes send ``"go"`` to T of them, with duplicates (the same
   idempotency key again, and the same event from two publishers at once),
   while W Celery workers run the woken instances (each then does one
   database step and completes). Throughput, publish -> completed latency
   from the rows' timestamps, and the exactly-once invariants.
3. The admin changelist and detail page with N rows (Django's test client).
4. ``durable_resume`` over N rows with a few hundred due (expired leases,
   due timers, events without a wake-up), dry run and real, with EXPLAIN of
   every query it sends.

Speeds are reported, never asserted; the invariants are checked and a run
that breaks one fails.
"""

from .report import format_table
from .run import DEFAULT_OUT, main, run

__all__ = ["DEFAULT_OUT", "format_table", "main", "run"]
