"""`make bench-scale` and `make gpu-check` on tiny sizes, through Make and the CLI (neither is a benchmark here:
no wall time is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pipeline.tools.bench_scale import BEGIN, END, JPEG_STAGES, STAGES, write_section
from pipeline.tools.gpu_check import CHECKS
from tests.conftest import REPO, run_cli

MAKE = ["make", "--no-print-directory", "-f", str(REPO / "Makefile")]
STAGE_NAMES = [label for label, *_ in STAGES]


def make(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*MAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, **(env or {})})


def table_rows(text: str) -> dict[str, list[str]]:
    """The bench-scale table's rows: first cell -> the other cells."""
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    first = section[section.index("| stage |"):].split("\n\n", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in first.splitlines()]
    return {r[0]: r[1:] for r in rows}


@pytest.mark.slow
def test_bench_scale_through_make_writes_every_stage_and_the_growth(tmp_path):
    docs = tmp_path / "bench.md"
    docs.write_text("# Benchmarks\n\nwritten by hand, kept\n")
    args = "--out bs --rows 100,200 --classes 2,4 --jpegs 20 --jpeg-size 64x48 --skip-auto --docs bench.md"
    proc = make("bench-scale", f"BENCH_SCALE_ARGS={args}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    res = json.loads((tmp_path / "bs" / "bench_scale.json").read_text())
    status = {(r["cell"], r["stage"]): r["status"] for r in res["results"]}
    for cell in ("r100_c2", "r200_c2", "r100_c4", "r200_c4"):
        for stage in STAGE_NAMES:
            want = "skipped" if stage == "ensemble --method auto" else "ok"
            assert status[cell, stage] == want, (cell, stage, status[cell, stage])
    assert [status["jpeg", s] for s, *_ in JPEG_STAGES] == ["ok", "ok"]
    assert all(r["peak_mib"] > 10 and r["wall_s"] > 0 for r in res["results"] if r["status"] == "ok")
    # the fabricated level-1 tables are the pipeline's own: ensemble read them and chose `mean`
    assert json.loads((tmp_path / "bs" / "r200_c4" / "submissions" / "cv.json").read_text())["chosen"] == "mean"

    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nwritten by hand, kept\n") and text.count(BEGIN) == 1
    assert "python -m pipeline bench-scale --out bs --rows 100,200" in text  # the command that made it
    rows = table_rows(text)
    header = rows["stage"]
    growth = ["rows 100 → 200 at 2 classes", "rows 100 → 200 at 4 classes", "classes 2 → 4 at 100 rows",
              "classes 2 → 4 at 200 rows"]
    assert header == ["100 x 2", "200 x 2", "100 x 4", "200 x 4", *growth]
    assert set(STAGE_NAMES) <= set(rows)
    for stage in set(STAGE_NAMES) - {"ensemble --method auto"}:
        assert all(" s · " in c and "MiB" in c for c in rows[stage][:4]), rows[stage]
        assert all(c.startswith("×") and " / ×" in c for c in rows[stage][4:]), rows[stage]
    assert rows["ensemble --method auto"] == ["skipped"] * 4 + ["n/a"] * 4
    assert "20 training and 5 test JPEGs of 64×48" in text

    # a second run replaces its section, and keeps the rest
    write_section(docs, f"{BEGIN}\nnew\n{END}\n")
    assert docs.read_text() == "# Benchmarks\n\nwritten by hand, kept\n\n" + f"{BEGIN}\nnew\n{END}\n"


def test_bench_scale_records_a_timeout_instead_of_hanging(tmp_path):
    run_cli("bench-scale", "--out", "bs", "--rows", "60", "--classes", "2", "--jpegs", "0", "--timeout", "1",
            "--docs", "bench.md", cwd=tmp_path)
    res = json.loads((tmp_path / "bs" / "bench_scale.json").read_text())
    status = {r["stage"]: r["status"] for r in res["results"]}
    assert status["check"] == status["folds"] == "timeout"
    assert status["level-1 tables"] == status["ensemble --method mean"] == "skipped"  # they need folds
    text = (tmp_path / "bench.md").read_text()
    assert "| check | **timeout** (1 s) |" in text and "r60_c2 check: killed after 1 s" in text


def test_gpu_check_without_a_gpu_says_so_and_exits_0(tmp_path):
    proc = make("gpu-check", cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = [line for line in proc.stdout.splitlines() if " -m pipeline gpu-check" not in line]  # Make's echo
    assert len(said) == 1 and said[0].startswith("gpu-check: no CUDA GPU here"), proc.stdout
    assert not (tmp_path / "bench-scale").exists() and not (tmp_path / "docs").exists()


@pytest.mark.slow
def test_gpu_check_runs_its_cpu_parts(tmp_path):
    """Every check's code on the CPU and tiny data (--allow-cpu): the CUDA-only parts are named as not checked."""
    proc = run_cli("gpu-check", "--allow-cpu", "--out", "gc", "--docs", "gpu.md", "--budget", "3000", cwd=tmp_path,
                   env={"CUDA_VISIBLE_DEVICES": ""}, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"{len(CHECKS)} passed, 0 failed, 0 skipped" in proc.stdout
    for name in CHECKS:
        assert f"PASS {name}" in proc.stdout
    text = (tmp_path / "gpu.md").read_text()
    assert all(f"| {name} | PASS |" in text for name in CHECKS)
    assert "minimal timm loop" in text and "Not checked on this device" in text and "fused" in text
    launched = tmp_path / "gc" / "small" / "runs" / "gc_launch"
    assert (launched / "logs" / "fold0.log").is_file() and (launched / "logs" / "fold1.log").is_file()
