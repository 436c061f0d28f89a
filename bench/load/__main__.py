"""``python -m bench.load --publisher PLAN --publisher-out OUT [--paced]``: one publisher process of the load
suite (the suite starts them; run the suite itself with ``python -m bench load``)."""

import argparse
from pathlib import Path

from .publishers import publisher_main

ap = argparse.ArgumentParser()
ap.add_argument("--publisher", type=Path, required=True)
ap.add_argument("--publisher-out", type=Path, required=True)
ap.add_argument("--paced", action="store_true")
a = ap.parse_args()
publisher_main(a.publisher, a.publisher_out, a.paced)
