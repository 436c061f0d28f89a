"""Django settings of the peer benchmark's durable_django child (``bench/peer_ours.py``).

The Django benchmark's settings (``bench/django_settings.py``: database by
``DURABLE_BENCH_DB``, ``DURABLE_BENCH_PG_NAME``, ``DURABLE_BENCH_SQLITE``) with
``RUN_INLINE``: ``start()`` and ``publish_event()`` run the instance in this
process through ``worker.run_instance``, so no broker or worker is involved.
"""

from __future__ import annotations

from bench.django_settings import *  # noqa: F403
from bench.django_settings import DURABLE

DURABLE = {**DURABLE, "RUN_INLINE": True}
