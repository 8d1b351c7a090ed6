"""The benchmark command runs (its speed settings only; `make bench` itself is never part of make test)."""

import json

from tests.conftest import run_cli


def test_bench_speed_part_writes_json_and_table(tmp_path):
    proc = run_cli("bench", "--out", "b", "--skip-quality", "--steps", "2", "--docs", "bench.md", cwd=tmp_path)
    res = json.loads((tmp_path / "b" / "bench.json").read_text())
    d = res["data_path"]
    assert d["pipeline_img_s"] > 0 and d["model_only_img_s"] > 0
    assert abs(d["efficiency"] - d["pipeline_img_s"] / d["model_only_img_s"]) < 1e-9
    assert set(res["inference"]) == {"none", "hflip", "rot90", "scale:0.9"}
    assert "quality" not in res and res["machine"]["cpus"] >= 1
    assert "efficiency" in (tmp_path / "bench.md").read_text() and "Data path" in proc.stdout
