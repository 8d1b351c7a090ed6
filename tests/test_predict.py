"""Predictions with TTA, the table contract, and pseudo-label rounds."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.config import ConfigError
from pipeline.core.data import DataError
from pipeline.artifacts.tables import TableError, read_table, write_table
from pipeline.nn.tta import PRESETS, VIEWS, expand, get_view, merge
from tests.conftest import REPO, make_competition, run_cli, train_tiny, read_table_file

# --- TTA views ------------------------------------------------------------------------------------

X = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)


@pytest.mark.parametrize("name", ["hflip", "vflip", "transpose", "rot180", "antitranspose"])
def test_involutions_are_exact(name):
    view = get_view(name)
    assert not torch.equal(view(X), X)
    assert torch.equal(view(view(X)), X)


def test_rotations_compose_exactly():
    r90, r270 = get_view("rot90"), get_view("rot270")
    assert torch.equal(r270(r90(X)), X)
    assert torch.equal(r90(r90(r90(r90(X)))), X)
    assert torch.equal(get_view("rot180")(X), r90(r90(X)))


def test_d4_gives_eight_distinct_views():
    views = expand("d4")
    assert len(views) == 8
    outs = {tuple(get_view(v)(X).flatten().tolist()) for v in views}
    assert len(outs) == 8


def test_scale_view_and_unknown_views():
    for factor in ("0.5", "0.9", "1.1", "2"):
        assert get_view(f"scale:{factor}")(X).shape == X.shape  # zoom keeps the input size
    assert torch.equal(get_view("scale:2")(X)[..., 1:3, 1:3], torch.nn.functional.interpolate(
        X, size=(8, 8), mode="bilinear", align_corners=False)[..., 3:5, 3:5])
    assert not torch.equal(get_view("scale:0.5")(X), X)
    assert expand(["none", "d4", "hflip"])[:2] == ["none", "rot90"] and len(expand(["none", "d4", "hflip"])) == 8
    for bad in ("hflop", "scale:x", "scale:10"):
        with pytest.raises(ConfigError, match="unknown view"):
            expand([bad])
    assert set(PRESETS["flips"]) <= set(VIEWS)


def test_pool_linear_model_is_invariant_to_d4():
    """Global average pooling then a linear head: every D4 view must give the same logits."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(1, 3))
    x = torch.randn(5, 1, 6, 6)
    base = model(x)
    for name in expand("d4"):
        assert torch.allclose(model(get_view(name)(x)), base, atol=1e-6), name


# --- TTA merges -----------------------------------------------------------------------------------


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_merges_match_hand_computation():
    logits = np.array([[[2.0, 0.0]], [[0.0, 2.0]], [[1.0, 1.0]]])  # 3 views, 1 row, 2 classes
    p = softmax(logits)
    assert np.allclose(merge(logits, "mean", "multiclass"), p.mean(axis=0))
    g = np.exp(np.log(p).mean(axis=0))
    assert np.allclose(merge(logits, "gmean", "multiclass"), g / g.sum())
    assert np.allclose(merge(logits, "logit_mean", "multiclass"), softmax(logits.mean(axis=0)))
    m = p.max(axis=0)
    assert np.allclose(merge(logits, "max", "multiclass"), m / m.sum())
    sig = 1 / (1 + np.exp(-logits))
    assert np.allclose(merge(logits, "mean", "multilabel"), sig.mean(axis=0))


@pytest.mark.parametrize("how", ["mean", "gmean", "logit_mean", "max"])
@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_merges_are_finite_on_huge_logits(how, task):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 10, 5)) * 1e5  # float32 softmax of these would overflow
    p = merge(logits.astype(np.float32), how, task)
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    if task == "multiclass":
        assert np.allclose(p.sum(axis=1), 1)


# --- tables ---------------------------------------------------------------------------------------


def test_table_refusals(tmp_path):
    ids, classes = ["a", "b", "c"], ["x", "y"]
    p = np.array([[0.2, 0.8], [0.5, 0.5], [1.0, 0.0]])
    path = write_table(tmp_path / "m.oof.csv", ids, p, classes, "id", meta={"folds_md5": "abc"})
    assert np.allclose(read_table(path, "id", classes, ids, "abc").to_numpy(), p)
    with pytest.raises(TableError, match="another folds.csv"):
        read_table(path, "id", classes, ids, "zzz")
    with pytest.raises(TableError, match="1 missing"):
        read_table(path, "id", classes, ids + ["d"])
    with pytest.raises(TableError, match="class column"):
        read_table(path, "id", ["x", "y", "z"])
    df = pd.read_csv(path, dtype={"id": str})
    pd.concat([df, df.iloc[[0]]]).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(TableError, match="repeated id"):
        read_table(tmp_path / "dup.csv", "id", classes)
    df.assign(x=[0.1, np.nan, 0.3]).to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(TableError, match="NaN"):
        read_table(tmp_path / "nan.csv", "id", classes)


# --- end to end on a tiny competition ------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pred")
    proc = train_tiny(root, n_train=60, n_test=15, model={"epochs": 1, "tta": ["none", "hflip"]})
    return root, proc


@pytest.mark.slow
def test_oof_covers_every_id_once_and_test_is_fold_mean(trained):
    from pipeline.nn.augment import build_transform
    from pipeline.nn.infer import load_fold_model, to_proba

    root, proc = trained
    train = pd.read_csv(root / "data/tiny/train.csv", dtype=str)
    sample = pd.read_csv(root / "data/tiny/sample_submission.csv", dtype=str)
    oof = read_table_file(root / "stacking/tiny.oof.parquet")
    test = read_table_file(root / "stacking/tiny.test.parquet")
    assert oof.image_id.is_unique and sorted(oof.image_id) == sorted(train.image_id)
    assert test.image_id.tolist() == sample.image_id.tolist()
    assert list(oof.columns) == ["image_id", "c0", "c1", "c2"]
    meta = json.loads((root / "stacking/tiny.oof.json").read_text())
    assert len(meta["per_fold"]) == 3 and 0 <= meta["cv"] <= 1 and meta["tta"] == ["none", "hflip"]
    assert "accuracy" in proc.stdout and "folds" in proc.stdout

    # Recompute the test table by hand: each fold's model, mean of none + hflip, then mean over folds.
    paths = [root / "data/tiny/test" / f"{i}.png" for i in sample.image_id]
    per_fold = []
    for k in range(3):
        model, cfg, ckpt = load_fold_model(root / f"runs/tiny/fold{k}")
        d = ckpt["data_config"]
        tf = build_transform("none", d["img_size"], d["mean"], d["std"], d["interpolation"], False, train=False)
        x = torch.stack([tf(image=__import__("cv2").imread(str(p), 0))["image"] for p in paths])
        with torch.no_grad():
            plain, flipped = model.eval()(x), model(x.flip(-1))
        per_fold.append((to_proba(plain.numpy(), "multiclass") + to_proba(flipped.numpy(), "multiclass")) / 2)
    assert np.allclose(test[["c0", "c1", "c2"]].to_numpy(), np.mean(per_fold, axis=0), atol=1e-5)


@pytest.mark.slow
def test_predict_skips_when_up_to_date_and_refuses_untrained(trained):
    root, _ = trained
    assert "up to date" in run_cli("predict", "-c", "competition.yaml", cwd=root).stdout
    proc = run_cli("predict", "-c", "competition.yaml", "--models", "ghost", cwd=root, check=False)
    assert proc.returncode == 2 and "not trained" in proc.stderr
    proc = run_cli("predict", "-c", "competition.yaml", "lr=3", cwd=root, check=False)
    assert proc.returncode == 2 and "only tta and tta_merge" in proc.stderr


@pytest.mark.slow
def test_predict_without_tta_under_another_name(trained):
    root, _ = trained
    run_cli("predict", "-c", "competition.yaml", "--models", "tiny", "--name", "tiny-notta", "tta=none", cwd=root)
    meta = json.loads((root / "stacking/tiny-notta.oof.json").read_text())
    assert meta["tta"] == ["none"]
    a = read_table_file(root / "stacking/tiny.oof.parquet").iloc[:, 1:].to_numpy()
    b = read_table_file(root / "stacking/tiny-notta.oof.parquet").iloc[:, 1:].to_numpy()
    assert not np.allclose(a, b)


# --- pseudo-labels --------------------------------------------------------------------------------


def test_select_pseudo_threshold_caps_and_top_frac_balances():
    from pipeline.predict.predict import select_pseudo

    proba = pd.DataFrame(
        [[0.99, 0.01], [0.98, 0.02], [0.97, 0.03], [0.96, 0.04], [0.03, 0.97], [0.6, 0.4], [0.45, 0.55]],
        columns=["a", "b"], index=pd.Index(list("pqrstuv"), name="id"),
    )
    chosen = select_pseudo(proba, "multiclass", threshold=0.95)
    assert set(chosen) == set("pqrst")
    capped = select_pseudo(proba, "multiclass", threshold=0.95, prior=pd.Series({"a": 0.4, "b": 0.6}))
    assert set(capped) == {"p", "q", "r", "t"}  # class a limited to ceil(1.5 * 0.4 * 5) = 3 rows
    top = select_pseudo(proba, "multiclass", top_frac=0.5)
    assert set(top) == {"p", "q", "t"}  # half of the 5 'a' rows (2), half of the 2 'b' rows (1)
    with pytest.raises(ConfigError):
        select_pseudo(proba, "multiclass")


def test_pseudo_rows_train_only(tmp_path):
    from pipeline.core.config import load_competition
    from pipeline.artifacts.folds import read_folds
    from pipeline.train.folddata import fold_data

    make_competition(tmp_path, n_train=30, n_test=10)
    run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    sample = pd.read_csv(tmp_path / "data/tiny/sample_submission.csv", dtype=str)
    pseudo = pd.DataFrame({"image_id": sample.image_id[:4], "c0": 0.1, "c1": 0.7, "c2": 0.2})
    pseudo.to_csv(tmp_path / "pseudo.csv", index=False)
    comp = load_competition(tmp_path / "competition.yaml")
    comp.data_dir = tmp_path / "data/tiny"
    folds = read_folds(tmp_path / "folds/folds.csv", "image_id")
    test_paths = {comp.image_path("test", i) for i in pseudo.image_id}
    for k in range(3):
        data = fold_data(comp, tmp_path / "folds/folds.csv", k, str(tmp_path / "pseudo.csv"))
        assert test_paths <= set(data.train_paths)
        assert not test_paths & set(data.val_paths)
        assert len(data.val_ids) == (folds.fold == k).sum()
        assert np.allclose(data.train_targets[-4:], [0.1, 0.7, 0.2])  # soft labels kept
    pd.DataFrame({"image_id": ["not-a-test-id"], "label": ["c0"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="not test rows"):
        fold_data(comp, tmp_path / "folds/folds.csv", 0, str(tmp_path / "bad.csv"))


@pytest.mark.slow
def test_pseudo_round_end_to_end_with_make(trained):
    root, _ = trained
    make = ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "COMPETITION=competition.yaml"]
    proc = subprocess.run([*make, "pseudo", "MODEL=tiny", "TOP_FRAC=0.5"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pseudo = pd.read_csv(root / "folds/pseudo.csv", dtype=str)
    assert list(pseudo.columns) == ["image_id", "label"] and len(pseudo) > 0
    proc = subprocess.run([*make, "predict", "PSEUDO=folds/pseudo.csv"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all((root / f"runs/tiny-pseudo/fold{k}/done.json").is_file() for k in range(3))
    oof = read_table_file(root / "stacking/tiny-pseudo.oof.parquet")
    train = pd.read_csv(root / "data/tiny/train.csv", dtype=str)
    assert sorted(oof.image_id) == sorted(train.image_id)  # OOF rows stay the original training rows
    assert (root / "stacking/tiny.oof.parquet").is_file()  # round 0 kept beside it


@pytest.mark.slow
def test_pseudo_refusals(trained):
    root, _ = trained
    make = ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "COMPETITION=competition.yaml"]
    proc = subprocess.run([*make, "pseudo", "MODEL=tiny", "THRESHOLD=1.01"], cwd=root, capture_output=True, text=True)
    assert proc.returncode != 0 and "no test row" in proc.stderr
    table = read_table_file(root / "stacking/tiny.test.parquet")
    table.to_csv(root / "ranked.csv", index=False)
    (root / "ranked.json").write_text(json.dumps({"method": "rank"}))
    proc = run_cli("pseudo", "-c", "competition.yaml", "--source", "ranked.csv", "--threshold", "0.5",
                   cwd=root, check=False)
    assert proc.returncode == 2 and "TOP_FRAC" in proc.stderr
    proc = run_cli("pseudo", "-c", "competition.yaml", "--source", "ranked.csv", "--out", "p.csv", cwd=root)
    assert len(pd.read_csv(root / "p.csv")) > 0  # rank scores default to the top fraction per class
    (root / "empty.csv").write_text("image_id,label\n")
    proc = run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", "0", "--pseudo", "empty.csv",
                   cwd=root, check=False)
    assert proc.returncode == 2 and "no pseudo-labelled rows" in proc.stderr
