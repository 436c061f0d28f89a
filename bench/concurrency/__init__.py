"""Concurrency: what parallel branches and child processes cost (``python -m bench concurrency``).

Three parts, each measured in one run against its own reference:

* (1) µs per step of a branch that runs ``k`` steps while 0, 9 or 99 other
  branches of its group are paused on events (1, 10, 100 live branches),
  against the same steps in an instance without a group; target: at 100
  branches at most 2x the cost at 1 (a checkpoint writes its own branch, not
  every live branch's frames). On ``DurableBackend`` with
  ``InMemoryStateStore`` and ``DiskStateStore``, and on Django (SQLite,
  PostgreSQL; a child process each);
* (2) bytes of the parent's saved state and of each branch's, noted at every
  checkpoint of the running branch: flat per checkpoint;
* (3) 1,000 children started by one parent and awaited with one ``gather``,
  against 1,000 independent instances doing the same work, through 2 Celery
  workers on PostgreSQL (target: within 1.3x).

Files: ``workloads.py`` (the programs), ``setup.py`` (sizes, targets),
``measure.py`` (the core parts), ``django_part.py`` (the Django child),
``fanout.py`` (part 3), ``report.py`` (the table), ``run.py`` (the CLI).
Results go to ``bench/results/concurrency.json``.
"""

from .run import main, run

__all__ = ["main", "run"]
