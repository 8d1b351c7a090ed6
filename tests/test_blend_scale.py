"""Blends that scale with classes: per-class formulations of the stackers at many classes, their JSON round
trip, float32 kept, the cost estimates that choose them, and `auto` skipping a blend over its time budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.blend import blends
from pipeline.blend.ensemble import nested_cv
from pipeline.core.config import ConfigError, load_competition
from pipeline.core.metrics import get_metric
from tests.conftest import make_competition, run_cli

CLASS_BLENDS = ("vote", "mean", "gmean", "rank", "weights", "weights_scipy", "lgbm", "logreg", "catboost")


def _models(rng, y: np.ndarray, n_classes: int, strengths, dtype=np.float32) -> np.ndarray:
    """(n_models, n, C) softmax probabilities with the true class boosted by each model's strength."""
    out = []
    for s in strengths:
        z = rng.normal(size=(len(y), n_classes))
        z[np.arange(len(y)), y] += s
        p = np.exp(z - z.max(axis=1, keepdims=True))
        out.append(p / p.sum(axis=1, keepdims=True))
    return np.stack(out).astype(dtype)


def _many_classes(root: Path, n_classes: int = 300, per_class: int = 3, n_test: int = 150):
    """A competition with `per_class` rows of each of n_classes classes, its folds, and 3 models' tables of
    our own (CSV: id + one probability column per class) in stacking/."""
    make_competition(root, n_train=n_classes * per_class, n_test=n_test, n_classes=n_classes, size=4)
    run_cli("folds", "-c", "competition.yaml", "--no-decode", cwd=root)
    comp = load_competition(root / "competition.yaml")
    train = pd.read_csv(root / comp.train_csv_path, dtype=str)  # paths are relative to the folder run in
    test_ids = pd.read_csv(root / comp.sample_submission_path, dtype=str)[comp.id_col]
    classes = [f"c{i}" for i in range(n_classes)]
    y = train[comp.target].map({c: i for i, c in enumerate(classes)}).to_numpy()
    rng = np.random.default_rng(0)
    oof = _models(rng, y, n_classes, (2.0, 3.0, 4.0))
    test = _models(rng, np.arange(n_test) % n_classes, n_classes, (2.0, 3.0, 4.0))
    (root / "stacking").mkdir()
    for m in range(3):
        for part, ids, p in (("oof", train[comp.id_col], oof[m]), ("test", test_ids, test[m])):
            df = pd.DataFrame(p.astype(np.float64), columns=classes)
            df.insert(0, comp.id_col, ids.to_numpy())
            df.to_csv(root / "stacking" / f"m{m}.{part}.csv", index=False, float_format="%.7g")
    return y, oof


# --- the CLI at 300 classes -------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_blend_finishes_at_300_classes_and_auto_skips_over_budget(tmp_path):
    """`auto` scores every blend at 300 classes (the stackers per class); with a budget below the stackers'
    estimates it skips them, and cv.md and cv.json say why; a blend named by --method runs anyway."""
    _many_classes(tmp_path)
    run_cli("ensemble", "-c", "competition.yaml", cwd=tmp_path)
    report = json.loads((tmp_path / "submissions" / "cv.json").read_text())
    assert report["n_classes"] == 300 and set(report["blends"]) == set(CLASS_BLENDS)
    cvs = {name: b["cv"] for name, b in report["blends"].items()}
    assert all(cv is not None for cv in cvs.values()), report["blends"]
    best_model = max(m["cv"] for m in report["models"].values())
    assert cvs["logreg"] >= best_model and cvs["lgbm"] > 0.5, (cvs, best_model)  # they learned, per class
    state = json.loads((tmp_path / "submissions" / "blend.json").read_text())
    assert state["method"] == report["chosen"]

    proc = run_cli("ensemble", "-c", "competition.yaml", "--force", "blend_budget_minutes=0.001", cwd=tmp_path)
    report = json.loads((tmp_path / "submissions" / "cv.json").read_text())
    skipped = {name: b["skipped"] for name, b in report["blends"].items() if "skipped" in b}
    assert {"rank", "weights", "weights_scipy", "lgbm", "logreg"} <= set(skipped)
    assert {"vote", "mean", "gmean"}.isdisjoint(skipped) and report["chosen"] in ("vote", "mean", "gmean")
    assert skipped["lgbm"].startswith("skipped, 900 rows x 300 classes x 3 models: est. ")
    assert skipped["lgbm"].endswith("> budget 0.06 s") and report["blends"]["lgbm"]["cv"] is None
    cv_md = (tmp_path / "submissions" / "cv.md").read_text()
    assert f"| lgbm | {skipped['lgbm']} |" in cv_md and "note: blend lgbm skipped, 900 rows" in proc.stdout

    proc = run_cli("ensemble", "-c", "competition.yaml", "--method", "logreg", "blend_budget_minutes=0.001",
                   cwd=tmp_path)
    assert "note: blend logreg: 900 rows x 300 classes x 3 models: est." in proc.stdout
    state = json.loads((tmp_path / "submissions" / "blend.json").read_text())
    assert state["method"] == "logreg" and {s["state"]["formulation"] for s in state["learners"]} == {"per_class"}


def test_the_budget_key_is_checked(tmp_path):
    make_competition(tmp_path)
    with pytest.raises(ConfigError, match="blend_budget_minutes"):
        load_competition(tmp_path / "competition.yaml", ["blend_budget_minutes=0"])


# --- formulations, estimates and round trips ---------------------------------------------------------------


def test_small_class_counts_keep_the_joint_formulation_and_many_classes_go_per_class():
    for name in ("lgbm", "logreg"):
        small, many = (blends.make_blend(name, "multiclass", c, "accuracy") for c in (10, 1000))
        assert blends.plan_blend(small, 12_000, 10, 3, 5) < 300 and small.formulation == "joint"
        seconds = blends.plan_blend(many, 12_000, 1000, 3, 5)
        assert many.formulation == "per_class" and seconds < 120, (name, seconds)
        joint = blends.make_blend(name, "multiclass", 1000, "accuracy").set_params(formulation="joint")
        assert joint.fit_seconds(9600, 1000, 3) > 3600  # the joint one would take hours
    assert blends.make_blend("logreg", "multilabel", 1000, "f1").formulation_for(9600, 1000, 3) == "joint"
    assert blends.make_blend("lgbm", "regression", 1, None).formulation_for(10**6, 1, 50) == "joint"
    with pytest.raises(ValueError, match="formulation must be one of"):
        blends.make_blend("lgbm", "multiclass", 3, None).set_params(formulation="nope").formulation_for(9, 3, 2)


@pytest.mark.parametrize("name, task", [("logreg", "multiclass"), ("lgbm", "multiclass"), ("lgbm", "multilabel")])
def test_per_class_formulations_keep_float32_and_round_trip_exactly(name, task):
    rng = np.random.default_rng(1)
    n, C = 600, 40
    if task == "multilabel":
        y = (rng.random((n, C)) < 0.05).astype(int)
        P = np.stack([1 / (1 + np.exp(-(rng.normal(size=y.shape) + s * (2 * y - 1)))) for s in (1.0, 2.0)])
        P = P.astype(np.float32)
    else:
        y = np.arange(n) % C
        P = _models(rng, y, C, (1.0, 2.0, 3.0))
    X = blends.stack(P)
    assert X.dtype == np.float32
    est = blends.make_blend(name, task, C, "accuracy").set_params(formulation="per_class")
    oof, learners = nested_cv(est, X, y, np.arange(n) % 3)
    assert oof.dtype == np.float32 and all(e.formulation_ == "per_class" for e in learners)
    if task != "multilabel":
        assert np.allclose(oof.sum(axis=1), 1.0, atol=1e-5)
        assert get_metric("accuracy", task).score(y, oof) > get_metric("accuracy", task).score(y, P[0])
    fitted = blends.FittedBlend(name, True, learners)
    again = blends.FittedBlend.from_export(json.loads(json.dumps(fitted.export())))
    assert np.array_equal(again.predict_proba(X[:50], task), fitted.predict_proba(X[:50], task))


def test_a_blend_json_from_before_formulations_loads_as_joint():
    rng = np.random.default_rng(2)
    y = np.arange(90) % 3
    X = blends.stack(_models(rng, y, 3, (1.0, 2.0), dtype=np.float64))
    for name in ("lgbm", "logreg"):
        est = blends.make_blend(name, "multiclass", 3, "accuracy").fit(X, y)
        state = json.loads(json.dumps(est.export_state()))
        assert state["state"].pop("formulation") == "joint"
        state["params"].pop("formulation")
        old = blends.import_blend_state(state)
        assert old.formulation_ == "joint" and np.array_equal(old.predict_proba(X), est.predict_proba(X))


def test_conditional_logit_weighs_the_better_model_more_and_beats_the_geometric_mean():
    """log p of each model is its true-class boost plus noise: the fitted weights follow the strengths, and
    the nested log loss beats the geometric mean's (which weighs every model alike)."""
    rng = np.random.default_rng(3)
    n, C = 900, 60
    y = np.arange(n) % C
    X = blends.stack(_models(rng, y, C, (0.5, 1.5, 3.0)))
    est = blends.make_blend("logreg", "multiclass", C, "logloss").set_params(formulation="per_class")
    fold = np.arange(n) % 3
    oof, learners = nested_cv(est, X, y, fold)
    for learner in learners:
        assert learner.coef_[2] > learner.coef_[1] > learner.coef_[0], learner.coef_
    gmean, _ = nested_cv(blends.make_blend("gmean", "multiclass", C, "logloss"), X, y, fold)
    logloss = get_metric("logloss", "multiclass")
    assert logloss.score(y, oof) < logloss.score(y, gmean) - 0.1
