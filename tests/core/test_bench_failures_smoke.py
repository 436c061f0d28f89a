"""The failure-handling benchmark runs end to end with tiny sizes and reports every figure.

Only the shape of the results is checked (and that every run returned the
right result, which the suite checks itself): speed is never asserted in tests.
"""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.__main__ import SUITES  # noqa: E402
from bench.failures import main  # noqa: E402
from bench.failures.django_part import NO_HISTORY  # noqa: E402
from bench.failures.setup import tiny  # noqa: E402

POLICY = {"n_steps", "us_per_step", "policy_cost_us", "policy_cost_null_us", "default_policy_cost_us",
          "checkpoints_per_step", "target_us", "meets_target"}
VARIANTS = {f"{v}/{b}" for v in ("nested", "bare", "retried", "default") for b in ("memory", "null")} | {"plain"}
HISTORY = {"us_per_step", "ratio_10", "ratio_all", "kept", "history_bytes_per_checkpoint", "history_blobs",
           "state_blob_bytes"}
FORK_POINT = {"step", "fork_us", "fork_us_best", "run_to_end_ms"}
#: The core's own sessions (nox ``core``) run without Django: the suite's Django part is left out there.
HAS_DJANGO = importlib.util.find_spec("django") is not None


def test_tiny_failures_bench_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "failures.json"
    cfg = tiny(django=HAS_DJANGO)
    assert SUITES["failures"] == "failures"  # python -m bench failures runs bench.failures.main
    returned = main(["--out", str(out)], cfg=cfg)  # the CLI's sizes are FULL or QUICK: tiny ones passed here
    res = json.loads(out.read_text())
    assert res == json.loads(json.dumps(returned, default=str))
    assert {"meta", "policy", "history", "fork"} | ({"django"} if HAS_DJANGO else set()) <= res.keys()
    assert POLICY <= res["policy"].keys()
    assert VARIANTS == res["policy"]["us_per_step"].keys()
    assert res["policy"]["checkpoints_per_step"] > 0.9  # one checkpoint per leaf step
    assert HISTORY <= res["history"].keys()
    kept = res["history"]["kept"]
    assert kept["off"] == 0 and kept["10"] == 10 and kept["all"] >= cfg.n_steps
    assert res["history"]["history_bytes_per_checkpoint"] > 0
    assert res["fork"]["checkpoints"] >= cfg.fork_checkpoints
    assert len(res["fork"]["points"]) == len(cfg.fork_points)
    for point in res["fork"]["points"]:
        assert FORK_POINT <= point.keys()
    dj = res.get("django", {})
    if HAS_DJANGO and dj.get("skipped") != NO_HISTORY:  # the one accepted reason (the child checked the methods)
        assert "skipped" not in dj, dj.get("skipped")
        assert dj["kept"]["off"] == 0 and dj["kept"]["10"] == 10 and dj["history_blobs"] >= cfg.django_steps
    table = capsys.readouterr().out
    assert "retry policy" in table and "fork" in table

