"""Helpers every benchmark suite shares: child processes (:mod:`.processes`), the machine and its services
(:mod:`.environment`) and statistics (:mod:`.stats`).

Nothing here imports Django, durable or durable_django at module level, so the peers' children (which run
in ``.venv-bench``, one of them with the seed package's ``durable`` on ``PYTHONPATH``) may import it.
"""
