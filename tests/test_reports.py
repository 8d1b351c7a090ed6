"""`report`, `eda` and `lr-find` on a tiny trained competition (test_resnet, 16 px, 1 epoch, 3 folds)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from tests.conftest import REPO, TINY_MODEL, edit_train, make_competition, write_yaml, read_table_file


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
    # a [height, width] input with pad: the 8x8 images reach the model as 16x16 inside 16x24
    write_yaml(root / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 1, "img_size": [16, 24], "resize": "pad"})
    steps = [["folds", "-c", "competition.yaml"]]
    steps += [["train", "-c", "competition.yaml", "--model", "tiny", "--fold", str(k)] for k in range(3)]
    steps += [["predict", "-c", "competition.yaml"], ["ensemble", "-c", "competition.yaml", "--method", "mean"]]
    for argv in steps:
        assert cli(root, *argv) == 0, argv
    return root


# --- report -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(trained):
    import pipeline.tools.report

    seen = []  # the Grad-CAM panels as drawn

    def recording(panels, *args):
        seen.extend(panels)
        return grad_cam_figure(panels, *args)

    grad_cam_figure = pipeline.tools.report.grad_cam_figure
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline.tools.report, "grad_cam_figure", recording)
        assert cli(trained, "report", "-c", "competition.yaml") == 0
    out = trained / "submissions" / "report"
    out.joinpath("panels.json").write_text(json.dumps([[list(p[2].shape), list(p[3].shape)] for p in seen]))
    return out


def test_report_files(report):
    for name in ("index.md", "leaderboard.csv", "curves_tiny.png", "confusion.png", "confusion.csv",
                 "per_class.csv", "mistakes.csv", "mistakes.png", "gradcam.png"):
        assert (report / name).is_file(), name
    index = (report / "index.md").read_text()
    assert "blend.oof.parquet" in index and "chosen blend `mean`" in index
    for png in ("curves_tiny.png", "confusion.png", "mistakes.png", "gradcam.png"):
        assert f"({png})" in index
    for name in ("roc.png", "pr.png", "roc_pr.csv", "class_shares.csv"):  # multiclass: one-vs-rest ROC/PR
        assert (report / name).is_file(), name
    check_html(report)


def test_grad_cam_overlays_the_input_the_model_saw(report):
    panels = json.loads((report / "panels.json").read_text())
    assert panels and all(image == [16, 24] and cam == [16, 24] for image, cam in panels)  # 16x24, padded


def test_report_numbers(report, trained):
    train = pd.read_csv(trained / "data" / "tiny" / "train.csv", dtype=str)
    cm = pd.read_csv(report / "confusion.csv").set_index("true")
    assert cm.to_numpy().sum() == len(train) == 60
    assert list(cm.index) == ["c0", "c1", "c2"] and list(cm.columns) == ["c0", "c1", "c2"]
    assert cm.sum(axis=1).to_dict() == train["label"].value_counts().to_dict()  # rows are the true classes
    pc = pd.read_csv(report / "per_class.csv")
    assert pc["support"].sum() == 60 and pc[["precision", "recall", "f1"]].stack().between(0, 1).all()
    # the matrix is the blend's OOF argmax
    oof = read_table_file(trained / "submissions" / "blend.oof.parquet").set_index("image_id")
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
    from pipeline.tools.report import confusion, per_class, plot_roc_pr

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


def test_multiclass_roc_pr_one_vs_rest_with_micro_and_macro(tmp_path, monkeypatch):
    from sklearn.metrics import average_precision_score, roc_auc_score

    import pipeline.tools.classchecks as checks
    from pipeline.tools.report import plot_roc_pr

    rng = np.random.default_rng(0)
    y = np.arange(60) % 3  # class "d" has no row: no curve, left out of the macro average
    P = rng.dirichlet(np.ones(4), 60) + 1.5 * np.eye(4)[y] * rng.random((60, 1))
    P /= P.sum(axis=1, keepdims=True)
    files, aucs = plot_roc_pr("multiclass", y, P, ["a", "b", "c", "d"], tmp_path)
    assert files == ["roc.png", "pr.png"] and all((tmp_path / f).is_file() for f in files)
    assert list(aucs["class"]) == ["a", "b", "c", "d", "(micro average)", "(macro average)"]
    by = aucs.set_index("class")
    Y = np.eye(4)[y]
    for j, c in enumerate("abc"):
        assert by.loc[c, "roc_auc"] == pytest.approx(roc_auc_score(Y[:, j], P[:, j]))
        assert by.loc[c, "average_precision"] == pytest.approx(average_precision_score(Y[:, j], P[:, j]))
    assert np.isnan(by.loc["d", "roc_auc"])
    assert by.loc["(micro average)", "roc_auc"] == pytest.approx(roc_auc_score(Y.ravel(), P.ravel()))
    assert by.loc["(micro average)", "average_precision"] == pytest.approx(average_precision_score(Y.ravel(), P.ravel()))
    assert by.loc["(macro average)", "roc_auc"] == pytest.approx(by.loc[["a", "b", "c"], "roc_auc"].mean())
    assert 0.5 < by.loc["(macro average)", "roc_auc"] < 1  # better than chance, not perfect
    _, perfect = plot_roc_pr("ordinal", y, np.eye(3)[y], ["0", "1", "2"], tmp_path)
    assert (perfect[["roc_auc", "average_precision"]].to_numpy() == 1).all()
    monkeypatch.setattr(checks, "MICRO_MAX_CELLS", 60)  # past it: a fixed sample of rows, and the table says so
    _, sampled = plot_roc_pr("multiclass", y, P, ["a", "b", "c", "d"], tmp_path)
    assert sampled["class"].iloc[-2] == "(micro average) on 15 of 60 rows"


def test_class_share_rule_flags_big_shifts_of_classes_with_rows_beyond_chance():
    from pipeline.tools.classchecks import class_shares, share_warning

    classes = ["a", "b", "c", "d", "e"]
    y = np.repeat(np.arange(5), [150, 90, 45, 10, 5])  # 50%, 30%, 15%, 3.3%, 1.7% of 300 rows
    pred = np.repeat(np.arange(5), [100, 20, 70, 0, 10])  # 50%, 10%, 35%, 0%, 5% of 200 test rows
    shares = class_shares("multiclass", y, np.eye(5)[pred], classes)
    assert shares["flagged"].tolist() == ["", "yes", "yes", "", ""]  # d: within chance; e: 5 training rows
    assert shares["train rows"].tolist() == [150, 90, 45, 10, 5] and shares["test predicted rows"].sum() == 200
    assert shares.loc[1, "ratio"] == pytest.approx(1 / 3) and shares.loc[2, "ratio"] == pytest.approx(35 / 15)
    assert share_warning(shares) == (
        "warning: the predicted test shares of 2 of 5 classes differ much from their training shares: b 10.0% "
        "predicted vs 30.0% in training; c 35.0% predicted vs 15.0% in training (over 2x or under 1/2, or more than "
        "10 points apart, beyond 3 standard errors; classes with >= 10 training rows; class_shares.csv)")
    small = class_shares("multiclass", y, np.eye(5)[[0] * 7 + [2] * 3 + [3] * 2], classes)  # 12 test rows
    assert small.loc[1, "ratio"] == 0 and small.loc[3, "ratio"] > 2  # far apart, but within chance at 12 rows
    assert share_warning(small) is None and (small["flagged"] == "").all()
    Y = np.zeros((100, 2), dtype=int)
    Y[:40, 0], Y[:20, 1] = 1, 1  # label shares 40%, 20%
    T = np.zeros((100, 2))
    T[:40, 0], T[:70, 1] = 0.9, 0.6  # predicted 40%, 70% at >= 0.5
    ml = class_shares("multilabel", Y, T, ["x", "y"])
    assert ml["flagged"].tolist() == ["", "yes"] and "y 70.0% predicted vs 20.0% in training" in share_warning(ml)


def test_report_warns_when_the_predicted_test_shares_shift(report, trained, tmp_path, capsys):
    from pipeline.artifacts.tables import write_table

    shares = pd.read_csv(report / "class_shares.csv")
    assert shares["train rows"].tolist() == [20, 20, 20] and shares["test predicted rows"].sum() == 12
    assert "## Predicted test class shares" in (report / "index.md").read_text()
    subs = tmp_path / "subs"
    shutil.copytree(trained / "submissions", subs, ignore=shutil.ignore_patterns("report"))
    ids = pd.read_csv(trained / "data" / "tiny" / "sample_submission.csv", dtype=str)["image_id"].tolist()
    proba = np.tile([0.8, 0.1, 0.1], (len(ids), 1))  # every test row predicted c0
    write_table(subs / "blend.test.parquet", ids, proba, ["c0", "c1", "c2"], "image_id")
    capsys.readouterr()
    assert cli(trained, "report", "-c", "competition.yaml", "--submissions", str(subs), "--cam", "0") == 0
    line = ("warning: the predicted test shares of 1 of 3 classes differ much from their training shares: c0 100.0% "
            "predicted vs 33.3% in training (over 2x or under 1/2, or more than 10 points apart, beyond 3 standard "
            "errors; classes with >= 10 training rows; class_shares.csv)")
    assert line in capsys.readouterr().out.splitlines()
    index = (subs / "report" / "index.md").read_text()
    assert f"**{line}**" in index and index.count("warning:") == 1
    assert pd.read_csv(subs / "report" / "class_shares.csv")["flagged"].fillna("").tolist() == ["yes", "", ""]
    assert "c0 100.0% predicted" in (subs / "report" / "index.html").read_text()


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
    every = result["image_sizes"]["all"]
    assert every["images"] == 72 and every["non_square_share"] == 0 and every["distinct_sizes"] == 1
    assert every["aspect"] == {"min": 1, "median": 1, "max": 1} and every["height"]["median"] == 8
    advice = result["recommendation"]
    assert advice["resize"] == "squash" and advice["img_size"] == [224, 224] and "square" in advice["reason"]
    check_html(out)
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


@pytest.mark.slow
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
    lr = summary["suggested_lr"]  # random labels: the loss may not fall, and then there is no suggestion
    if lr is None:
        assert summary["reason"] and f"no clear suggestion: {summary['reason']}" in out
    else:
        assert math.isfinite(lr) and 1e-6 <= lr <= 1 and f"suggested lr: {lr:.3g}" in out
    assert (run / "fold0" / "done.json").is_file()  # the range test touches no run folder


def test_lr_suggestion_rules():
    from pipeline.tools.lr_find import suggest

    lrs = np.logspace(-6, 0, 50)
    loss = np.concatenate([np.linspace(2, 0.5, 40), np.linspace(0.6, 5, 10)])
    found = suggest(lrs, loss)
    assert found["min_loss_lr"] == pytest.approx(lrs[39]) and found["min_loss_lr_div10"] == pytest.approx(lrs[39] / 10)
    assert 0 < found["suggested_lr"] <= found["min_loss_lr"]


@pytest.mark.slow
def test_lr_find_stops_on_divergence(trained, tmp_path):
    assert cli(trained, "lr-find", "-c", "competition.yaml", "--model", "tiny", "--runs", str(tmp_path),
               "--steps", "40", "--start", "1e-3", "--end", "1e8", "batch_size=2") == 0
    summary = json.loads((tmp_path / "tiny" / "lr_find.json").read_text())
    assert summary["stopped"].startswith(("diverged", "non-finite")) and summary["steps"] < 40
    assert summary["suggested_lr"] is None or 1e-6 <= summary["suggested_lr"] <= 1


def test_lr_find_unknown_model_exits_2(trained, capsys):
    assert cli(trained, "lr-find", "-c", "competition.yaml", "--model", "nope") == 2
    err = capsys.readouterr().err
    assert "nope.yaml" in err and "tiny" in err


# --- plots that explain themselves, sizes, index.html ------------------------------------------------

SIZES = [(40, 60), (60, 40), (30, 90), (50, 50), (48, 64), (64, 48)]  # (height, width): several aspects


def varied_competition(root):
    """make_competition, then every image rewritten at one of SIZES (cycling), and class c0 renamed `c<0>`."""
    make_competition(root, n_train=36, n_test=12, models_dir="models")
    data = root / "data" / "tiny"
    rng = np.random.default_rng(2)
    expected = []
    for split, table in (("train", "train.csv"), ("test", "sample_submission.csv")):
        ids = pd.read_csv(data / table, dtype=str)["image_id"]
        for i, image_id in enumerate(ids):
            h, w = SIZES[i % len(SIZES)]
            cv2.imwrite(str(data / split / f"{image_id}.png"), rng.integers(0, 256, (h, w), dtype=np.uint8))
            expected.append((h, w))
    edit_train(root, lambda df: df.assign(label=df["label"].replace({"c0": "c<0>"})))
    return np.array(expected, dtype=float)


def pngs_in(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", md)


def check_html(folder):
    """index.html beside index.md: an <img> for every PNG the markdown shows, a table, escaped text."""
    md, page = (folder / "index.md").read_text(), (folder / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page and "<table>" in page
    assert pngs_in(md) and all(f'<img src="{png}"' in page for png in pngs_in(md))
    assert all((folder / png).is_file() for png in pngs_in(md))
    return page


def test_eda_sizes_aspects_and_a_pad_recommendation_on_varied_images(tmp_path):
    hw = varied_competition(tmp_path)
    assert cli(tmp_path, "eda", "-c", "competition.yaml", "--out", "eda") == 0
    out = tmp_path / "eda"
    result = json.loads((out / "eda.json").read_text())
    every = result["image_sizes"]["all"]
    h, w = hw[:, 0], hw[:, 1]
    assert every["images"] == 48
    assert every["height"] == {"min": 30, "median": float(np.median(h)), "max": 64}
    assert every["width"] == {"min": 40, "median": float(np.median(w)), "max": 90}
    assert every["aspect"] == {"min": pytest.approx(40 / 60, abs=1e-4), "median": pytest.approx(np.median(w / h), abs=1e-4),
                               "max": 3.0}
    assert every["non_square_share"] == pytest.approx((h != w).mean(), abs=1e-4) and every["distinct_sizes"] == 6
    assert result["image_sizes"]["train"]["images"] == 36 and result["image_sizes"]["test"]["distinct_sizes"] == 6
    advice = result["recommendation"]
    assert advice["resize"] in ("pad", "crop") and "squash would distort" in advice["reason"].replace("`", "")
    rh, rw = advice["img_size"]
    assert [rh, rw] == [192, 224]  # multiples of 32 near 224 px at the median aspect 7/6
    md = (out / "index.md").read_text()
    assert f"`img_size: [{rh}, {rw}]`" in md and f"`resize: {advice['resize']}`" in md
    assert "| all | 48 | 30 / 49 / 64 | 40 / 55 / 90 | 0.67 / 1.17 / 3.00 | 83.3% | 6 |" in md  # all: min / median / max
    assert "image_sizes.png" in pngs_in(md) and "Sizes and channels" not in md
    page = check_html(out)
    assert "c&lt;0&gt;" in page and "c<0>" not in page  # a class name is text, not markup
    assert f"<code>img_size: [{rh}, {rw}]</code>" in page


def test_size_recommendation_rules():
    from pipeline.tools.eda import recommend_size

    def frame(sizes):
        return pd.DataFrame({"split": "train", "height": [s[0] for s in sizes], "width": [s[1] for s in sizes]})

    square = recommend_size(frame([(500, 500)] * 9 + [(480, 500)]))
    assert square["resize"] == "squash" and square["img_size"] == [384, 384] and "square" in square["reason"]
    wide = recommend_size(frame([(600, 800)] * 10))  # one shared 4:3 aspect: squash keeps it
    assert wide["resize"] == "squash" and wide["img_size"] == [320, 416] and "share one aspect" in wide["reason"]
    mixed = recommend_size(frame([(100, 200), (200, 100), (150, 150), (100, 300)] * 3))
    assert mixed["resize"] == "pad" and mixed["alternative"] == "crop"
    assert all(side % 32 == 0 for side in mixed["img_size"])


def test_curves_label_every_axis_with_whole_epochs():
    from pipeline.tools.report import curves_figure

    log = pd.DataFrame({"epoch": [1, 2, 3], "stage": [0, 0, 1], "train_loss": [1.0, 0.8, 0.7],
                        "val_loss": [1.1, 0.9, 0.85], "accuracy": [0.5, 0.6, 0.65], "lr": [1e-3, 5e-4, 1e-4]})
    fig = curves_figure({"fold0": log, "fold1": log.assign(train_loss=log.train_loss + 0.1)}, "m", "accuracy")
    fig.canvas.draw()
    assert len(fig.axes) == 3
    for ax in fig.axes:
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel()
        assert all(float(t).is_integer() for t in ax.get_xticks()), ax.get_xticks()
    assert "accuracy" in fig.axes[1].get_ylabel() and "learning rate" in fig.axes[2].get_ylabel()


def colorbars(fig) -> list:
    return [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def test_confusion_and_grad_cam_figures_have_colour_bars_and_keep_the_aspect():
    from pipeline.tools.report import confusion_figure, grad_cam_figure

    cm = pd.DataFrame([[5, 1], [2, 4]], index=["a", "b"], columns=["a", "b"])
    fig = confusion_figure({"all": cm})
    assert len(colorbars(fig)) == 1 and fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()
    rng = np.random.default_rng(0)
    mistake = pd.DataFrame({"id": ["x"], "true": ["a"]}).itertuples().__next__()
    panels = [(mistake, 0, rng.random((24, 40)), rng.random((24, 40)), 1)] * 2  # a 24x40 input (pad/crop)
    fig = grad_cam_figure(panels, ["a", "b"], "m", "pad")
    bars = colorbars(fig)
    assert len(bars) == 1 and "Grad-CAM" in bars[0].get_ylabel()
    for ax in fig.axes:
        if ax in bars:
            continue
        assert ax.get_aspect() == 1.0  # square pixels, never stretched
        assert all(im.get_array().shape[:2] == (24, 40) for im in ax.get_images())  # the input as the model saw it
    assert len([im for ax in fig.axes for im in ax.get_images()]) == 6  # 2 inputs + 2 inputs with 2 heatmaps
    width, height = fig.get_size_inches()
    assert width > height  # wide inputs, wide tiles


@pytest.mark.slow
def test_lr_find_on_tiny_data_repeats_passes(trained, tmp_path, capsys):
    """45 rows at batch 8 are 6 batches a pass: 60 steps need 10 passes, and the test says so."""
    capsys.readouterr()
    assert cli(trained, "lr-find", "-c", "competition.yaml", "--model", "tiny", "--runs", str(tmp_path),
               "--steps", "60", "--start", "1e-5", "--end", "1", "batch_size=8") == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "tiny" / "lr_find.json").read_text())
    assert summary["passes"] > 1 and (summary["steps"] == 60 or summary["stopped"] != "reached the last lr")
    assert "repeating them over" in out
    lr = summary["suggested_lr"]
    if lr is None:
        assert summary["reason"] and "no clear suggestion" in out
    else:
        assert 1e-5 <= lr <= 1 and summary["range"][0] <= lr <= summary["range"][-1]


def test_lr_find_refuses_too_little_data(trained, capsys):
    assert cli(trained, "lr-find", "-c", "competition.yaml", "--model", "tiny", "batch_size=64") == 2
    err = capsys.readouterr().err
    assert "make 1 batch(es) of batch_size=64" in err and "at least 2 batches" in err


def test_lr_suggestion_refuses_curves_nobody_can_act_on():
    from pipeline.tools.lr_find import suggest

    lrs = np.logspace(-6, 0, 60)
    flat = suggest(lrs, 1.0 + 0.001 * np.sin(np.arange(60)))
    assert flat["suggested_lr"] is None and "did not fall" in flat["reason"]
    rising = suggest(lrs, np.linspace(1, 5, 60))
    assert rising["suggested_lr"] is None and ("lower --start" in rising["reason"] or "did not fall" in rising["reason"])
    u = np.concatenate([np.linspace(2, 0.5, 40), np.linspace(0.6, 5, 20)])
    good = suggest(lrs, u)
    assert good["suggested_lr"] is not None and good["range"][0] <= good["suggested_lr"] <= good["range"][-1]
    tiny = suggest(np.logspace(-12, -8, 60), u)  # a clean curve, but at learning rates nobody trains with
    assert tiny["suggested_lr"] is None and "outside" in tiny["reason"]
