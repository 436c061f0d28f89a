"""The concurrency benchmark runs end to end with tiny sizes and reports every figure.

Only the shape of the results is checked, and what holds whatever the speed:
every run returned the right result (the suite checks each), the running
branch's state does not grow per checkpoint, the branches' states are gone once
the instance ended. Speed is never asserted in tests.
"""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.__main__ import SUITES  # noqa: E402
from bench.concurrency import main  # noqa: E402
from bench.concurrency.django_part import NO_BRANCHES  # noqa: E402
from bench.concurrency.setup import tiny  # noqa: E402

#: The core's own sessions (nox ``core``) run without Django: the suite's Django part is left out there.
HAS_DJANGO = importlib.util.find_spec("django") is not None
VARIANTS = {"solo", "1", "10", "100"}
CHECKPOINT = {"store", "runner_steps", "repeats", "branches", "us_per_step", "ratios", "ratios_median", "ratio",
              "target", "meets_target"}


def test_tiny_concurrency_bench_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "concurrency.json"
    cfg = tiny(django=("sqlite",) if HAS_DJANGO else ())
    assert SUITES["concurrency"] == "concurrency"  # python -m bench concurrency runs bench.concurrency.main
    returned = main(["--out", str(out)], cfg=cfg)  # the CLI's sizes are FULL or QUICK: tiny ones passed here
    res = json.loads(out.read_text())
    assert res == json.loads(json.dumps(returned, default=str))
    assert res["ok"] is True
    assert {"meta", "checkpoint", "sizes"} <= res.keys()
    for store in ("memory", "disk"):
        part = res["checkpoint"][store]
        assert CHECKPOINT <= part.keys() and part["store"] == store
        assert part["us_per_step"].keys() == VARIANTS
        for fig in part["us_per_step"].values():
            assert len(fig["samples"]) == part["repeats"] and 0 < fig["best"] <= fig["median"] <= fig["max"]
        assert part["ratios"]["1"] == 1.0 and part["ratio"] > 0
    sizes = res["sizes"]
    assert sizes["flat_per_checkpoint"] is True
    assert [p["branches"] for p in sizes["points"]] == [1, 10, 100]
    for p in sizes["points"]:
        assert p["runner_checkpoints"] == cfg.memory_steps + 1  # one per step, and the branch's end
        assert p["held_branch_bytes"]["n"] == p["branches"] - 1
        assert p["branch_states_left_after_end"] == 0
    hundred = sizes["points"][-1]
    assert hundred["parent_bytes_paused"] > hundred["parent_bytes_during"]["max"]  # the paused waits, listed once
    if HAS_DJANGO:
        dj = res["django"]["sqlite"]
        if dj.get("skipped") != NO_BRANCHES:  # the one accepted reason (the child checked the backend)
            assert "skipped" not in dj and "error" not in dj, dj
            assert dj["us_per_step"].keys() == VARIANTS and dj["rows"]["branch_rows"] == 100
            assert dj["rows"]["runner_bytes"]["max"] - dj["rows"]["runner_bytes"]["min"] <= 16
    table = capsys.readouterr().out
    assert "live branches" in table and "saved state sizes" in table
