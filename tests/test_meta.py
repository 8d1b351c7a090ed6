"""Per-image metadata (competition keys meta_cols, test_csv) beside the models' probabilities in the stackers:
a better CV when a metadata column carries part of the label, cv.md naming the features, blend.json
reproducing blend.test as the Kaggle kernel computes it, and bad keys refused naming the file and columns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.artifacts.tables import find_table, read_table
from pipeline.blend.blends import FittedBlend, stack
from pipeline.core.config import load_competition
from tests.conftest import make_competition, run_cli, write_yaml

SITES = np.array(["north", "south", "east"])


def _probs(rng, y: np.ndarray, strength: float) -> np.ndarray:
    z = rng.normal(size=(len(y), 3))
    z[np.arange(len(y)), y] += strength
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def _metadata(rng, ids, y: np.ndarray) -> pd.DataFrame:
    """site: the class's site 70% of the time (text: categorical); age: a number, 10% blank; sex: noise."""
    site = np.where(rng.random(len(y)) < 0.7, SITES[y], SITES[rng.integers(0, 3, len(y))])
    age = np.round(30 + 10 * y + rng.normal(0, 6, len(y)), 1).astype(str)
    age[rng.random(len(y)) < 0.1] = ""
    return pd.DataFrame({"image_id": ids, "site": site, "age": age, "sex": rng.choice(["F", "M"], len(y))})


def _project(root: Path) -> None:
    """A 3-class competition, two weak models' tables of our own in stacking/, metadata in train.csv and
    data/tiny/test.csv, and two configs: competition.yaml (no metadata) and meta.yaml (meta_cols)."""
    make_competition(root, n_train=300, n_test=60, size=4)
    run_cli("folds", "-c", "competition.yaml", "--no-decode", cwd=root)
    data = root / "data" / "tiny"
    train = pd.read_csv(data / "train.csv", dtype=str, keep_default_na=False)
    test_ids = pd.read_csv(data / "sample_submission.csv", dtype=str)["image_id"]
    y = train["label"].str[1:].astype(int).to_numpy()
    y_test = np.arange(len(test_ids)) % 3
    rng = np.random.default_rng(0)
    meta = _metadata(rng, train["image_id"], y)
    train.merge(meta, on="image_id").to_csv(data / "train.csv", index=False)
    _metadata(rng, test_ids, y_test).to_csv(data / "test.csv", index=False)
    (root / "stacking").mkdir()
    for m in range(2):
        for part, ids, labels in (("oof", train["image_id"], y), ("test", test_ids, y_test)):
            df = pd.DataFrame(_probs(rng, labels, 0.8), columns=["c0", "c1", "c2"])
            df.insert(0, "image_id", ids.to_numpy())
            df.to_csv(root / "stacking" / f"m{m}.{part}.csv", index=False, float_format="%.7g")
    cfg = {"data_dir": "data/tiny", "id_col": "image_id", "target": "label", "task": "multiclass",
           "metric": "logloss", "n_folds": 3, "seed": 0}
    write_yaml(root / "competition.yaml", cfg)
    write_yaml(root / "meta.yaml", {**cfg, "meta_cols": ["site", "age", "sex"], "test_csv": "test.csv"})


def _ensemble(root: Path, config: str, method: str, out: str) -> dict:
    run_cli("ensemble", "-c", config, "--method", method, "--out", out, cwd=root)
    return json.loads((root / out / "cv.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lgbm", "logreg", "catboost"])
def test_metadata_that_carries_the_label_improves_the_stacker_and_the_kernel_reproduces_it(tmp_path, method,
                                                                                          monkeypatch):
    _project(tmp_path)
    plain = _ensemble(tmp_path, "competition.yaml", method, "plain")
    meta = _ensemble(tmp_path, "meta.yaml", method, "withmeta")
    cv_plain, cv_meta = plain["blends"][method]["cv"], meta["blends"][method]["cv"]
    print(f"{method}: CV logloss without metadata {cv_plain:.5f}, with {cv_meta:.5f}")
    assert cv_meta < cv_plain - 0.05  # logloss: lower is better; site carries 70% of the label
    text = (tmp_path / "withmeta" / "cv.md").read_text()
    assert f"- {method}: 2 models' probabilities + meta site, age, sex" in text
    assert f"- {method}: 2 models' probabilities\n" in (tmp_path / "plain" / "cv.md").read_text()

    # the kernel's way: the exported state + the test table's metadata gives blend.test again
    monkeypatch.chdir(tmp_path)
    comp = load_competition("meta.yaml")
    state = json.loads(Path("withmeta/blend.json").read_text())
    assert state["meta"]["kinds"] == ["cat", "num", "cat"] and state["meta"]["values"]["site"] == sorted(SITES)
    blend = FittedBlend.from_export(state)
    classes = ["c0", "c1", "c2"]
    test_ids = pd.read_csv(comp.sample_submission_path, dtype=str)["image_id"].tolist()
    P = np.stack([read_table(find_table(Path("stacking"), f"m{m}.test"), "image_id", classes, test_ids).to_numpy()
                  for m in range(2)])
    ours = blend.predict_proba(blend.with_meta(stack(P), comp, test_ids), comp.task)
    written = read_table(find_table(Path("withmeta"), "blend.test"), "image_id", classes, test_ids).to_numpy()
    assert np.allclose(ours, written, atol=1e-6)
    assert not np.allclose(blend.predict_proba(np.hstack([stack(P), np.zeros((len(P[0]), 3))]), comp.task),
                           written, atol=1e-3)  # the metadata matters to the test prediction


@pytest.mark.slow
def test_blends_without_features_ignore_metadata(tmp_path):
    _project(tmp_path)
    plain = _ensemble(tmp_path, "competition.yaml", "mean", "plain")
    meta = _ensemble(tmp_path, "meta.yaml", "mean", "withmeta")
    assert plain["blends"]["mean"]["cv"] == meta["blends"]["mean"]["cv"]
    assert "meta" not in json.loads((tmp_path / "withmeta" / "blend.json").read_text())
    assert "Stacker features" not in (tmp_path / "withmeta" / "cv.md").read_text()


def _refused(root: Path, config: dict) -> str:
    write_yaml(root / "bad.yaml", {**json.loads(json.dumps(load_competition(root / "meta.yaml").model_dump(
        mode="json"))), "data_dir": "data/tiny", **config})
    proc = run_cli("ensemble", "-c", "bad.yaml", "--method", "lgbm", "--out", "bad", cwd=root, check=False)
    assert proc.returncode != 0
    return re.sub(r"\s+", " ", proc.stdout + proc.stderr)


@pytest.mark.slow
def test_bad_meta_cols_are_refused_naming_the_file_and_columns(tmp_path):
    _project(tmp_path)
    out = _refused(tmp_path, {"meta_cols": ["site", "label"]})
    assert "bad.yaml" in out and "meta_cols" in out and "label: the id or target column, not metadata" in out
    out = _refused(tmp_path, {"meta_cols": ["site", "height", "weight"]})
    assert "data/tiny/train.csv has no column(s) height, weight" in out
    out = _refused(tmp_path, {"meta_cols": ["site"], "test_csv": None})  # the sample submission lacks it
    assert "data/tiny/sample_submission.csv has no column(s) site" in out and "set the competition key test_csv" in out
    pd.read_csv(tmp_path / "data/tiny/test.csv").drop(columns="age").to_csv(tmp_path / "data/tiny/test.csv",
                                                                           index=False)
    out = _refused(tmp_path, {})
    assert "data/tiny/test.csv has no column(s) age" in out


def test_projects_without_metadata_keep_their_competition_hash(tmp_path):
    from pipeline.core.config import config_hash

    make_competition(tmp_path)
    comp = load_competition(tmp_path / "competition.yaml")
    assert "meta_cols" not in comp.model_dump() and "test_csv" not in comp.model_dump()
    assert config_hash(comp) == config_hash(comp.model_copy(update={"meta_cols": None}))


@pytest.mark.parametrize("name", ["lgbm", "catboost"])
def test_per_class_stackers_take_metadata_and_round_trip(name):
    """At many classes the candidate formulation gets each row's metadata beside every candidate's features."""
    from pipeline.blend.blends import import_blend_state, make_blend

    rng = np.random.default_rng(1)
    n, C = 400, 6
    y = np.arange(n) % C
    P = np.stack([_probs6(rng, y, C) for _ in range(2)])
    site = np.where(rng.random(n) < 0.8, y % 3, rng.integers(0, 3, n)).astype(float)
    site[:10] = np.nan
    M = np.column_stack([site, rng.normal(size=n)])
    est = make_blend(name, "multiclass", C, "logloss", 0).set_params(formulation="per_class", meta_kinds=("cat", "num"))
    X = np.hstack([stack(P), M])
    est.fit(X, y)
    back = import_blend_state(json.loads(json.dumps(est.export_state())))
    assert np.allclose(back.predict_proba(X), est.predict_proba(X), atol=1e-12)
    assert est.n_features_in_ == 2 * C + 2


def _probs6(rng, y, C):
    z = rng.normal(size=(len(y), C))
    z[np.arange(len(y)), y] += 0.8
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def test_check_names_missing_meta_cols(tmp_path):
    make_competition(tmp_path, meta_cols=["site", "age"], models_dir="models")
    proc = run_cli("check", "-c", "competition.yaml", cwd=tmp_path, check=False)
    out = re.sub(r"\s+", " ", proc.stdout + proc.stderr)
    assert proc.returncode != 0
    assert "competition key meta_cols: data/tiny/train.csv has no column(s) site, age" in out
    assert "data/tiny/sample_submission.csv has no column(s) site, age; set the competition key test_csv" in out
