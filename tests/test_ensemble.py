"""The ensemble stage: blends against hand-computed results, nested CV honesty, stackers, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.metrics import cohen_kappa_score

from pipeline.blend import blends
from pipeline.blend import ensemble as ens
from pipeline.core.config import ConfigError, load_competition
from pipeline.core.data import class_names, encode_targets, read_sample, read_train
from pipeline.core.io import file_md5
from pipeline.core.metrics import quadratic_kappa
from pipeline.core.thresholds import apply_thresholds, fit_thresholds
from pipeline.blend.submission import validate_file
from pipeline.artifacts.tables import TableError, load_level1, write_table
from pipeline.core.metrics import get_metric
from tests.conftest import edit_train, make_competition, run_cli, read_table_file

# --- helpers ---------------------------------------------------------------------------------------

# What `auto` tries for a class task, in order (written out: the registry must match it).
CLASS_BLENDS = ("vote", "mean", "gmean", "rank", "weights", "weights_scipy", "lgbm", "logreg", "catboost")


def _noisy(rng, y: np.ndarray, n_classes: int, strength: float) -> np.ndarray:
    logits = rng.normal(size=(len(y), n_classes))
    logits[np.arange(len(y)), y] += strength
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def _multilabel_noisy(rng, y: np.ndarray, strength: float) -> np.ndarray:
    return 1 / (1 + np.exp(-(rng.normal(size=y.shape) + strength * (2 * y - 1))))


def _setup(root: Path, strengths=(0.5, 1.5, 2.5), seed: int = 0, edit=None, sample=None, **config):
    """A tiny competition (cwd = root), its folds, and one stacking table pair per model."""
    from pipeline.artifacts.folds import make_folds

    make_competition(root, n_train=90, n_test=15, **config)
    if edit is not None:
        edit_train(root, edit)
    if sample is not None:
        path = root / "data" / "tiny" / "sample_submission.csv"
        sample(pd.read_csv(path, dtype=str)).to_csv(path, index=False)
    comp = load_competition(root / "competition.yaml")
    make_folds(comp, out_dir="folds", decode=False)
    train = read_train(comp)
    classes = class_names(comp, train)
    y = encode_targets(comp, train, classes)
    test_ids = read_sample(comp)[comp.id_col]
    md5 = file_md5("folds/folds.csv")
    rng = np.random.default_rng(seed)
    for m, s in enumerate(strengths):
        if comp.task == "multilabel":
            oof, test = _multilabel_noisy(rng, y, s), rng.uniform(size=(len(test_ids), len(classes)))
        else:
            oof, test = _noisy(rng, y, len(classes), s), rng.dirichlet(np.ones(len(classes)), size=len(test_ids))
        meta = {"folds_md5": md5}
        write_table(f"stacking/m{m}.oof.csv", train[comp.id_col], oof, classes, comp.id_col, meta=meta)
        write_table(f"stacking/m{m}.test.csv", test_ids, test, classes, comp.id_col, meta=meta)
    return comp, classes, y


@pytest.fixture
def tiny_stack(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return _setup(tmp_path)


# --- blends against hand-computed results ------------------------------------------------------------


def test_vote_majority_beats_mean_and_a_tie_goes_to_the_higher_mean_probability():
    # 3 models: two vote class 0 although class 1 has the highest mean probability -> one-hot class 0.
    P3 = np.array([[[0.40, 0.35, 0.25]], [[0.40, 0.30, 0.30]], [[0.00, 1.00, 0.00]]])
    assert np.array_equal(blends.blend_vote(P3, "multiclass"), [[1.0, 0.0, 0.0]])
    # 2 models, 1-1 ties. Row 0: class 0 (mean 0.35) vs class 1 (mean 0.55) -> 1.
    # Row 1: class 0 (mean 0.30) vs class 2 (mean 0.45) -> 2.
    P2 = np.array([[[0.5, 0.4, 0.1], [0.6, 0.3, 0.1]], [[0.2, 0.7, 0.1], [0.0, 0.2, 0.8]]])
    assert np.array_equal(blends.blend_vote(P2, "multiclass"), [[0, 1, 0], [0, 0, 1]])


def test_vote_multilabel_votes_per_label_and_breaks_ties_by_mean():
    # 2 models, 2 labels: label 0 tie (0.9 vs 0.3: mean 0.6 -> 1), label 1 tie (0.55 vs 0.1: mean 0.325 -> 0)
    P = np.array([[[0.9, 0.55]], [[0.3, 0.1]]])
    assert np.array_equal(blends.blend_vote(P, "multilabel"), [[1.0, 0.0]])
    P3 = np.array([[[0.6, 0.0]], [[0.6, 0.0]], [[0.0, 1.0]]])  # majority 1 on label 0, 0 on label 1
    assert np.array_equal(blends.blend_vote(P3, "multilabel"), [[1.0, 0.0]])


def test_mean_is_soft_voting():
    P = np.array([[[0.2, 0.8], [0.6, 0.4]], [[0.4, 0.6], [1.0, 0.0]]])
    assert np.allclose(blends.blend_mean(P, "binary"), [[0.3, 0.7], [0.8, 0.2]])


def test_gmean_with_a_zero_probability_is_finite_and_matches_hand_computation():
    eps = blends.GMEAN_EPS
    P = np.array([[[0.0, 1.0], [0.2, 0.8]], [[0.5, 0.5], [0.8, 0.2]]])
    out = blends.blend_gmean(P, "binary")
    row0 = np.array([np.sqrt(eps * 0.5), np.sqrt(0.5)])
    assert np.isfinite(out).all()
    assert np.allclose(out[0], row0 / row0.sum())
    assert np.allclose(out[1], [0.5, 0.5])  # sqrt(.16) = .4 both
    multiclass = blends.blend_gmean(np.array([[[0.2, 0.3, 0.5]], [[0.8, 0.1, 0.1]]]), "multiclass")
    g = np.array([0.4, np.sqrt(0.03), np.sqrt(0.05)])
    assert np.allclose(multiclass[0], g / g.sum())
    # multilabel: each label as two classes: p = sqrt(.9*.4) / (sqrt(.9*.4) + sqrt(.1*.6))
    ml = blends.blend_gmean(np.array([[[0.9]], [[0.4]]]), "multilabel")
    assert np.isclose(ml[0, 0], np.sqrt(0.36) / (np.sqrt(0.36) + np.sqrt(0.06)))


def test_rank_averages_scaled_ranks():
    P = np.zeros((2, 3, 2))
    P[0, :, 1] = [0.1, 0.9, 0.5]  # ranks 0, 1, 0.5
    P[1, :, 1] = [0.3, 0.2, 0.8]  # ranks 0.5, 0, 1
    P[..., 0] = 1 - P[..., 1]
    assert np.allclose(blends.blend_rank(P, "binary"), [[0.75, 0.25], [0.5, 0.5], [0.25, 0.75]])
    multi = blends.blend_rank(np.random.default_rng(0).dirichlet(np.ones(4), size=(3, 7)), "multiclass")
    assert np.allclose(multi.sum(axis=1), 1.0) and (multi >= 0).all()
    ml = blends.blend_rank(np.array([[[0.1, 0.9], [0.2, 0.1]]]), "multilabel")  # not renormalised
    assert np.allclose(ml, [[0.0, 1.0], [1.0, 0.0]])


def test_weights_greedy_and_scipy_find_the_useful_model():
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    good, noise = _noisy(rng, y, 3, 4.0), rng.dirichlet(np.ones(3), size=60)
    X = blends.stack(np.stack([noise, good, noise[::-1]]))
    greedy = blends.WeightsBlend(task="multiclass", n_classes=3, metric="logloss").fit(X, y)
    assert greedy.weights_.argmax() == 1 and np.isclose(greedy.weights_.sum(), 1.0) and (greedy.weights_ >= 0).all()
    logloss = get_metric("logloss", "multiclass")
    assert logloss.score(y, greedy.predict_proba(X)) <= logloss.score(y, good) + 1e-9
    opt = blends.WeightsBlend(task="multiclass", n_classes=3, metric="logloss", optimizer="scipy").fit(X, y)
    assert opt.weights_[1] > 0.8 and np.isclose(opt.weights_.sum(), 1.0)


def test_caruana_is_selection_with_replacement():
    # accuracy: model 0 right on rows 0-1, model 1 right on rows 2-3, model 2 right on 1-2 only weakly.
    y = np.array([0, 0, 1, 1])
    P = np.array([
        [[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]],
        [[0.4, 0.6], [0.4, 0.6], [0.1, 0.9], [0.1, 0.9]],
        [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]],
    ])
    w, path = blends.caruana_weights(P, y, "binary", "accuracy", n_iter=5)
    # step 1 picks model 0 (0.5, first of the ties); step 2 adds model 1: mean is right everywhere.
    assert path[:2] == [0.5, 1.0]
    assert np.allclose(w, [0.5, 0.5, 0.0])


def test_ordinal_thresholds_and_fast_kappa():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    pred = np.clip(y + rng.integers(-1, 2, 200), 0, 3)
    assert np.isclose(quadratic_kappa(y, pred, 4), cohen_kappa_score(y, pred, weights="quadratic"))
    values = 0.4 * y + rng.uniform(0, 0.3, 200)  # separable, but not at the default cuts 0.5, 1.5, 2.5
    assert quadratic_kappa(y, apply_thresholds(values, [0.5, 1.5, 2.5]), 4) < 0.9
    cuts = fit_thresholds(y, values, 4)
    assert quadratic_kappa(y, apply_thresholds(values, cuts), 4) == 1.0
    assert np.all(np.diff(cuts) > 0)


# --- honesty: nested CV ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["logreg", "weights", "lgbm"])
def test_nested_cv_is_worse_than_in_sample_on_noise(name):
    rng = np.random.default_rng(1)
    n, C, M = 90, 3, 30
    y = rng.integers(0, C, n)  # labels unrelated to every model
    X = blends.stack(rng.dirichlet(np.ones(C), size=(M, n)))
    fold = np.arange(n) % 3
    est = blends.make_blend(name, "multiclass", C, "accuracy")
    in_sample = get_metric("accuracy", "multiclass").score(y, clone(est).fit(X, y).predict_proba(X))
    oof, learners = ens.nested_cv(est, X, y, fold)
    nested = get_metric("accuracy", "multiclass").score(y, oof)
    assert len(learners) == 3
    assert nested < in_sample - 0.1, (nested, in_sample)
    assert nested < 0.5


@pytest.mark.parametrize("name", ["weights", "lgbm", "logreg", "mean+thr"])
def test_held_out_labels_never_reach_their_predictions(name):
    rng = np.random.default_rng(2)
    y = np.arange(90) % 3
    X = blends.stack(np.stack([_noisy(rng, y, 3, s) for s in (0.5, 1.0, 2.0)]))
    fold = np.arange(90) // 30
    est = blends.make_blend(name, "ordinal" if "thr" in name else "multiclass", 3, "qwk" if "thr" in name else "accuracy")
    oof, _ = ens.nested_cv(est, X, y, fold)
    y2 = y.copy()
    y2[fold == 0] = (y2[fold == 0] + 1) % 3  # change only fold 0's labels
    oof2, _ = ens.nested_cv(est, X, y2, fold)
    assert np.array_equal(oof[fold == 0], oof2[fold == 0])  # fold 0 is predicted without its labels
    assert not np.array_equal(oof[fold != 0], oof2[fold != 0])  # ...which the other folds did learn from


def test_fold_averaged_test_prediction():
    rng = np.random.default_rng(3)
    y = np.arange(60) % 3
    X = blends.stack(np.stack([_noisy(rng, y, 3, 1.0) for _ in range(2)]))
    X_test = blends.stack(rng.dirichlet(np.ones(3), size=(2, 7)))
    est = blends.make_blend("logreg", "multiclass", 3, "accuracy")
    res = ens.evaluate_blend("logreg", est, X, y, np.arange(60) % 3, X_test, get_metric("accuracy", "multiclass"))
    test, learners = res.test, res.learners
    assert np.allclose(test, np.mean([e.predict_proba(X_test) for e in learners], axis=0))


# --- scikit-learn conventions, determinism -------------------------------------------------------------


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel"])
@pytest.mark.parametrize("name", list(CLASS_BLENDS))
def test_blends_follow_sklearn_conventions(name, task):
    rng = np.random.default_rng(4)
    n, C = 48, (2 if task == "binary" else 3)
    if task == "multilabel":
        y = rng.integers(0, 2, (n, C))
        P = np.stack([_multilabel_noisy(rng, y, 1.0) for _ in range(3)])
    else:
        y = np.arange(n) % C
        P = np.stack([_noisy(rng, y, C, 1.0) for _ in range(3)])
    X = blends.stack(P)
    est = blends.make_blend(name, task, C, "logloss")
    assert not [k for k in vars(est) if k.endswith("_")]  # nothing fitted before fit
    assert clone(est).get_params() == est.get_params()
    assert est.fit(X, y) is est
    fitted = [k for k in vars(est) if k.endswith("_") and not k.startswith("_")]
    assert "n_features_in_" in fitted and est.n_features_in_ == 3 * C
    proba = est.predict_proba(X[:5])
    assert proba.shape == (5, C) and (proba >= 0).all() and (proba <= 1).all()
    if task != "multilabel":
        assert np.allclose(proba.sum(axis=1), 1.0)


def test_lgbm_is_deterministic():
    rng = np.random.default_rng(5)
    y = np.arange(120) % 3
    X = blends.stack(np.stack([_noisy(rng, y, 3, 1.0) for _ in range(3)]))
    a = blends.LGBMStacker(task="multiclass", n_classes=3).fit(X, y)
    b = blends.LGBMStacker(task="multiclass", n_classes=3).fit(X, y)
    assert a.best_iterations_ == b.best_iterations_
    assert np.array_equal(a.predict_proba(X), b.predict_proba(X))
    assert not np.allclose(a.predict_proba(X), 1 / 3)  # it learned something


def test_registry_and_candidates():
    assert blends.candidate_names("auto", get_metric("accuracy", "multiclass")) == list(CLASS_BLENDS)
    assert blends.candidate_names("mean", get_metric("qwk", "ordinal")) == ["mean", "mean+thr"]
    with pytest.raises(ConfigError, match="unknown ensemble method 'ridge' for task multiclass"):
        blends.candidate_names("ridge", get_metric("accuracy", "multiclass"))


def test_cli_refuses_an_unknown_method_naming_the_tasks_blends(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _setup(tmp_path)
    proc = run_cli("ensemble", "-c", "competition.yaml", "--method", "ridge", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        "error: unknown ensemble method 'ridge' for task multiclass; choose one of auto, " + ", ".join(CLASS_BLENDS)
        + " (any of them + '+thr' for tuned thresholds)"]
    assert not (tmp_path / "submissions" / "submission.csv").exists()


# --- the stage ---------------------------------------------------------------------------------


def test_stale_table_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    comp, classes, y = _setup(tmp_path)
    meta = tmp_path / "stacking" / "m1.oof.json"
    meta.write_text(json.dumps({"folds_md5": "0" * 32}))
    with pytest.raises(TableError, match=r"m1\.oof\.csv.*another folds\.csv"):
        load_level1(comp)


def test_table_missing_ids_is_refused(tiny_stack, tmp_path):
    path = tmp_path / "stacking" / "m0.test.csv"
    df = pd.read_csv(path, dtype=str)
    df.iloc[1:].to_csv(path, index=False)
    with pytest.raises(TableError, match=r"m0\.test\.csv.*1 missing"):
        load_level1(tiny_stack[0])


def test_lonely_files_are_ignored_and_empty_stacking_refused(tiny_stack, tmp_path, capsys):
    (tmp_path / "stacking" / "m2.test.csv").unlink()
    level1 = load_level1(tiny_stack[0])
    assert level1.models == ["m0", "m1"]
    assert "m2.oof table (no m2.test table)" in capsys.readouterr().out
    for p in (tmp_path / "stacking").glob("*.csv"):
        p.unlink()
    with pytest.raises(TableError, match="no model"):
        load_level1(tiny_stack[0])


def test_auto_picks_the_best_honest_cv_for_a_lower_is_better_metric(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    comp, classes, y = _setup(tmp_path, metric="logloss")
    report = ens.run_ensemble(comp)
    cvs = {k: v["cv"] for k, v in report["blends"].items()}
    assert set(cvs) == set(CLASS_BLENDS)
    assert report["chosen"] == min(cvs, key=cvs.get)
    assert report["blends"]["lgbm"]["nested"] and not report["blends"]["mean"]["nested"]
    assert set(report["blends"]["weights"]["weights"]) == {"m0", "m1", "m2"}
    out = pd.read_csv("submissions/submission.csv", dtype=str)
    assert out.columns.tolist() == ["image_id", "label"]
    assert out["image_id"].tolist() == read_sample(comp)["image_id"].tolist()


def test_multilabel_stage_writes_probabilities_per_label(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def to_multilabel(df):
        k = df["label"].str[1].astype(int)
        return df.assign(a=(k != 0).astype(int), b=(k == 1).astype(int)).drop(columns="label")

    def sample(df):
        return df.drop(columns="label").assign(a=0.5, b=0.5)

    comp, classes, y = _setup(tmp_path, edit=to_multilabel, sample=sample, target=["a", "b"], task="multilabel",
                              metric="auc")
    report = ens.run_ensemble(comp, method="logreg")
    assert report["chosen"] == "logreg" and report["format"] == "multilabel_probabilities"
    out = pd.read_csv("submissions/submission.csv")
    assert out.columns.tolist() == ["image_id", "a", "b"]
    assert ((out[["a", "b"]] >= 0) & (out[["a", "b"]] <= 1)).all().all()
    assert not np.allclose(out[["a", "b"]].sum(axis=1), 1.0)  # per label, not renormalised


def test_ordinal_qwk_gets_threshold_variants_and_hard_classes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def to_ordinal(df):
        return df.assign(label=df["label"].str[1])

    comp, classes, y = _setup(tmp_path, edit=to_ordinal, task="ordinal", metric="qwk")
    report = ens.run_ensemble(comp, method="mean")
    assert set(report["blends"]) == {"mean", "mean+thr"}
    assert report["blends"]["mean+thr"]["nested"]
    blend = read_table_file(Path("submissions/blend.test.parquet"))
    if report["chosen"] == "mean+thr":
        assert set(np.unique(blend[classes].to_numpy())) <= {0.0, 1.0}
    assert set(pd.read_csv("submissions/submission.csv", dtype=str)["label"]) <= set(classes)


def test_binary_with_float_sample_writes_positive_probability(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    comp, classes, y = _setup(tmp_path, n_classes=2, task="binary", metric="auc",
                              sample=lambda df: df.assign(label=0.5))
    report = ens.run_ensemble(comp, method="gmean")
    out = pd.read_csv("submissions/submission.csv")
    blend = read_table_file(Path("submissions/blend.test.parquet"))
    assert report["format"] == "positive_probability"
    assert np.allclose(out["label"], blend[classes[1]], atol=1e-6)


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    make_competition(tmp_path, n_train=90, n_test=15, answers="data/tiny-answers.csv")
    run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    comp = load_competition(tmp_path / "competition.yaml", [f"data_dir={tmp_path / 'data' / 'tiny'}"])
    train, test_ids = read_train(comp), read_sample(comp)["image_id"]
    classes = class_names(comp, train)
    y = encode_targets(comp, train, classes)
    md5 = file_md5(tmp_path / "folds" / "folds.csv")
    rng = np.random.default_rng(0)
    answers = pd.read_csv(tmp_path / "data" / "tiny-answers.csv", dtype=str)
    y_test = answers.set_index("image_id").loc[test_ids, "label"].map(classes.index).to_numpy()
    for m, s in enumerate((0.5, 2.0)):
        for split, ids, yy in (("oof", train["image_id"], y), ("test", test_ids, y_test)):
            write_table(tmp_path / "stacking" / f"m{m}.{split}.csv", ids, _noisy(rng, yy, 3, s), classes, "image_id",
                        meta={"folds_md5": md5})

    proc = run_cli("ensemble", "-c", "competition.yaml", cwd=tmp_path)
    assert "**chosen**" in proc.stdout and "CV accuracy" in proc.stdout
    sub = tmp_path / "submissions"
    report = json.loads((sub / "cv.json").read_text())
    md = (sub / "cv.md").read_text()
    assert report["n_models"] == 2 and report["n_classes"] == 3 and report["n_rows"] == 90 and report["n_folds"] == 3
    assert set(report["blends"]) == set(CLASS_BLENDS) and report["chosen"] in report["blends"]
    for name in [*CLASS_BLENDS, "m0", "m1"]:
        assert f"| {name} |" in md
    assert "| test |" in md and report["models"]["m1"]["test"] > report["models"]["m0"]["test"]
    assert report["submission_test"] == report["blends"][report["chosen"]]["test"]
    # the chosen blend's fitted state: it reproduces the blend's test table from the stacking tables
    state = json.loads((sub / "blend.json").read_text())
    assert state["method"] == report["chosen"] and state["models"] == ["m0", "m1"] and state["classes"] == classes
    X_test = blends.stack([pd.read_csv(tmp_path / "stacking" / f"m{m}.test.csv")[classes].to_numpy() for m in (0, 1)])
    again = blends.FittedBlend.from_export(state).predict_proba(X_test, "multiclass")
    assert np.allclose(again, read_table_file(sub / "blend.test.parquet")[classes].to_numpy(), atol=1e-6)
    history = list((sub / "history").glob("*.csv"))
    assert len(history) == 1 and f"_{report['chosen']}_cv" in history[0].name
    assert history[0].read_text() == (sub / "submission.csv").read_text()
    validate_file(sub / "submission.csv", comp)  # raises if invalid

    # unchanged inputs: nothing redone, no new history file; --force or another method reruns
    again = run_cli("ensemble", "-c", "competition.yaml", cwd=tmp_path)
    assert "inputs unchanged" in again.stdout and len(list((sub / "history").glob("*.csv"))) == 1
    assert json.loads((sub / "cv.json").read_text()) == report
    assert "inputs unchanged" not in run_cli("ensemble", "-c", "competition.yaml", "--force", cwd=tmp_path).stdout
    assert "inputs unchanged" not in run_cli("ensemble", "-c", "competition.yaml", "--method", "mean",
                                             cwd=tmp_path).stdout
    assert len(list((sub / "history").glob("*.csv"))) == 3
    run_cli("ensemble", "-c", "competition.yaml", cwd=tmp_path)  # back to auto, for the checks below

    ok = run_cli("validate", "submissions/submission.csv", "-c", "competition.yaml", cwd=tmp_path)
    assert "valid" in ok.stdout
    bad = pd.read_csv(sub / "submission.csv", dtype=str)
    bad.loc[1, "label"] = "c9"
    bad.iloc[1:].to_csv(tmp_path / "bad.csv", index=False)
    proc = run_cli("validate", "bad.csv", "-c", "competition.yaml", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "not a known class" in proc.stderr and "missing" in proc.stderr and "row count" in proc.stderr

    (sub / "submission.csv").unlink()
    (tmp_path / "stacking" / "m0.oof.json").write_text(json.dumps({"folds_md5": "f" * 32}))
    proc = run_cli("ensemble", "-c", "competition.yaml", "--method", "mean", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "m0.oof.csv" in proc.stderr
    assert not (sub / "submission.csv").exists()  # nothing written from stale tables
