"""`report`, `eda` and `lr-find` on a tiny trained competition (test_resnet, 16 px, 1 epoch, 3 folds)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from tests.conftest import REPO, TINY_MODEL, make_competition, write_yaml

@contextlib.contextmanager
def cwd(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def cli(root, *args) -> int:
    """`python -m pipeline ...` in-process (one torch import for the whole module), in folder root."""
    with cwd(root):
        return main(list(args))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    make_competition(root, n_train=60, models_dir="models")
    write_yaml(root / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 1})
    steps = [["folds", "-c", "competition.yaml"]]
    steps += [["train", "-c", "competition.yaml", "--model", "tiny", "--fold", str(k)] for k in range(3)]
    steps += [["predict", "-c", "competition.yaml"], ["ensemble", "-c", "competition.yaml", "--method", "mean"]]
    for argv in steps:
        assert cli(root, *argv) == 0, argv
    return root


# --- report -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(trained):
    assert cli(trained, "report", "-c", "competition.yaml") == 0
    return trained / "submissions" / "report"


def test_report_files(report):
    for name in ("index.md", "leaderboard.csv", "curves_tiny.png", "confusion.png", "confusion.csv",
                 "per_class.csv", "mistakes.csv", "mistakes.png", "gradcam.png"):
        assert (report / name).is_file(), name
    index = (report / "index.md").read_text()
    assert "blend.oof.csv" in index and "chosen blend `mean`" in index
    for png in ("curves_tiny.png", "confusion.png", "mistakes.png", "gradcam.png"):
        assert f"({png})" in index
    assert not (report / "roc.png").exists()  # multiclass: no ROC/PR


def test_report_numbers(report, trained):
    train = pd.read_csv(trained / "data" / "tiny" / "train.csv", dtype=str)
    cm = pd.read_csv(report / "confusion.csv").set_index("true")
    assert cm.to_numpy().sum() == len(train) == 60
    assert list(cm.index) == ["c0", "c1", "c2"] and list(cm.columns) == ["c0", "c1", "c2"]
    assert cm.sum(axis=1).to_dict() == train["label"].value_counts().to_dict()  # rows are the true classes
    pc = pd.read_csv(report / "per_class.csv")
    assert pc["support"].sum() == 60 and pc[["precision", "recall", "f1"]].stack().between(0, 1).all()
    # the matrix is the blend's OOF argmax
    oof = pd.read_csv(trained / "submissions" / "blend.oof.csv", dtype={"image_id": str}).set_index("image_id")
    pred = oof.loc[train["image_id"], ["c0", "c1", "c2"]].to_numpy().argmax(axis=1)
    assert np.trace(cm.to_numpy()) == int((np.array(["c0", "c1", "c2"])[pred] == train["label"].to_numpy()).sum())
    board = pd.read_csv(report / "leaderboard.csv")
    cv = json.loads((trained / "submissions" / "cv.json").read_text())
    assert set(board["name"]) == set(cv["models"]) | set(cv["blends"]) == {"tiny", "mean"}
    assert board.loc[board["name"] == "mean", "chosen"].item() == "yes"
    assert board.loc[board["name"] == "tiny", "cv"].item() == pytest.approx(cv["models"]["tiny"]["cv"])
    mistakes = pd.read_csv(report / "mistakes.csv", dtype={"id": str})
    assert len(mistakes) == min(24, 60 - np.trace(cm.to_numpy()))
    assert (mistakes["true"] != mistakes["predicted"]).all() and mistakes["loss"].is_monotonic_decreasing


def test_report_without_cv_json_exits_2(trained, tmp_path, capsys):
    assert cli(trained, "report", "-c", "competition.yaml", "--submissions", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "cv.json not found" in err and "make ensemble" in err
    make = ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "report", "COMPETITION=competition.yaml"]
    proc = subprocess.run(make, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "cv.json not found" in proc.stderr


def test_roc_pr_and_per_label_tables_for_binary_and_multilabel(tmp_path):
    from pipeline.report import confusion, per_class, plot_roc_pr

    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    p1 = np.clip(0.3 * y + 0.7 * rng.random(40), 0, 1)
    files, aucs = plot_roc_pr("binary", y, np.stack([1 - p1, p1], axis=1), ["neg", "pos"], tmp_path)
    assert [f for f in files] == ["roc.png", "pr.png"] and all((tmp_path / f).is_file() for f in files)
    assert list(aucs["class"]) == ["pos"] and 0.5 < aucs["roc_auc"].item() <= 1
    Y = np.stack([y, 1 - y, (np.arange(40) % 4 == 0).astype(int)], axis=1).astype(float)
    P = np.clip(0.5 * Y + 0.5 * rng.random(Y.shape), 0, 1)
    _, aucs = plot_roc_pr("multilabel", Y, P, ["a", "b", "c"], tmp_path)
    assert list(aucs["class"]) == ["a", "b", "c"] and aucs["roc_auc"].between(0, 1).all()
    cms = confusion("multilabel", Y, P, ["a", "b", "c"])
    assert all(cm.to_numpy().sum() == 40 for cm in cms.values())
    assert per_class("multilabel", Y, P, ["a", "b", "c"])["support"].tolist() == Y.sum(axis=0).astype(int).tolist()


# --- eda --------------------------------------------------------------------------------------------


def test_eda_numbers(trained):
    assert cli(trained, "eda", "-c", "competition.yaml") == 0
    out = trained / "submissions" / "eda"
    for name in ("index.md", "eda.json", "class_counts.csv", "image_stats.csv", "classes.png", "image_stats.png"):
        assert (out / name).is_file(), name
    result = json.loads((out / "eda.json").read_text())
    train = pd.read_csv(trained / "data" / "tiny" / "train.csv", dtype=str)
    assert result["classes"] == train["label"].value_counts().to_dict()
    assert pd.read_csv(out / "class_counts.csv")["count"].sum() == 60
    assert result["duplicates"]["train"]["extra_copies"] == 0 and result["duplicates"]["test_in_train"] == 0
    assert result["sizes"] == [{"split": "test", "height": 8, "width": 8, "channels": 1, "images": 12},
                               {"split": "train", "height": 8, "width": 8, "channels": 1, "images": 60}]
    assert 0 <= result["adversarial"]["auc"] <= 1


def test_eda_counts_duplicates_and_sees_a_shifted_test_set(tmp_path):
    make_competition(tmp_path, n_train=60, n_test=30)
    data = tmp_path / "data" / "tiny"
    train = pd.read_csv(data / "train.csv", dtype=str)
    test = pd.read_csv(data / "sample_submission.csv", dtype=str)
    ids = train["image_id"].tolist()
    shutil.copyfile(data / "train" / f"{ids[0]}.png", data / "train" / f"{ids[1]}.png")  # one extra copy
    shutil.copyfile(data / "train" / f"{ids[2]}.png", data / "train" / f"{ids[3]}.png")
    shutil.copyfile(data / "train" / f"{ids[2]}.png", data / "train" / f"{ids[4]}.png")  # two more of another
    rng = np.random.default_rng(1)
    for i in test["image_id"]:  # clearly different test images: all bright
        cv2.imwrite(str(data / "test" / f"{i}.png"), rng.integers(220, 256, (8, 8), dtype=np.uint8))
    assert cli(tmp_path, "eda", "-c", "competition.yaml", "--out", "eda") == 0
    result = json.loads((tmp_path / "eda" / "eda.json").read_text())
    dups = result["duplicates"]
    assert dups["train"] == {"groups": 2, "extra_copies": 3, "images_in_groups": 5}
    assert dups["test"]["extra_copies"] == 0 and dups["test_in_train"] == 0
    labels = train.set_index("image_id")["label"]
    expected_conflicts = int(labels[ids[0]] != labels[ids[1]]) + int(labels[ids[2:5]].nunique() > 1)
    assert dups["train_conflicting_labels"] == expected_conflicts
    assert result["adversarial"]["auc"] > 0.95
    again = tmp_path / "again"
    assert cli(tmp_path, "eda", "-c", "competition.yaml", "--out", str(again)) == 0  # deterministic
    assert json.loads((again / "eda.json").read_text())["adversarial"] == result["adversarial"]


# --- lr-find ----------------------------------------------------------------------------------------


def test_lr_find_writes_plot_and_a_positive_suggestion(trained, capsys):
    capsys.readouterr()
    assert cli(trained, "lr-find", "-c", "competition.yaml", "--model", "tiny", "--steps", "30",
               "--start", "1e-5", "--end", "1", "batch_size=2") == 0
    out = capsys.readouterr().out
    run = trained / "runs" / "tiny"
    assert (run / "lr_find.png").is_file() and (run / "lr_find.png").stat().st_size > 1000
    table = pd.read_csv(run / "lr_find.csv")
    assert 5 <= len(table) <= 30 and table["lr"].is_monotonic_increasing
    assert table["lr"].iloc[0] == pytest.approx(1e-5)
    summary = json.loads((run / "lr_find.json").read_text())
    lr = summary["suggested_lr"]
    assert math.isfinite(lr) and lr > 0 and 1e-6 <= lr <= 1
    assert f"suggested lr: {lr:.3g}" in out
    assert (run / "fold0" / "done.json").is_file()  # the range test touches no run folder


def test_lr_suggestion_rules():
    from pipeline.lr_find import suggest

    lrs = np.logspace(-6, 0, 50)
    loss = np.concatenate([np.linspace(2, 0.5, 40), np.linspace(0.6, 5, 10)])
    found = suggest(lrs, loss)
    assert found["min_loss_lr"] == pytest.approx(lrs[39]) and found["min_loss_lr_div10"] == pytest.approx(lrs[39] / 10)
    assert 0 < found["suggested_lr"] <= found["min_loss_lr"]


def test_lr_find_stops_on_divergence(trained, tmp_path):
    assert cli(trained, "lr-find", "-c", "competition.yaml", "--model", "tiny", "--runs", str(tmp_path),
               "--steps", "40", "--start", "1e-3", "--end", "1e8", "batch_size=2") == 0
    summary = json.loads((tmp_path / "tiny" / "lr_find.json").read_text())
    assert summary["stopped"].startswith(("diverged", "non-finite")) and summary["steps"] < 40
    assert math.isfinite(summary["suggested_lr"]) and summary["suggested_lr"] > 0


def test_lr_find_unknown_model_exits_2(trained, capsys):
    assert cli(trained, "lr-find", "-c", "competition.yaml", "--model", "nope") == 2
    err = capsys.readouterr().err
    assert "nope.yaml" in err and "tiny" in err
