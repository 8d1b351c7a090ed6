"""The `catboost` stacker: nested CV beside lgbm and logreg, deterministic, in `auto` under the budget, and its
state (CatBoost's own JSON) applied offline exactly as the Kaggle kernel applies blend.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from pipeline.blend import blends
from pipeline.blend import ensemble as ens
from pipeline.blend.catboost_blend import CatBoostStacker
from pipeline.core.errors import ConfigError
from pipeline.core.metrics import get_metric
from tests.conftest import REPO, make_competition, read_table_file, run_cli, train_tiny


def _models(rng, y: np.ndarray, n_classes: int, strengths) -> np.ndarray:
    """(n_models, n, C) softmax probabilities with the true class boosted by each model's strength."""
    out = []
    for s in strengths:
        z = rng.normal(size=(len(y), n_classes))
        z[np.arange(len(y)), y] += s
        p = np.exp(z - z.max(axis=1, keepdims=True))
        out.append(p / p.sum(axis=1, keepdims=True))
    return np.stack(out)


def _fold(n: int) -> np.ndarray:
    """3 folds of blocks of 5 rows: every fold holds every class of `np.arange(n) % C`."""
    return (np.arange(n) // 5) % 3


def _data(task: str, n: int = 120, C: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    if task == "multilabel":
        y = (rng.random((n, C)) < 0.4).astype(int)
        y[:, -1] = 0  # a label never on: its constant frequency, no model
        P = np.stack([1 / (1 + np.exp(-(rng.normal(size=y.shape) + s * (2 * y - 1)))) for s in (1.0, 2.0)])
        return blends.stack(P), y, blends.stack(P[:, :20])
    C = 2 if task == "binary" else C
    y = np.arange(n) % C
    P = _models(rng, y, C, (0.5, 1.5))
    return blends.stack(P), y, blends.stack(_models(rng, np.arange(20) % C, C, (0.5, 1.5)))


# --- the estimator -------------------------------------------------------------------------------------


def test_catboost_is_in_the_registry_and_in_auto_for_class_tasks_only():
    assert "catboost" in blends.task_blends("multiclass") and "catboost" in blends.task_blends("multilabel")
    assert "catboost" in blends.candidate_names("auto", get_metric("accuracy", "multiclass"))
    assert "catboost+thr" in blends.candidate_names("auto", get_metric("qwk", "ordinal"))
    assert isinstance(blends.make_blend("catboost", "multiclass", 3, "accuracy"), CatBoostStacker)
    with pytest.raises(ConfigError, match="unknown ensemble method 'catboost' for task regression"):
        blends.make_blend("catboost", "regression", 1, None)
    help_text = run_cli("ensemble", "--help", cwd=REPO).stdout
    assert "catboost: CatBoost stacker" in " ".join(help_text.split())


def test_catboost_is_deterministic_and_learns():
    X, y, _ = _data("multiclass", n=150)
    a = blends.make_blend("catboost", "multiclass", 3, "accuracy").fit(X, y)
    b = clone(a).fit(X, y)
    assert a.best_iterations_ == b.best_iterations_ and a.model_texts_ == b.model_texts_
    assert np.array_equal(a.predict_proba(X), b.predict_proba(X))
    oof, _ = ens.nested_cv(a, X, y, _fold(150))
    acc = get_metric("accuracy", "multiclass")
    assert acc.score(y, oof) > 0.6 and np.allclose(oof.sum(axis=1), 1.0)  # held-out rows, not chance (1/3)
    assert not os.path.exists("catboost_info")  # it writes no training files where it runs


@pytest.mark.parametrize("task, metric", [("multiclass", "accuracy"), ("binary", "auc"), ("multilabel", "f1_samples"),
                                          ("ordinal", "qwk")])
def test_exported_state_reproduces_the_blend_test_prediction_exactly(task, metric):
    """As `ensemble` fits it and as the kernel applies blend.json: FittedBlend.from_export(...).predict_proba."""
    X, y, X_test = _data(task)
    name = "catboost+thr" if task == "ordinal" else "catboost"
    est = blends.make_blend(name, task, y.shape[1] if task == "multilabel" else len(np.unique(y)), metric)
    r = ens.evaluate_blend(name, est, X, y, _fold(len(y)), X_test, get_metric(metric, task))
    data = json.loads(json.dumps(blends.FittedBlend(name, r.learned, r.learners).export()))
    inner = [s["estimator"] if "estimator" in s else s for s in data["learners"]]
    assert all(s["class"] == "CatBoostStacker" and s["state"]["formulation"] == "joint" for s in inner)
    models = [m for s in inner for m in s["state"]["models"]]
    assert all(json.loads(m["json"])["oblivious_trees"] for m in models if "json" in m)  # CatBoost's own JSON
    if task == "multilabel":
        assert [m for m in models if "constant" in m]  # the label never on
    again = blends.FittedBlend.from_export(data).predict_proba(X_test, task)
    assert np.array_equal(again, r.test)


def test_many_classes_go_per_class_within_the_budget():
    small, many = (blends.make_blend("catboost", "multiclass", c, "accuracy") for c in (10, 1000))
    assert blends.plan_blend(small, 12_000, 10, 3, 5) < 300 and small.formulation == "joint"
    seconds = blends.plan_blend(many, 12_000, 1000, 3, 5)
    assert many.formulation == "per_class" and seconds < 300, seconds
    assert blends.make_blend("catboost", "multiclass", 1000, None).set_params(
        formulation="joint").fit_seconds(9600, 1000, 3) > 3600  # the joint one would take hours
    with pytest.raises(ValueError, match="formulation must be one of"):
        blends.make_blend("catboost", "multiclass", 3, None).set_params(formulation="nope").formulation_for(9, 3, 2)
    rng = np.random.default_rng(1)
    n, C = 400, 40
    y = np.arange(n) % C
    P = _models(rng, y, C, (1.0, 2.0, 3.0)).astype(np.float32)
    X = blends.stack(P)
    est = blends.make_blend("catboost", "multiclass", C, "accuracy").set_params(formulation="per_class")
    oof, learners = ens.nested_cv(est, X, y, _fold(n))
    assert all(e.formulation_ == "per_class" for e in learners) and np.allclose(oof.sum(axis=1), 1.0, atol=1e-5)
    acc = get_metric("accuracy", "multiclass")
    assert acc.score(y, oof) > acc.score(y, P[0])  # better than the weakest model
    fitted = blends.FittedBlend("catboost", True, learners)
    again = blends.FittedBlend.from_export(json.loads(json.dumps(fitted.export())))
    assert np.array_equal(again.predict_proba(X[:50], "multiclass"), fitted.predict_proba(X[:50], "multiclass"))


def test_a_damaged_state_or_no_catboost_is_a_clear_error(monkeypatch):
    X, y, _ = _data("multiclass", n=60)
    state = json.loads(json.dumps(blends.make_blend("catboost", "multiclass", 3, "accuracy").fit(X, y).export_state()))
    good = state["state"]["models"][0]["json"]
    wider = blends.make_blend("catboost", "multiclass", 3, "accuracy").fit(np.column_stack([X, X[:, :3]]), y)
    for bad, why in (('{"oblivious_trees": "not a model"}', "no 'oblivious_trees' list"),  # catboost loads it
                     (good[: len(good) // 2], "not a JSON object"),
                     (wider.model_texts_[0], "9 features, the blend gives it 6")):  # another blend's model
        state["state"]["models"][0]["json"] = bad
        with pytest.raises(ConfigError, match=rf"catboost blend state: model 0 is not a CatBoost JSON model \(.*"
                                              rf"{why}.*\); rerun `make ensemble`"):
            blends.import_blend_state(state)
    monkeypatch.setitem(sys.modules, "catboost", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"the catboost blend needs the catboost package .*pip install catboost"):
        blends.make_blend("catboost", "multiclass", 3, "accuracy").fit(X, y)


# --- the stage: cv.md, auto, the budget, and the kernel's application of blend.json --------------------------


def _own_tables(root, n_classes: int = 3):
    """A tiny competition, its folds, and 2 models' tables of our own (CSV) in stacking/."""
    make_competition(root, n_train=90, n_test=15, n_classes=n_classes, size=4)
    run_cli("folds", "-c", "competition.yaml", "--no-decode", cwd=root)
    train = pd.read_csv(root / "data" / "tiny" / "train.csv", dtype=str)
    test_ids = pd.read_csv(root / "data" / "tiny" / "sample_submission.csv", dtype=str)["image_id"]
    classes = [f"c{i}" for i in range(n_classes)]
    y = train["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    rng = np.random.default_rng(0)
    oof, test = _models(rng, y, n_classes, (0.5, 1.5)), _models(rng, np.arange(15) % n_classes, n_classes, (0.5, 1.5))
    (root / "stacking").mkdir()
    for m in range(2):
        for part, ids, p in (("oof", train["image_id"], oof[m]), ("test", test_ids, test[m])):
            df = pd.DataFrame(p, columns=classes)
            df.insert(0, "image_id", ids.to_numpy())
            df.to_csv(root / "stacking" / f"m{m}.{part}.csv", index=False, float_format="%.7g")
    return classes, test_ids


def kernel_blend(root, submissions: str, classes, test_ids) -> np.ndarray:
    """What the kernel computes: blend.json applied to the models' test tables (pipeline.kaggle.kernel)."""
    from pipeline.artifacts.tables import read_table

    data = json.loads((root / submissions / "blend.json").read_text())
    tables = [read_table(root / "stacking" / f"{m}.test.csv", "image_id", classes, list(test_ids)).to_numpy()
              for m in data["models"]]
    return blends.FittedBlend.from_export(data).predict_proba(blends.stack(np.stack(tables)), "multiclass")


@pytest.mark.slow
def test_ensemble_catboost_in_cv_md_auto_and_the_budget(tmp_path):
    classes, test_ids = _own_tables(tmp_path)
    proc = run_cli("ensemble", "-c", "competition.yaml", "--method", "catboost", "--out", "sub_cb", cwd=tmp_path)
    assert "chosen: catboost (CV " in proc.stdout
    cv_md = (tmp_path / "sub_cb" / "cv.md").read_text()
    assert "| **chosen** | catboost | blend, nested CV |" in cv_md
    report = json.loads((tmp_path / "sub_cb" / "cv.json").read_text())
    assert report["blends"]["catboost"]["nested"] and report["blends"]["catboost"]["cv"] > 0.5
    state = json.loads((tmp_path / "sub_cb" / "blend.json").read_text())
    assert state["method"] == "catboost" and len(state["learners"]) == 3  # one learner per fold
    written = read_table_file(tmp_path / "sub_cb" / "blend.test.parquet").set_index("image_id").loc[list(test_ids)]
    np.testing.assert_allclose(kernel_blend(tmp_path, "sub_cb", classes, test_ids), written[classes].to_numpy(),
                               atol=1e-6)  # the table is float32

    run_cli("ensemble", "-c", "competition.yaml", "--out", "sub_auto", cwd=tmp_path)
    report = json.loads((tmp_path / "sub_auto" / "cv.json").read_text())
    assert report["blends"]["catboost"]["cv"] is not None and report["blends"]["catboost"]["nested"]
    assert "| catboost | blend, nested CV |" in (tmp_path / "sub_auto" / "cv.md").read_text().replace("| **chosen** ", "| ")

    proc = run_cli("ensemble", "-c", "competition.yaml", "--out", "sub_budget", "blend_budget_minutes=0.001",
                   cwd=tmp_path)
    report = json.loads((tmp_path / "sub_budget" / "cv.json").read_text())
    why = report["blends"]["catboost"]["skipped"]
    assert why.startswith("skipped, 90 rows x 3 classes x 2 models: est. ") and why.endswith("> budget 0.06 s")
    assert f"| catboost | {why} |" in (tmp_path / "sub_budget" / "cv.md").read_text()
    assert "note: blend catboost skipped, 90 rows" in proc.stdout


@pytest.mark.slow
def test_packaged_catboost_blend_reproduces_the_submission_offline(tmp_path):
    """The whole round trip: ensemble --method catboost, package, and the kernel run with the network blocked."""
    from tests.test_package import offline_prefix, same_submission

    train_tiny(tmp_path, n_train=45, n_test=12, model={"epochs": 1}, blend="catboost")
    run_cli("package", "-c", "competition.yaml", "--wheels", "", "--out", "dist/cb", cwd=tmp_path)
    blend = json.loads((tmp_path / "dist" / "cb" / "dataset" / "blend.json").read_text())
    assert blend["method"] == "catboost" and len(blend["learners"]) == 3
    data = tmp_path / "input" / "tiny-comp"
    shutil.copytree(tmp_path / "data" / "tiny", data, ignore=shutil.ignore_patterns("train", "train.csv"))
    prefix, env = offline_prefix(tmp_path)
    out = tmp_path / "kernel" / "submission.csv"
    proc = subprocess.run([*prefix, sys.executable, "-m", "pipeline", "kernel", "--bundle",
                           str(tmp_path / "dist" / "cb" / "dataset"), "--data-dir", str(data), "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "kernel: blend catboost ->" in proc.stdout
    same_submission(out, tmp_path / "submissions" / "submission.csv")
