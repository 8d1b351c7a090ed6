"""`show-batch`: the images a model receives, as PNG grids, through the CLI and Make."""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest

from pipeline.core.config import load_competition
from pipeline.nn.models import load_model
from tests.conftest import REPO, TINY_MODEL, make_competition, run_cli, write_yaml


@pytest.fixture
def comp_dir(tmp_path, monkeypatch):
    make_competition(tmp_path, n_train=30, n_test=6, size=12, models_dir="models")
    write_yaml(tmp_path / "models" / "tiny.yaml", {**TINY_MODEL, "augment": "heavy", "tta": ["none", "hflip"]})
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_show_batch_writes_grids_of_what_the_model_receives(comp_dir):
    proc = run_cli("show-batch", "-c", "competition.yaml", "--model", "tiny", "--n", "10", "--seed", "3",
                   cwd=comp_dir)
    out = comp_dir / "runs" / "tiny" / "show_batch"
    assert "train.png (2 x 8 tiles)" in proc.stdout
    grid = json.loads((out / "grid.json").read_text())
    assert grid["train"] == {"rows": 2, "cols": 8, "tiles": 10, "tile": [16, 16]}
    assert grid["tta"]["cols"] == 2 and grid["tta"]["tiles"] == 8  # 4 images x 2 views
    for name in ("train", "eval", "tta"):
        png = cv2.imread(str(out / f"{name}.png"))
        assert png is not None and png.shape[1] > png.shape[0] * (1.5 if name != "tta" else 0.3)

    from pipeline.nn.augment import train_transform
    from pipeline.core.images import read_image
    from pipeline.nn.models import build_model, data_config
    from pipeline.tools.show_batch import batch_arrays, to_uint8

    comp = load_competition("competition.yaml")
    cfg, _ = load_model("models", "tiny")
    batch = batch_arrays(comp, cfg, n=10, seed=3)
    again = batch_arrays(comp, cfg, n=10, seed=3)
    assert np.array_equal(batch.train, again.train) and batch.ids == grid["ids"]  # the seed decides
    assert not np.array_equal(batch.train, batch.eval)  # heavy augmentation did act
    d = data_config(cfg, build_model(cfg, 3))
    tf = train_transform(cfg.augment, d, cfg.in_chans)
    tf.set_random_seed(3)
    first = tf(image=read_image(comp.image_path("train", batch.ids[0]), 1))["image"]
    assert np.array_equal(batch.train[0], to_uint8(first, d["mean"], d["std"]))  # the transform's own output


@pytest.mark.slow
def test_show_batch_keeps_a_non_square_geometry_and_names_a_missing_model(comp_dir):
    run_cli("show-batch", "-c", "competition.yaml", "--model", "tiny", "--n", "4", "img_size=[16,32]",
            "resize=pad", cwd=comp_dir)
    grid = json.loads((comp_dir / "runs" / "tiny" / "show_batch" / "grid.json").read_text())
    assert grid["train"]["tile"] == [16, 32] and grid["eval"]["tile"] == [16, 32]
    proc = run_cli("show-batch", "-c", "competition.yaml", "--model", "nope", cwd=comp_dir, check=False)
    assert proc.returncode == 2 and "nope.yaml" in proc.stderr


def test_make_show_batch_needs_a_model(tmp_path):
    proc = subprocess.run(["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "show-batch"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "usage: make show-batch MODEL=<name>" in proc.stderr
