"""Benchmarks of durable_django: checkpoint cost, publish-to-running latency, throughput.

``python -m bench django [--quick] [--out PATH] [--profile]`` runs every part
and prints a table (see ``bench/README.md``). Each part runs in a child process
of its own (``python -m bench.django_bench --child PART --db pg|sqlite``),
because Django's default database is fixed per process; every figure is
measured against its floor in the same child, interleaved.

Parts:

* ``steps``: µs per awaited step of ``bench.workloads.many_steps`` run by
  ``durable_django``'s executor in this process (``RUN_INLINE``), against
  one ``UPDATE`` + ``COMMIT`` of a 2 KB blob on the same database;
* ``latency``: ``publish_event`` until the program's next step runs in a
  real Celery worker (Redis broker), against ``.delay()`` until a bare task
  starts in the same worker;
* ``throughput``: one-step processes completed per second by 2 workers,
  against bare tasks per second on the same workers.
"""

from .report import format_table
from .run import DEFAULT_OUT, main, run

__all__ = ["DEFAULT_OUT", "format_table", "main", "run"]
