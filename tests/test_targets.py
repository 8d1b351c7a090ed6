"""Targets beyond one label per row: tags, regression and top-k, through the reading, fold, blend and
submission code; and outputs of one competition refused by another."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.blend.blends import FittedBlend, candidate_names, make_blend, stack
from pipeline.core.config import ConfigError, load_competition
from pipeline.core.data import DataError, class_names, encode_targets, read_answers, read_train
from pipeline.blend.submission import SubmissionError, check_submission, infer_format, make_submission, write_submission
from tests.conftest import make_competition, run_cli, write_yaml


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # competition paths are relative to the working folder


def retarget(root, column: str, values, **config):
    """Give data/tiny/train.csv a new target column and point competition.yaml at it."""
    path = root / "data" / "tiny" / "train.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df[column] = values if not callable(values) else values(len(df))
    df.to_csv(path, index=False)
    cfg = load_competition(root / "competition.yaml").model_dump(mode="json")
    cfg.update({"target": column, "metric": None, **config})
    cfg = {k: v for k, v in cfg.items() if v is not None}  # null keys take their defaults (the task's metric)
    write_yaml(root / "competition.yaml", cfg)
    return load_competition(root / "competition.yaml")


def cycle(values, n):
    return [values[i % len(values)] for i in range(n)]


# --- tags ---------------------------------------------------------------------------------------------


def test_tags_classes_are_the_union_and_encode_as_a_matrix(tmp_path):
    make_competition(tmp_path)
    comp = retarget(tmp_path, "tags", lambda n: cycle(["cloud haze", "haze", "water  cloud", "primary"], n),
                    task="multilabel", metric="f1_samples")
    assert comp.is_tags
    train = read_train(comp)
    classes = class_names(comp, train)
    assert classes == ["cloud", "haze", "primary", "water"]
    y = encode_targets(comp, train, classes)
    assert y[:4].tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 1], [0, 0, 1, 0]]  # a doubled space is one


def test_tags_with_another_separator_and_a_row_without_labels(tmp_path):
    make_competition(tmp_path)
    comp = retarget(tmp_path, "tags", lambda n: cycle(["a|b", "b"], n), task="multilabel", label_sep="|",
                    metric="f1_micro")
    assert class_names(comp, read_train(comp)) == ["a", "b"]
    comp = retarget(tmp_path, "tags", lambda n: [" | "] + cycle(["a|b"], n - 1), task="multilabel", label_sep="|",
                    metric="f1_micro")
    with pytest.raises(DataError, match=r"holds no label .* line\(s\) 2"):
        read_train(comp)


def test_tags_submission_writes_labels_at_or_above_half_and_is_checked(tmp_path):
    make_competition(tmp_path)
    comp = retarget(tmp_path, "tags", lambda n: cycle(["x y", "y", "z"], n), task="multilabel", metric="f1_samples")
    sample = pd.DataFrame({"image_id": ["a", "b"], "tags": ["x", "x"]})
    classes = ["x", "y", "z"]
    fmt = infer_format(comp, sample, classes)
    assert fmt.kind == "tags"
    df = make_submission(fmt, sample, classes, ["b", "a"], np.array([[0.2, 0.5, 0.9], [0.7, 0.1, 0.49]]))
    assert df["tags"].tolist() == ["x", "y z"]  # rows in the sample's order, labels in class order
    bad = df.assign(tags=["x w", "y y"])
    reasons = check_submission(bad, fmt, sample, classes, comp.task)
    assert any("'w'" in r or "w" in r and "not a known class" in r for r in reasons)
    assert any("repeated" in r for r in reasons)


# --- top-k ------------------------------------------------------------------------------------------------


def test_topk_writes_the_k_best_classes_best_first(tmp_path):
    make_competition(tmp_path, n_classes=4, submission_format="topk", k=2, metric="map@k")
    comp = load_competition(tmp_path / "competition.yaml")
    sample = pd.DataFrame({"image_id": ["a", "b"], "label": ["c0", "c0"]})
    classes = ["c0", "c1", "c2", "c3"]
    fmt = infer_format(comp, sample, classes)
    assert (fmt.kind, fmt.k) == ("topk", 2)
    df = make_submission(fmt, sample, classes, ["a", "b"], np.array([[0.1, 0.2, 0.6, 0.1], [0.5, 0.3, 0.1, 0.1]]))
    assert df["label"].tolist() == ["c2 c1", "c0 c1"]
    too_many = df.assign(label=["c2 c1 c0", ""])
    reasons = check_submission(too_many, fmt, sample, classes, comp.task)
    assert any("without 1 to k=2 labels" in r and "2 row(s)" in r for r in reasons)


def test_topk_needs_a_single_label_task(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"data_dir": "d", "target": ["a", "b"], "task": "multilabel",
                                            "submission_format": "topk", "metric": "f1_micro"})
    with pytest.raises(ConfigError, match="topk needs a single-label task"):
        load_competition(path)


# --- regression -------------------------------------------------------------------------------------------


def test_regression_targets_read_as_numbers_and_refuse_text(tmp_path):
    make_competition(tmp_path)
    comp = retarget(tmp_path, "score", lambda n: [f"{v:.2f}" for v in np.linspace(0, 100, n)], task="regression")
    assert comp.metric == "rmse"  # the task's default
    train = read_train(comp)
    assert class_names(comp, train) == ["score"]
    y = encode_targets(comp, train, ["score"])
    assert y.shape == (len(train), 1) and y[-1, 0] == pytest.approx(100)
    comp = retarget(tmp_path, "score", lambda n: ["1.5", "n/a"] + ["2"] * (n - 2), task="regression")
    with pytest.raises(DataError, match=r"must be finite numbers; line\(s\) 3"):
        read_train(comp)


def test_regression_metric_and_task_must_fit(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"data_dir": "d", "target": "y", "task": "regression", "metric": "accuracy"})
    with pytest.raises(ConfigError) as e:
        load_competition(path)
    assert "key 'metric'" in str(e.value) and "rmse" in str(e.value)


def test_regression_folds_are_stratified_on_quantile_bins(tmp_path):
    make_competition(tmp_path, n_train=60, n_folds=3)
    rng = np.random.default_rng(0)
    retarget(tmp_path, "score", lambda n: [f"{v:.3f}" for v in rng.exponential(10, n)], task="regression")
    run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    folds = pd.read_csv(tmp_path / "folds" / "folds.csv", dtype={"image_id": str})
    train = pd.read_csv(tmp_path / "data" / "tiny" / "train.csv", dtype={"image_id": str})
    merged = train.merge(folds, on="image_id")
    top = merged.nlargest(15, "score")  # the largest values spread over every fold
    assert top["fold"].value_counts().min() >= 4


def test_regression_blends_learn_predict_and_export(tmp_path):
    make_competition(tmp_path)
    comp = retarget(tmp_path, "score", lambda n: [str(v) for v in range(n)], task="regression")
    metric = comp.scoring()
    names = candidate_names("auto", metric)
    assert names == ["mean", "median", "weights", "weights_scipy", "lgbm", "ridge"]
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 100, (200, 1))
    good, noisy = y + rng.normal(0, 2, y.shape), y + rng.normal(0, 20, y.shape)
    X = stack(np.stack([good, noisy]))
    for name in names:
        est = make_blend(name, "regression", 1, metric, seed=0).fit(X, y)
        pred = est.predict(X)
        assert pred.shape == (200, 1)
        again = FittedBlend.from_export(json.loads(json.dumps(FittedBlend(name, True, [est]).export())))
        np.testing.assert_allclose(again.predict_proba(X, "regression"), pred)
    weights = make_blend("weights", "regression", 1, metric).fit(X, y).weights_
    assert weights[0] > weights[1]  # the accurate model weighs more


def test_label_thresholds_lift_f1_and_survive_export(tmp_path):
    make_competition(tmp_path)
    comp = retarget(tmp_path, "tags", lambda n: cycle(["x y", "y"], n), task="multilabel", metric="f1_samples")
    metric = comp.scoring()
    assert "mean+thr" in candidate_names("auto", metric)
    rng = np.random.default_rng(1)
    y = (rng.random((300, 3)) < [0.1, 0.5, 0.3]).astype(int)
    p = np.clip(0.25 * y + rng.uniform(0, 0.3, y.shape), 0, 1)  # positives sit below 0.5: cut at 0.5, f1 is 0
    X = stack(p[None])
    plain = make_blend("mean", "multilabel", 3, metric).fit(X, y)
    tuned = make_blend("mean+thr", "multilabel", 3, metric).fit(X, y)
    assert metric.score(y, tuned.predict_proba(X)) > metric.score(y, plain.predict_proba(X)) + 0.3
    again = FittedBlend.from_export(json.loads(json.dumps(FittedBlend("mean+thr", True, [tuned]).export())))
    np.testing.assert_allclose(again.predict_proba(X, "multilabel"), tuned.predict_proba(X))


def test_values_submission_writes_numbers_and_refuses_nan(tmp_path):
    make_competition(tmp_path)
    comp = retarget(tmp_path, "score", lambda n: [str(v) for v in range(n)], task="regression")
    sample = pd.DataFrame({"image_id": ["a", "b"], "score": ["0", "0"]})
    fmt = infer_format(comp, sample, ["score"])
    assert fmt.kind == "values"
    df = make_submission(fmt, sample, ["score"], ["a", "b"], np.array([[123.5], [-4.0]]))
    assert df["score"].tolist() == [123.5, -4.0]  # any number, not a probability
    with pytest.raises(SubmissionError, match="NaN"):
        write_submission(tmp_path / "s.csv", df.assign(score=[1.0, np.nan]), fmt, sample, ["score"], comp.task)


def test_answers_for_tags_are_read_like_train(tmp_path):
    make_competition(tmp_path)
    comp = retarget(tmp_path, "tags", lambda n: cycle(["x y", "y"], n), task="multilabel", metric="f1_samples",
                    answers="answers.csv")
    pd.DataFrame({"image_id": ["t1", "t2"], "tags": ["y", "x y"]}).to_csv(tmp_path / "answers.csv", index=False)
    y = read_answers(comp, ["x", "y"], ["t2", "t1"])
    assert y.tolist() == [[1, 1], [0, 1]]


# --- two competitions in one folder --------------------------------------------------------------------


@pytest.mark.slow
def test_outputs_of_another_competition_are_refused(tmp_path):
    make_competition(tmp_path)
    run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    other = load_competition(tmp_path / "competition.yaml").model_dump(mode="json")
    other.update(target="other", data_dir="data/tiny")
    train = tmp_path / "data" / "tiny" / "train.csv"
    df = pd.read_csv(train, dtype=str, keep_default_na=False)
    df["other"] = df["label"]
    df.to_csv(train, index=False)
    write_yaml(tmp_path / "other.yaml", {k: v for k, v in other.items() if v is not None})
    before = (tmp_path / "folds" / "folds.csv").read_text()
    proc = run_cli("folds", "-c", "other.yaml", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "belongs to another competition" in proc.stderr and "target" in proc.stderr
    assert (tmp_path / "folds" / "folds.csv").read_text() == before  # the first competition's folds are kept
    proc = run_cli("ensemble", "-c", "other.yaml", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "belongs to another competition" in proc.stderr
