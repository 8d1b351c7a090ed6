"""`make distill STUDENT=`: the blend's OOF as the teacher of a student trained on every fold, through Make."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO, TINY_MODEL, make_competition, run_cli, write_yaml, read_table_file

MAKE = ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "COMPETITION=competition.yaml"]


def table(path) -> pd.DataFrame:
    return read_table_file(path).set_index("image_id")


@pytest.mark.slow
def test_distill_soft_targets_come_from_models_that_held_the_rows_out(tmp_path):
    make_competition(tmp_path, n_train=60, n_test=12, models_dir="models")
    write_yaml(tmp_path / "models" / "teacher.yaml", {**TINY_MODEL, "epochs": 2})
    write_yaml(tmp_path / "models" / "student.yaml", {**TINY_MODEL, "epochs": 1, "lr": 0.02})
    proc = subprocess.run([*MAKE, "distill", "STUDENT=student", "DISTILL_ALPHA=0.3", "TEMPERATURE=3"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the teacher table is the chosen blend's OOF, every training row, never its test predictions
    teacher = table(tmp_path / "folds" / "distill.parquet")
    blend_oof = table(tmp_path / "submissions" / "blend.oof.parquet")
    assert teacher.equals(blend_oof.loc[teacher.index])
    folds = pd.read_csv(tmp_path / "folds" / "folds.csv", dtype=str).set_index("image_id")["fold"].astype(int)
    assert sorted(teacher.index) == sorted(folds.index)
    # each row's soft label came from fold models that held that row out: row r of fold j is in the OOF table
    # of every teacher run's fold j, whose model trained on every fold but j
    for run in ("teacher", "student"):
        for j in sorted(folds.unique()):
            held_out = set(table(tmp_path / "runs" / run / f"fold{j}" / "oof.parquet").index)
            assert held_out == set(folds.index[folds == j])
    # each student fold learned from the teacher on its training rows only, never on its validation rows
    for k in sorted(folds.unique()):
        record = json.loads((tmp_path / "runs" / "student-distilled" / f"fold{k}" / "distill.json").read_text())
        assert set(record["ids"]) == set(folds.index[folds != k])
        assert not set(record["ids"]) & set(folds.index[folds == k])
        assert record["alpha"] == 0.3 and record["temperature"] == 3
    # the student's tables join stacking/, and the comparison has the three rows
    for name in ("student", "student-distilled"):
        assert (tmp_path / "stacking" / f"{name}.oof.parquet").is_file()
    lines = proc.stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("| model | CV accuracy"))
    rows = [line for line in lines[start:] if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == [
        f"teacher: blend {json.loads((tmp_path / 'submissions' / 'cv.json').read_text())['chosen']}",
        "student", "student-distilled"]
    assert all(np.isfinite(float(r.split("|")[2])) for r in rows[1:])
    # nothing goes stale afterwards; the distilled student is scored but kept out of the blends, whose CV its
    # OOF (learned from the teachers' OOF) would inflate, so the chosen blend and its inputs stay as they were
    plan = run_cli("plan", "-c", "competition.yaml", cwd=tmp_path)
    assert plan.stdout.strip() == ""
    before = json.loads((tmp_path / "submissions" / "cv.json").read_text())
    proc = subprocess.run([*MAKE, "ensemble"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "student-distilled: distilled from a blend of the other models, so scored but not blended" in proc.stdout
    after = json.loads((tmp_path / "submissions" / "cv.json").read_text())
    assert after["models"]["student-distilled"]["blended"] is False and after["models"]["teacher"]["blended"]
    assert "| student-distilled | model, distilled: not blended |" in (tmp_path / "submissions" / "cv.md").read_text()
    assert (after["chosen"], after["blends"][after["chosen"]]["cv"]) == (before["chosen"],
                                                                         before["blends"][before["chosen"]]["cv"])
    state = json.loads((tmp_path / "submissions" / "blend.json").read_text())
    assert state["models"] == ["student", "teacher"]
    # `make package STUDENT=`: the distilled student alone, and the kernel predicts exactly its test table
    proc = subprocess.run([*MAKE, "package", "STUDENT=student", "WHEELS=none", "BUNDLE=dist/student",
                           "KAGGLE_USER=alice", "COMPETITION_SLUG=tiny"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    bundle = json.loads((tmp_path / "dist" / "student" / "dataset" / "bundle.json").read_text())
    assert [m["name"] for m in bundle["models"]] == ["student-distilled"]
    shutil.copytree(tmp_path / "data" / "tiny", tmp_path / "input", ignore=shutil.ignore_patterns("train", "train.csv"))
    run_cli("kernel", "--bundle", "dist/student/dataset", "--data-dir", "input", "--out", "kernel/submission.csv",
            cwd=tmp_path)
    probs = read_table_file(tmp_path / "stacking" / "student-distilled.test.parquet")
    expected = probs.set_index("image_id").idxmax(axis=1)
    sub = pd.read_csv(tmp_path / "kernel" / "submission.csv", dtype=str).set_index("image_id")
    assert (sub["label"] == expected.loc[sub.index]).all()
    assert not list(tmp_path.glob(".student-*"))  # its temporary one-model blend is cleaned up


def test_distill_needs_a_student_and_a_teacher_table(tmp_path):
    make_competition(tmp_path, n_train=30, models_dir="models")
    write_yaml(tmp_path / "models" / "tiny.yaml", TINY_MODEL)
    run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    proc = subprocess.run([*MAKE, "distill"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "usage: make distill STUDENT=<model>" in proc.stderr
    proc = run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", "0", "distill=folds/nope.csv",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "key 'distill': folds/nope.csv not found" in proc.stderr


def test_blend_inputs_keep_distilled_students_out_unless_they_are_all_there_is(capsys):
    from pipeline.blend.ensemble import blend_inputs
    from pipeline.artifacts.tables import Level1

    def level1(models):
        oof = np.stack([np.full((4, 2), i, dtype=float) for i in range(len(models))])
        return Level1(models, ["a", "b"], list("wxyz"), ["t"], np.zeros(4, int), np.arange(4) % 2, oof, oof[:, :1])

    both = blend_inputs(level1(["big", "small", "small-distilled"]))
    assert both.models == ["big", "small"] and both.oof[:, 0, 0].tolist() == [0.0, 1.0]  # rows follow the names
    assert "small-distilled: distilled from a blend" in capsys.readouterr().out
    alone = level1(["small-distilled"])
    assert blend_inputs(alone) is alone
