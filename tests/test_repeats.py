"""Repeated CV (competition key `repeats`): R splits, R x n_folds trainings, OOF averaged over repeats."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, TINY_MODEL, edit_train, make_competition, read_table_file, run_cli, write_yaml

MAKE = ["make", "--no-print-directory", "-f", str(REPO / "Makefile")]


def folds_files(root):
    return {p.name: p.read_bytes() for p in (root / "folds").iterdir() if p.suffix == ".csv"}


def test_repeats_one_changes_nothing(tmp_path):
    """`repeats: 1` written out is the layout, stamps and files of a project that never heard of it."""
    from pipeline.core.config import NEUTRAL_KEYS, config_hash, load_competition

    plain, explicit = tmp_path / "plain", tmp_path / "explicit"
    make_competition(plain, n_train=30)
    make_competition(explicit, n_train=30, repeats=1)
    for root in (plain, explicit):
        run_cli("folds", "-c", "competition.yaml", cwd=root)
    assert folds_files(plain) == folds_files(explicit)
    assert not (explicit / "folds" / "repeats.csv").exists()
    record = [json.loads((r / "folds" / "folds.record.json").read_text())["params"] for r in (plain, explicit)]
    assert record[0] == record[1]
    hashes = {config_hash(load_competition(r / "competition.yaml"), NEUTRAL_KEYS) for r in (plain, explicit)}
    assert len(hashes) == 1


def test_repeats_write_other_splits_that_keep_groups_and_come_back_to_one(tmp_path):
    make_competition(tmp_path, n_train=90, group_col="patient", repeats=3)
    edit_train(tmp_path, lambda df: df.assign(patient=[f"p{i // 3}" for i in range(len(df))]))
    proc = run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    assert "x 3 repeats (seeds 0..2; every model trains 9 folds)" in proc.stdout
    folds = pd.read_csv(tmp_path / "folds/folds.csv", dtype=str)
    repeats = pd.read_csv(tmp_path / "folds/repeats.csv", dtype=str)
    assert list(repeats.columns) == ["image_id", "repeat1", "repeat2"]
    assert repeats["image_id"].tolist() == folds["image_id"].tolist()
    patient = pd.read_csv(tmp_path / "data/tiny/train.csv", dtype=str)["patient"]
    for column in ("repeat1", "repeat2"):
        split = repeats[column].astype(int)
        assert sorted(split.unique()) == [0, 1, 2]
        assert (split.groupby(patient).nunique() == 1).all()  # a group never straddles a repeat's folds
        assert not (pd.factorize(split)[0] == pd.factorize(folds["fold"])[0]).all()  # another split
    assert json.loads((tmp_path / "folds/folds.json").read_text())["repeats"] == 3
    first = (tmp_path / "folds/folds.csv").read_bytes()

    run_cli("folds", "-c", "competition.yaml", "repeats=1", cwd=tmp_path)
    assert not (tmp_path / "folds/repeats.csv").exists()  # the pipeline's own file, gone with its repeats
    assert (tmp_path / "folds/folds.csv").read_bytes() == first  # repeat 0's folds (and their trainings) stay


def test_bad_repeats_and_a_fold_outside_the_repeats_are_named(tmp_path):
    make_competition(tmp_path, n_train=30, n_folds=2, repeats=0, models_dir="models")
    proc = run_cli("folds", "-c", "competition.yaml", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "repeats" in proc.stderr and "competition.yaml" in proc.stderr
    proc = run_cli("folds", "-c", "competition.yaml", "repeats=two", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "repeats" in proc.stderr
    choices = tmp_path / "folds" / "choices.json"  # an override that fails validation does not stick
    assert not choices.exists() or "repeats=two" not in choices.read_text()

    write_yaml(tmp_path / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 1})
    config = yaml.safe_load((tmp_path / "competition.yaml").read_text())
    write_yaml(tmp_path / "competition.yaml", {**config, "repeats": 2})
    run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    proc = run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", "4", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "fold 4 not in folds/folds.csv (folds: [0, 1, 2, 3]: 2 repeats of 2)" in proc.stderr


@pytest.mark.slow
def test_two_repeats_end_to_end_through_make(tmp_path):
    """folds -> train-all (2 folds x 2 repeats) -> predict -> ensemble; each row's OOF is the mean of its two
    held-out predictions, cv.md shows both repeats, and the fold models all predict the test set."""
    make_competition(tmp_path, n_train=36, n_test=9, n_folds=2, repeats=2, models_dir="models")
    write_yaml(tmp_path / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 1, "tta": ["none"]})
    proc = subprocess.run([*MAKE, "folds", "train-all", "predict", "ensemble", "COMPETITION=competition.yaml"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fold3 (repeat 1, fold 1) OOF" in proc.stdout
    assert all((tmp_path / "runs/tiny" / f"fold{k}" / "done.json").is_file() for k in range(4))

    # a row's OOF: the mean of the two folds (one per repeat) that held it out
    held = {}
    for k in range(4):
        fold_oof = read_table_file(tmp_path / "runs/tiny" / f"fold{k}" / "oof.parquet").set_index("image_id")
        for i, row in fold_oof.iterrows():
            held.setdefault(i, []).append(row.to_numpy(dtype=float))
    assert all(len(v) == 2 for v in held.values()) and len(held) == 36
    oof = read_table_file(tmp_path / "stacking/tiny.oof.parquet").set_index("image_id")
    expected = np.stack([np.mean(held[i], axis=0) for i in oof.index])
    np.testing.assert_allclose(oof.to_numpy(dtype=float), expected, atol=2e-3)

    meta = json.loads((tmp_path / "stacking/tiny.oof.json").read_text())
    assert len(meta["per_fold"]) == 4 and len(meta["per_repeat"]) == 2
    cv = json.loads((tmp_path / "submissions/cv.json").read_text())
    assert cv["models"]["tiny"]["repeats"] == pytest.approx(meta["per_repeat"])
    md = (tmp_path / "submissions/cv.md").read_text()
    assert "| repeat 0 | repeat 1 |" in md and "Repeated CV (2 repeats of 2 folds)" in md

    again = subprocess.run([*MAKE, "train-all", "predict", "ensemble", "COMPETITION=competition.yaml"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0 and "plan: tiny: 4/4 folds done" in again.stdout + again.stderr
    assert "tables up to date" in again.stdout and "inputs unchanged" in again.stdout
