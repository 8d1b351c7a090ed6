"""The metadata head (model key meta_head): each image's metadata (competition key meta_cols) through an MLP
joined to the pooled features. Its coding against numpy, a model that keeps timm's shape and round-trips,
refusals that name the file and key, and, through Make, a competition whose images carry nothing and whose
metadata carries the label: the head learns it, predict and the offline kernel give the same submission."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from pipeline.core.config import load_competition
from pipeline.core.errors import ConfigError
from pipeline.core.meta import MetaEncoding
from pipeline.nn.infer import model_from_state
from pipeline.nn.metahead import WIDTH, MetaMLP, has_meta_head
from pipeline.nn.models import ModelConfig, build_model, head_parameter_names, stamp_exclusions
from pipeline.tools.report import grad_cam
from pipeline.train.folddata import fold_data
from tests.conftest import REPO, TINY_MODEL, make_competition, run_cli, write_yaml
from tests.test_extra_data import EXTRA_KEYS, write_extra
from tests.test_package import same_submission

MAKE = ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "COMPETITION=competition.yaml"]
ENC = MetaEncoding(["age", "site"], ["num", "cat"], {"site": ["east", "north", "south"]})
CODED = np.array([[20, 0], [40, 2], [np.nan, 1], [60, np.nan]], dtype=np.float32)  # as ENC codes a table


def test_numbers_are_standardised_with_a_missing_flag_and_categories_one_hot():
    mlp = MetaMLP(["num", "cat"], [3]).fit(CODED)
    f = mlp.features(torch.as_tensor(CODED)).numpy()
    filled = np.array([20, 40, 40, 60.0])  # the training rows' median (40) fills the blank
    np.testing.assert_allclose(f[:, 0], (filled - filled.mean()) / filled.std(), rtol=1e-5)
    assert f[:, 1].tolist() == [0, 0, 1, 0]
    np.testing.assert_array_equal(f[:, 2:], [[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 0]])  # blank: all zeros
    assert mlp.features(torch.tensor([[30.0, 7.0]]))[0, 2:].tolist() == [0, 0, 0]  # a code train never had
    constant = MetaMLP(["num"], []).fit(np.full((3, 1), 5.0))
    assert constant.features(torch.tensor([[5.0]]))[0].tolist() == [0, 0]  # std 1, not a division by zero


def test_a_meta_head_model_keeps_timm_shape_needs_its_metadata_and_round_trips():
    cfg = ModelConfig.model_validate({**TINY_MODEL, "meta_head": True})
    plain = build_model(cfg.model_copy(update={"meta_head": False}), 3)
    model = build_model(cfg, 3, meta=ENC.export())
    assert has_meta_head(model) and isinstance(model, type(plain)) and not has_meta_head(plain)
    assert model.get_classifier().in_features == plain.get_classifier().in_features + WIDTH
    assert {n for n in head_parameter_names(model) if n.startswith("meta_mlp.")}  # the head's lr
    model.meta_mlp.fit(CODED)
    model.eval()
    x, coded = torch.randn(4, 1, 16, 16), torch.as_tensor(CODED)
    with pytest.raises(ValueError, match="meta_head"):
        model(x)
    out = model(x, coded)
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    assert not torch.allclose(out, model(x, coded[[1, 0, 3, 2]]))  # the metadata moves the logits
    again = model_from_state(cfg, 3, model.state_dict(), torch.device("cpu"), ENC.export())
    torch.testing.assert_close(again(x, coded), out)  # the fitted statistics travel in the state dict
    with pytest.raises(ConfigError, match="meta_head"):
        build_model(cfg, 3)  # a meta_head model is built with its encoding
    cam, _ = grad_cam(model, x[:1], meta=coded[:1])
    assert cam.shape == (16, 16) and np.isfinite(cam).all()


def test_meta_head_refuses_mixup_and_keeps_old_hashes_at_its_default():
    with pytest.raises(ValidationError, match="key 'meta_head': does not combine with mixup or cutmix"):
        ModelConfig.model_validate({**TINY_MODEL, "meta_head": True, "cutmix": 1.0})
    assert "meta_head" in stamp_exclusions(ModelConfig.model_validate(TINY_MODEL))
    assert "meta_head" not in stamp_exclusions(ModelConfig.model_validate({**TINY_MODEL, "meta_head": True}))


SITES = np.array(["north", "south", "east"])


def _metadata(rng, ids, y: np.ndarray) -> pd.DataFrame:
    """site: the class's site 90% of the time (text: categorical); age: noise, 20% blank."""
    site = np.where(rng.random(len(y)) < 0.9, SITES[y], SITES[rng.integers(0, 3, len(y))])
    age = np.round(40 + rng.normal(0, 8, len(y)), 1).astype(str)
    age[rng.random(len(y)) < 0.2] = ""
    return pd.DataFrame({"image_id": ids, "site": site, "age": age})


def _project(root: Path, extra: bool = False) -> None:
    """Random-noise images (nothing to learn from them), metadata whose site carries the label, in train.csv and
    data/tiny/test.csv; models `plain` and `withmeta` (meta_head: true); `extra`: and an extra table."""
    make_competition(root, n_train=150, n_test=30, models_dir="models", meta_cols=["site", "age"],
                     test_csv="test.csv", **(EXTRA_KEYS if extra else {}))
    if extra:
        write_extra(root)
    data = root / "data" / "tiny"
    train = pd.read_csv(data / "train.csv", dtype=str, keep_default_na=False)
    test_ids = pd.read_csv(data / "sample_submission.csv", dtype=str)["image_id"]
    rng = np.random.default_rng(1)
    train.merge(_metadata(rng, train["image_id"], train["label"].str[1:].astype(int).to_numpy())).to_csv(
        data / "train.csv", index=False)
    _metadata(rng, test_ids, np.arange(len(test_ids)) % 3).to_csv(data / "test.csv", index=False)
    write_yaml(root / "models" / "plain.yaml", TINY_MODEL)
    write_yaml(root / "models" / "withmeta.yaml", {**TINY_MODEL, "meta_head": True})


def _make(root: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([*MAKE, *args], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_each_training_row_takes_its_metadata_from_its_own_table(tmp_path, monkeypatch):
    """train.csv's rows from train.csv, the extra table's from it (a column it lacks: missing), pseudo-labelled
    test rows from the test table; validation rows from train.csv; all in the fold's row order."""
    _project(tmp_path, extra=True)
    data = tmp_path / "data" / "tiny"
    extra = pd.read_csv(data / "extra.csv", dtype=str)
    extra.assign(site="east").to_csv(data / "extra.csv", index=False)  # site only, no age
    test = pd.read_csv(data / "test.csv", dtype=str, keep_default_na=False)
    test.head(4)[["image_id"]].assign(label="c1").to_csv(tmp_path / "pseudo.csv", index=False)
    run_cli("folds", "-c", "competition.yaml", "--no-decode", cwd=tmp_path)
    monkeypatch.chdir(tmp_path)  # data_dir is relative to it
    comp = load_competition(tmp_path / "competition.yaml")
    data_ = fold_data(comp, tmp_path / "folds" / "folds.csv", 0, str(tmp_path / "pseudo.csv"),
                      meta_head="models/withmeta.yaml")
    train = pd.read_csv(data / "train.csv", dtype=str, keep_default_na=False).set_index("image_id")
    n, m = data_.labelled_rows, data_.extra_rows
    assert data_.meta.train.shape == (len(data_.train_paths), 2) and m == len(extra)
    enc = MetaEncoding.from_export(data_.meta.encoding)
    train_ids = [p.stem for p in data_.train_paths[:n]]
    np.testing.assert_allclose(data_.meta.train[:n], enc.encode(train.loc[train_ids, ["site", "age"]]), rtol=1e-6)
    assert (data_.meta.train[n:n + m, 0] == enc.values["site"].index("east")).all()
    assert np.isnan(data_.meta.train[n:n + m, 1]).all()  # the extra table has no age
    pseudo = test.head(4).set_index("image_id")[["site", "age"]]
    np.testing.assert_allclose(data_.meta.train[n + m:], enc.encode(pseudo.reset_index(drop=True)), rtol=1e-6)
    np.testing.assert_allclose(data_.meta.val, enc.encode(train.loc[data_.val_ids, ["site", "age"]]), rtol=1e-6)


@pytest.mark.slow
def test_the_head_learns_what_the_images_do_not_carry_and_the_kernel_reproduces_it(tmp_path):
    _project(tmp_path)
    _make(tmp_path, "folds", "train-all", "predict", "ensemble", "package")
    cv = json.loads((tmp_path / "submissions" / "cv.json").read_text())["models"]
    print(f"accuracy without the metadata head {cv['plain']['cv']:.4f}, with {cv['withmeta']['cv']:.4f}")
    assert cv["plain"]["cv"] < 0.5 and cv["withmeta"]["cv"] > 0.8  # site says the label 93% of the time
    ckpt = torch.load(tmp_path / "runs" / "withmeta" / "fold0" / "best.pt", weights_only=True)
    assert ckpt["meta"]["columns"] == ["site", "age"] and ckpt["meta"]["kinds"] == ["cat", "num"]

    assert "withmeta: tables up to date" in _make(tmp_path, "predict").stdout
    test_csv = tmp_path / "data" / "tiny" / "test.csv"  # the test rows' metadata is an input of predict
    test_csv.write_text(test_csv.read_text().replace("north", "south"))
    out = _make(tmp_path, "predict").stdout
    assert "plain: tables up to date" in out and "withmeta: 150 OOF rows" in out
    _make(tmp_path, "ensemble", "package")

    bundle = tmp_path / "bundle"  # the packaged kernel, offline, on the data folder: the same submission
    shutil.copytree(tmp_path / "dist" / "kaggle" / "dataset", bundle, ignore=shutil.ignore_patterns("*.whl"))
    script = next((tmp_path / "dist" / "kaggle" / "kernel").glob("*.py"))
    info = json.loads((bundle / "bundle.json").read_text())
    info["kernel"].update(data_dir=str(tmp_path / "data" / "tiny"), out=str(tmp_path / "kaggle" / "submission.csv"))
    (bundle / "bundle.json").write_text(json.dumps(info))
    shutil.copy2(script, bundle / script.name)
    proc = subprocess.run([sys.executable, str(bundle / script.name), "--skip-install"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    same_submission(tmp_path / "kaggle" / "submission.csv", tmp_path / "submissions" / "submission.csv")

    assert "suggested lr" in _make(tmp_path, "lr-find", "MODEL=withmeta").stdout
    config = load_yaml(tmp_path / "competition.yaml")
    write_yaml(tmp_path / "competition.yaml", {**config, "meta_cols": ["site"]})
    proc = run_cli("plan", "-c", "competition.yaml", cwd=tmp_path)
    plan = proc.stdout + proc.stderr
    assert "plan: plain: 3/3 folds done" in plan and "fold0 (meta_cols changed)" in plan  # other columns: retrain
    write_yaml(tmp_path / "competition.yaml", {k: v for k, v in config.items() if k not in ("meta_cols", "test_csv")})
    for target in ("check", "train"):
        proc = subprocess.run([*MAKE, target, "MODEL=withmeta", "FOLD=0"], cwd=tmp_path, capture_output=True,
                              text=True)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert ("models/withmeta.yaml: key 'meta_head': the model takes each image's metadata, so the competition "
                "needs the key meta_cols") in proc.stdout + proc.stderr


def load_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())
