"""Failure handling: what a retry policy, checkpoint history and a fork cost (``python -m bench failures``).

Three parts, each measured in one run against its own reference:

* (a) µs per step of a ``durable.step`` with a ``RetryPolicy`` whose attempts
  succeed, against the same step without a policy (target: at most 1 µs
  more), with a program default policy, and a nested durable call for
  reference; on ``DurableBackend(InMemoryStateStore())`` and on a backend that
  saves nothing (the runtime's own share);
* (b) checkpoint history (``history=10``, ``history=True``) against none: µs
  per checkpoint, the ratio, and the bytes of each stored checkpoint; in the
  core and on Django/SQLite (a child process);
* (c) ``durable.fork`` from checkpoint k of an instance with 100 checkpoints,
  and running the fork to its end.

Files: ``workloads.py`` (the programs), ``setup.py`` (sizes, targets),
``measure.py`` (the core parts), ``django_part.py`` (the Django child),
``report.py`` (the table), ``run.py`` (the CLI). Results go to
``bench/results/failures.json``.
"""

from .run import main, run

__all__ = ["main", "run"]
