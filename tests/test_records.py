"""One stage record: choices that stick through Make, no-op stages that open no checkpoint, a student that
follows its teacher, COMP_ARGS that reach every stage."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from pipeline.artifacts import record
from tests.conftest import REPO, TINY_MODEL, make_competition, write_yaml

pytestmark = pytest.mark.slow

MAKE = ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "COMPETITION=competition.yaml"]

# Logs every file a Python process opens whose name ends in .pt or .safetensors (an audit hook in every
# process Make starts): what `strace -e trace=openat` would show, without strace.
OPEN_LOGGER = '''
import os, sys
def _hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        name = os.fsdecode(args[0])
        if name.endswith((".pt", ".safetensors")):
            with open(os.environ["OPENED_LOG"], "a") as f:
                f.write(name + "\\n")
sys.addaudithook(_hook)
'''


def make(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*MAKE, *args], cwd=root, capture_output=True, text=True, env={**os.environ, **(env or {})})


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Two tiny models x 3 folds trained, predicted and blended with METHOD=mean through Make."""
    root = tmp_path_factory.mktemp("records")
    make_competition(root, n_train=45, n_test=12, models_dir="models")
    write_yaml(root / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 1})
    write_yaml(root / "models" / "wide.yaml", {**TINY_MODEL, "epochs": 1, "lr": 0.03})
    ok(make(root, "folds", "train-all", "ensemble", "METHOD=mean"))
    return root


def test_a_chosen_blend_is_kept_by_later_targets_and_shipped(project):
    submission = (project / "submissions" / "submission.csv").read_bytes()
    assert json.loads((project / "submissions" / "cv.json").read_text())["chosen"] == "mean"
    proc = ok(make(project, "package", "WHEELS=none"))
    assert "METHOD=mean as chosen before" in proc.stdout
    assert "inputs unchanged since the last ensemble" in proc.stdout
    assert (project / "submissions" / "submission.csv").read_bytes() == submission
    assert json.loads((project / "dist" / "kaggle" / "manifest.json").read_text())["method"] == "mean"
    # a new value replaces the choice, and sticks in turn
    proc = ok(make(project, "ensemble", "METHOD=gmean"))
    assert json.loads((project / "submissions" / "cv.json").read_text())["chosen"] == "gmean"
    proc = ok(make(project, "ensemble"))
    assert "METHOD=gmean as chosen before" in proc.stdout and "skipping" in proc.stdout
    ok(make(project, "ensemble", "METHOD=mean"))
    assert (project / "submissions" / "submission.csv").read_bytes() == submission


def test_no_op_stages_open_no_checkpoint(project, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(OPEN_LOGGER)
    log = tmp_path / "opened.txt"
    env = {"PYTHONPATH": str(tmp_path), "OPENED_LOG": str(log)}
    ok(make(project, "package", "WHEELS=none"))  # whatever the earlier tests left, the bundle is current now
    ok(make(project, "ensemble", env=env))  # folds, plan, predict and ensemble all up to date
    proc = ok(make(project, "package", "WHEELS=none", env=env))
    assert "is up to date" in proc.stdout
    assert not log.exists() or log.read_text() == "", log.read_text()
    # the logger works: a stage that has work to do opens checkpoints
    ok(make(project, "predict", "TTA=[none,hflip]", "MODELS=tiny", env=env))
    assert "best.pt" in log.read_text()


def test_tta_sticks_for_the_model_until_given_again(project):
    ok(make(project, "predict", "TTA=[none,hflip]", "MODELS=tiny"))
    proc = ok(make(project, "ensemble"))
    assert "TTA=['none', 'hflip'] as chosen before" in proc.stdout
    rec = record.read_record(project / "stacking" / "tiny.record.json")
    assert rec.params["tta"] == ["none", "hflip"] and rec.choices["tta"] == ["none", "hflip"]
    ok(make(project, "predict", "TTA=config", "MODELS=tiny"))
    rec = record.read_record(project / "stacking" / "tiny.record.json")
    assert rec.params["tta"] == ["none"] and "tta" not in rec.choices


def test_a_hand_edited_table_is_refused(project):
    table = project / "stacking" / "wide.test.parquet"
    original = table.read_bytes()
    try:
        table.write_bytes(original[:-100] + bytes(100))
        proc = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "pipeline", "ensemble", "-c",
                               "competition.yaml", "--force"], cwd=project, capture_output=True, text=True)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "stacking/wide.test.parquet changed since written" in proc.stderr and "make predict" in proc.stderr
    finally:
        table.write_bytes(original)


def test_comp_args_reach_training_and_stick(project):
    uri = "sqlite:///mlruns.db"
    proc = ok(make(project, "train", "MODEL=tiny", "FOLD=0", f"COMP_ARGS=tracking=mlflow tracking_uri={uri}"))
    with sqlite3.connect(project / "mlruns.db") as db:
        assert db.execute("select count(*) from runs").fetchone()[0] >= 1
    assert json.loads((project / "folds" / "choices.json").read_text())["COMP_ARGS"] == [
        "tracking=mlflow", f"tracking_uri={uri}"]
    proc = ok(make(project, "check"))
    assert "COMP_ARGS='tracking=mlflow tracking_uri=sqlite:///mlruns.db' as given before" in proc.stdout
    ok(make(project, "check", "COMP_ARGS="))  # cleared
    assert json.loads((project / "folds" / "choices.json").read_text())["COMP_ARGS"] == []
    proc = make(project, "demo", "COMP_ARGS=seed=1")
    assert proc.returncode == 2 and "COMP_ARGS has no effect here" in proc.stderr


def test_a_student_of_an_old_teacher_is_refused(project):
    proc = make(project, "distill")  # no student given before: usage, before any work
    assert proc.returncode != 0 and "usage: make distill STUDENT=<model>" in proc.stderr
    ok(make(project, "distill", "STUDENT=tiny"))
    assert (project / "stacking" / "tiny-distilled.oof.parquet").is_file()
    ok(make(project, "package", "WHEELS=none"))  # the blend still packages after a distillation
    proc = ok(make(project, "package", "WHEELS=none", "STUDENT=tiny", "BUNDLE=dist/student"))
    assert json.loads((project / "dist" / "student" / "manifest.json").read_text())["models"] == ["tiny-distilled"]
    ok(make(project, "ensemble", "METHOD=gmean"))  # a new teacher blend
    proc = make(project, "package", "WHEELS=none", "BUNDLE=dist/student")  # STUDENT sticks; its teacher is old
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "STUDENT=tiny as chosen before" in proc.stdout
    assert "tiny-distilled learned from the blend mean" in proc.stderr
    assert "make distill STUDENT=tiny" in proc.stderr
    ok(make(project, "package", "WHEELS=none", "BUNDLE=dist/student", "STUDENT=none"))  # the blend again
    ok(make(project, "ensemble", "METHOD=mean"))
