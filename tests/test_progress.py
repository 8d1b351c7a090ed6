"""What a competitor sees while the job runs: the plan, a running ETA, one clean line per step in logs."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.conftest import REPO, TINY_MODEL, make_competition, run_cli, write_yaml

pytestmark = pytest.mark.slow  # end-to-end runs: `make test-fast` skips them

MAKE = ["make", "--no-print-directory", "-f", str(REPO / "Makefile")]


def test_train_all_prints_its_plan_and_a_running_eta(tmp_path):
    make_competition(tmp_path, n_train=36, n_test=6, models_dir="models")
    write_yaml(tmp_path / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 1})
    run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", "0", cwd=tmp_path)
    assert json.loads((tmp_path / "runs" / "tiny" / "fold0" / "done.json").read_text())["seconds"] > 0

    proc = subprocess.run([*MAKE, "train-all", "COMPETITION=competition.yaml"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    err, out = proc.stderr, proc.stdout
    assert "plan: tiny: 1/3 folds done; to train: fold1 (not trained), fold2 (not trained)" in err
    assert re.search(r"plan: 2 fold\(s\) to train, about \d+s at one fold at a time", err)  # from fold0's time
    assert re.search(r"train-all: 1/2 folds done in \d+s; about \d+s left \(\d+s a fold\)", out)
    assert re.search(r"train-all: 2/2 folds done in \d+s; all done", out)
    assert "\r" not in out and "it/s" not in out + err  # no progress bars outside a terminal

    again = subprocess.run([*MAKE, "train-all", "COMPETITION=competition.yaml"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert "plan: nothing to train" in again.stderr and "train-all:" not in again.stdout


def test_predict_prints_a_line_per_fold(tmp_path):
    from tests.conftest import train_tiny

    proc = train_tiny(tmp_path, n_train=36, n_test=6, model={"epochs": 1})
    lines = proc.stdout.splitlines()
    assert any(re.fullmatch(r"tiny: 36 OOF rows over 3 folds, then 6 test images x 3 folds; TTA none", ln)
               for ln in lines), proc.stdout
    assert sum(bool(re.fullmatch(r"  fold\d OOF: accuracy \d\.\d{4} \(12 rows\)", ln)) for ln in lines) == 3
