"""Fault injection: killed workers, a restarted broker, sweeps; then every invariant is checked.

``python -m bench faults [--instances 500] [--workers 2] [--kills N] [--quick] [--db pg|sqlite]``

``--scenario db-restart`` runs the same plan without kills or broker restart on a private PostgreSQL server
(:mod:`bench.private_postgres`) that it stops and starts ``--db-restarts`` times while the instances run
(:meth:`Suite.db_outage`); ``--scenario partition`` cuts one worker's database link mid-step
(:mod:`bench.faults.partition`); ``--scenario all`` runs the three in turn.

The suite starts a private ``redis-server`` on a free port as the broker
(never the shared one), creates its own database (PostgreSQL
``durable_faults``, or a SQLite file), migrates it, and starts N instances of
``bench.faultapp.durable_programs.fault_process`` (four exactly-once db_step
side effects, an event wait, a durable timer). Real Celery worker processes
run them while the suite:

* SIGKILLs a random ready worker at random moments and starts a new one a
  moment later;
* stops the broker once in the middle (every queued and unacknowledged
  message is gone), starts and publishes to instances while it is down, and
  starts it again: only the ``durable_resume`` sweeps bring those back;
* publishes each instance's event: some before the process reaches its wait,
  the others once it waits, some twice with the same idempotency key;
* runs ``manage.py durable_resume --loop`` as the sweeper (restarted if it dies).

When every instance has completed (or the deadline passed) it checks that no
instance was lost, every side effect happened exactly once (one row per step,
the right balance, each step saw exactly the rows before it), every event was
stored once and consumed once and reached the program, and prints the counts;
the JSON goes to ``bench/results/faults.json``. The exit status is 1 when an
invariant fails.

:func:`run_suite` is the suite's core. Django is configured for its own
settings (``bench.faults_settings``) in the calling process, so call it in a
fresh process: ``tests/django/test_faults.py`` runs this command as one.
"""

from .report import format_table
from .run import main, run_suite
from .setup import FaultConfig

__all__ = ["FaultConfig", "format_table", "main", "run_suite"]
