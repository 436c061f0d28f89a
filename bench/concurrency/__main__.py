"""``python -m bench.concurrency``: the suite, or (``--child django``) its Django child."""

from .run import main

main()
