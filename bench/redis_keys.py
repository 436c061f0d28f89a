"""Leaving a shared Redis as it was found: everything one queue left behind, and nothing of anyone else's.

Celery's Redis transport leaves, per queue: the queue's list, kombu's binding
sets named after it, and for a worker killed with messages in flight (acks
late) entries in the ``unacked`` hash and the ``unacked_index`` sorted set that
name the queue in their routing key. Keys of our own notes are named after the
queue too (``bench.django_programs.note_key``). The benchmarks and the test
suite call :func:`purge_queue` when they end.
"""

from __future__ import annotations

import json


def purge_queue(url: str, queue: str) -> int:
    """Delete what ``queue`` left in the Redis at ``url``; returns how many keys and entries went."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        removed = 0
        keys = client.keys(f"*{queue}*")
        if keys:
            removed += client.delete(*keys)
        for tag, raw in client.hscan_iter("unacked"):
            try:
                routing_key = json.loads(raw)[2]
            except (ValueError, IndexError, TypeError):
                continue
            if routing_key == queue:
                removed += client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
        return removed
    finally:
        client.close()
