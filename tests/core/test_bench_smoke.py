"""The core benchmark runs end to end in quick mode and reports every figure.

Only the shape of the results is checked: speed is never asserted in tests.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.__main__ import main  # noqa: E402

PER_STEP = {
    "n_steps", "plain_us_per_step", "durable_memory_us_per_step", "overhead_us_per_step", "ratio",
    "durable_null_backend_us_per_step", "checkpoints_per_step", "durable_disk_us_per_step", "checkpoint_bytes",
    "locals_in_frame", "target_overhead_us", "meets_target", "floor",
}
FLOOR = {"pickle_roundtrip_us", "pickle_dumps_us", "pickle_loads_us", "cloudpickle_dumps_us", "state_dumps_us",
         "state_loads_us", "state_bytes"}
RESUME = {"k_values", "points", "time_ratio_kmax_kmin", "size_ratio_kmax_kmin", "target_ratio", "meets_target"}
RESUME_POINT = {"k", "state_bytes", "resume_us", "publish_us", "continue_us", "build_s"}
COMPILE = {"function", "source_lines", "blocks", "ms"}
NESTED_POINT = {"depth", "checkpoint_ms", "state_bytes", "load_ms", "resume_ms", "run_ms"}


def test_quick_bench_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "core.json"
    returned = main(["--quick", "--out", str(out)])
    res = json.loads(out.read_text())
    assert res == json.loads(json.dumps(returned))
    assert {"meta", "per_step", "resume", "compile", "nested"} <= res.keys()
    assert res["meta"]["quick"] is True
    assert PER_STEP <= res["per_step"].keys()
    assert FLOOR <= res["per_step"]["floor"].keys()
    assert RESUME <= res["resume"].keys()
    assert len(res["resume"]["points"]) == len(res["resume"]["k_values"]) == 3
    for point in res["resume"]["points"]:
        assert RESUME_POINT <= point.keys()
    assert COMPILE <= res["compile"].keys()
    assert res["nested"]["points"]
    for point in res["nested"]["points"]:
        assert NESTED_POINT <= point.keys()
    assert "per-step overhead" in capsys.readouterr().out
