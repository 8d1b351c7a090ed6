"""The benchmark command runs (its speed settings only; `make bench` itself is never part of make test)."""

import json
import statistics

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_bench_speed_part_writes_json_and_table(tmp_path):
    proc = run_cli("bench", "--out", "b", "--skip-quality", "--steps", "2", "--epoch-images", "3000",
                   "--docs", "bench.md", cwd=tmp_path)
    res = json.loads((tmp_path / "b" / "bench.json").read_text())
    d = res["data_path"]
    assert d["pipeline_img_s"] > 0 and d["model_only_img_s"] > 0 and d["disk_img_s"] > 0
    assert d["device"] == "cpu" and d["num_workers"] == 0  # num_workers: auto on CPU
    assert d["epoch_images"] == 3000 and len(d["ratios"]["ram_cache"]) == d["rounds"]
    assert d["efficiency"] == statistics.median(d["ratios"]["ram_cache"]) and 0 < d["efficiency"] < 2
    assert d["disk_efficiency"] == statistics.median(d["ratios"]["disk"])
    assert set(res["inference"]) == {"none", "hflip", "rot90", "scale:0.9"}
    assert "quality" not in res and res["machine"]["cpus"] >= 1
    assert "efficiency" in (tmp_path / "bench.md").read_text() and "Data path" in proc.stdout
