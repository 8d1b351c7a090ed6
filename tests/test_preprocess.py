"""`preprocess:` domain preprocessing: the built-ins on synthetic images, custom `file.py:function` steps,
bad input refused naming the file and function, and one fold trained through the CLI with [trim, clahe]."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.core.config import load_competition
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.images import read_image
from pipeline.nn.loader import ImageCache, ImageDataset
from pipeline.nn.models import ModelConfig, data_config, load_model, stamp_exclusions
from pipeline.nn.preprocess import Preprocess, ben_graham, circle_crop, clahe, trim
from tests.conftest import TINY_MODEL, make_competition, run_cli, write_yaml

RNG = np.random.default_rng(0)


def disc_photo(h: int = 60, w: int = 90) -> np.ndarray:
    """A bright textured disc of radius 20 centred at (45, 30) on a black background (RGB)."""
    img = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (45, 30), 20, 1, thickness=-1)
    img[mask == 1] = RNG.integers(80, 220, (int(mask.sum()), 3), dtype=np.uint8)
    return img


# --- built-ins ----------------------------------------------------------------------------------------------


def test_circle_crop_crops_the_dark_surround_and_masks_outside_the_disc():
    out = circle_crop(disc_photo())
    assert out.shape == (41, 41, 3)  # the disc's bounding box: 2 x 20 + 1
    assert out[0, 0].max() == 0 and out[-1, -1].max() == 0  # corners lie outside the inscribed circle
    assert out[20, 20].min() >= 80  # the centre is the photo
    grey = circle_crop(cv2.cvtColor(disc_photo(), cv2.COLOR_RGB2GRAY))
    assert grey.shape == (41, 41)
    black = np.zeros((10, 12, 3), np.uint8)
    assert circle_crop(black).shape == (10, 12, 3)  # nothing bright: the whole image, masked


def test_trim_removes_a_uniform_border_only():
    inner = RNG.integers(100, 256, (20, 30, 3), dtype=np.uint8)
    framed = np.full((34, 50, 3), (12, 40, 7), np.uint8)
    framed[6:26, 9:39] = inner
    framed[:, :3] = (15, 36, 9)  # within the tolerance of the border colour: border too
    assert np.array_equal(trim(framed), inner)
    assert np.array_equal(trim(inner), inner)  # no uniform border: unchanged
    assert np.array_equal(trim(framed[..., 0]), inner[..., 0])  # grey


def test_ben_graham_subtracts_the_local_average_colour():
    img = np.clip(RNG.normal(0, 10, (90, 90, 3)) + np.linspace(30, 220, 90)[None, :, None], 0, 255).astype(np.uint8)
    out = ben_graham(img)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert abs(out.mean() - 128) < 4  # the slow left-to-right gradient is gone
    assert abs(out[:, :30].mean() - out[:, -30:].mean()) < 6 < abs(img[:, :30].mean() - img[:, -30:].mean())


def test_clahe_raises_the_contrast_of_a_low_contrast_image():
    low = (110 + RNG.integers(0, 16, (64, 64))).astype(np.uint8)
    assert clahe(low).std() > 3 * low.std()
    rgb = np.stack([low, low, low], axis=-1)
    out = clahe(rgb)
    assert out.shape == rgb.shape and out.dtype == np.uint8 and out.std() > 3 * rgb.std()


# --- config, custom steps, bad input ------------------------------------------------------------------------


def model_dir(tmp_path, **keys):
    write_yaml(tmp_path / "models" / "tiny.yaml", {**TINY_MODEL, **keys})
    return tmp_path / "models"


def test_an_unknown_step_is_refused_at_config_load_listing_the_built_ins(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_model(model_dir(tmp_path), "tiny", ["preprocess=[trim, bengraham]"])
    assert ("key 'preprocess': unknown preprocess step 'bengraham' (did you mean 'ben_graham'?); "
            "built-ins: ben_graham, circle_crop, clahe, trim, or 'path/to/file.py:function'") in str(err.value)
    with pytest.raises(ConfigError, match="may not change"):
        load_model(model_dir(tmp_path), "tiny", ["stages=[{epochs: 1, preprocess: [trim]}]"])


def test_preprocess_changes_the_config_hash_only_when_set():
    from pipeline.artifacts.runs import config_hash

    plain, same = ModelConfig(**TINY_MODEL), ModelConfig(**TINY_MODEL, preprocess=[])
    assert config_hash(plain, stamp_exclusions(plain)) == config_hash(same, stamp_exclusions(same))
    assert "preprocess" not in data_config(plain, _model(plain))
    set_ = ModelConfig(**TINY_MODEL, preprocess=["clahe"])
    assert config_hash(set_, stamp_exclusions(set_)) != config_hash(plain, stamp_exclusions(plain))


def _model(cfg):
    from pipeline.nn.models import build_model

    return build_model(cfg, 3)


def test_a_custom_step_runs_and_a_missing_file_or_function_is_named(tmp_path):
    models = model_dir(tmp_path)
    (models / "steps").mkdir()
    (models / "steps" / "my.py").write_text("import numpy as np\n\ndef invert(img):\n    return 255 - img\n\n"
                                            "def flat(img):\n    return img.reshape(-1)\n\n"
                                            "def floats(img):\n    return img.astype(np.float32)\n")
    cfg, _ = load_model(models, "tiny", ["preprocess=[steps/my.py:invert, trim]"])
    d = data_config(cfg, _model(cfg))
    assert d["preprocess"][0]["step"] == "steps/my.py:invert" and "def invert" in d["preprocess"][0]["source"]
    img = RNG.integers(0, 256, (9, 7), dtype=np.uint8)
    step = pickle.loads(pickle.dumps(Preprocess(d["preprocess"])))  # as a DataLoader worker receives it
    assert np.array_equal(step(img), trim(255 - img))

    with pytest.raises(ConfigError) as err:
        load_model(models, "tiny", ["preprocess=[nothere.py:invert]"])
    assert f"key 'preprocess': 'nothere.py:invert': file {models / 'nothere.py'} not found" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_model(models, "tiny", ["preprocess=[steps/my.py:inverse]"])
    assert (f"key 'preprocess': {models / 'steps' / 'my.py'} has no function 'inverse' (its top-level names: "
            "flat, floats, invert, np)") in str(err.value)
    for fn, got in (("flat", "a uint8 array of shape (63,)"), ("floats", "a float32 array of shape (9, 7)")):
        cfg, _ = load_model(models, "tiny", [f"preprocess=[steps/my.py:{fn}]"])
        with pytest.raises(DataError) as err:
            Preprocess(data_config(cfg, _model(cfg))["preprocess"])(img, "x.png")
        assert str(err.value) == (f"preprocess 'steps/my.py:{fn}' ({models / 'steps' / 'my.py'}, function {fn!r}): "
                                  f"returned {got} for a uint8 image of shape (9, 7); it must return a HxW "
                                  "(in_chans 1) uint8 numpy array")
    (models / "steps" / "my.py").unlink()  # predict and the Kaggle kernel run the source best.pt carries
    assert np.array_equal(Preprocess(d["preprocess"])(img), trim(255 - img))


def test_the_dataset_and_its_cache_yield_the_preprocessed_image(tmp_path):
    path = tmp_path / "a.png"
    framed = np.zeros((30, 40), np.uint8)
    framed[5:25, 8:30] = RNG.integers(0, 40, (20, 22), dtype=np.uint8) + 100
    cv2.imwrite(str(path), framed)
    want = clahe(trim(framed))
    assert want.shape == (20, 22)
    ident = lambda image: {"image": torch.as_tensor(image)}  # noqa: E731
    disk = ImageDataset([path], None, ident, 1, "fail", preprocess=["trim", "clahe"])
    cache = ImageCache([path], 1, preprocess=["trim", "clahe"])
    ram = ImageDataset([path], None, ident, 1, "fail", cache, preprocess=["trim", "clahe"])
    assert np.array_equal(disk[0][0].numpy(), want) and np.array_equal(ram[0][0].numpy(), want)
    with pytest.raises(ValueError, match="preprocessed otherwise"):
        ImageDataset([path], None, ident, 1, "fail", cache, preprocess=["trim"])


# --- through the CLI ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_fold_trains_with_trim_and_clahe_and_show_batch_shows_the_preprocessed_image(tmp_path, monkeypatch):
    make_competition(tmp_path, n_train=30, n_test=6, size=12, models_dir="models")
    for png in sorted((tmp_path / "data" / "tiny").glob("*/*.png")):  # a uniform 5 px frame around each image
        img = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE) // 2 + 60
        cv2.imwrite(str(png), cv2.copyMakeBorder(img, 5, 5, 5, 5, cv2.BORDER_CONSTANT, value=0))
    model_dir(tmp_path, preprocess=["trim", "clahe"], img_size=12, resize="crop", epochs=1, cache_dir="imgcache")
    run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", "0", cwd=tmp_path)
    ckpt = torch.load(tmp_path / "runs" / "tiny" / "fold0" / "best.pt", weights_only=False)
    assert ckpt["data_config"]["preprocess"] == ["trim", "clahe"]  # travels to predict and the Kaggle kernel
    assert len(list((tmp_path / "imgcache").glob("*.npy"))) == 30  # each image decoded and preprocessed once
    proc = run_cli("show-batch", "-c", "competition.yaml", "--model", "tiny", "--n", "4", cwd=tmp_path)
    assert "train.png" in proc.stdout

    from pipeline.nn.augment import eval_transform
    from pipeline.tools.show_batch import batch_arrays, to_uint8

    monkeypatch.chdir(tmp_path)
    comp = load_competition("competition.yaml")
    cfg, _ = load_model("models", "tiny")
    batch = batch_arrays(comp, cfg, n=4, seed=0)
    assert batch.ids == json.loads((tmp_path / "runs/tiny/show_batch/grid.json").read_text())["ids"]
    d = ckpt["data_config"]
    raw = read_image(comp.image_path("train", batch.ids[0]), 1, d["read_side"])  # 22 px read reduced to 18
    assert raw.shape == (18, 18) and clahe(trim(raw)).shape[0] < 18  # the frame is gone before the resize
    x = eval_transform(d, 1)(image=clahe(trim(raw)))["image"]
    assert np.array_equal(batch.eval[0], to_uint8(x, d["mean"], d["std"]))
    assert hashlib.md5(batch.eval[0].tobytes()).hexdigest() != hashlib.md5(
        to_uint8(eval_transform(d, 1)(image=raw)["image"], d["mean"], d["std"]).tobytes()).hexdigest()

    from pipeline.nn.infer import EvalSpec, image_logits, load_fold_model

    model, cfg, ckpt = load_fold_model(tmp_path / "runs" / "tiny" / "fold0", dev=torch.device("cpu"))
    paths = [comp.image_path("train", i) for i in batch.ids]  # predict's and the kernel's path: best.pt's data config
    logits = image_logits([model], paths, EvalSpec.of(cfg, ckpt["data_config"]), dev=torch.device("cpu"))[0, 0]
    with torch.no_grad():
        own = [model(eval_transform(d, 1)(image=clahe(trim(read_image(p, 1, d["read_side"]))))["image"][None])
               for p in paths]
    assert np.allclose(logits, torch.cat(own).numpy(), atol=1e-5)


def test_cache_dir_keeps_each_preprocessed_image_once_keyed_by_file_and_steps(tmp_path):
    path, cache_dir = tmp_path / "a.png", tmp_path / "cache"
    framed = np.zeros((30, 40), np.uint8)
    framed[5:25, 8:30] = 100 + RNG.integers(0, 40, (20, 22), dtype=np.uint8)
    cv2.imwrite(str(path), framed)
    ident = lambda image: {"image": torch.as_tensor(image)}  # noqa: E731

    def read(steps):
        return ImageDataset([path], None, ident, 1, "fail", preprocess=steps, cache_dir=str(cache_dir))[0][0].numpy()

    assert np.array_equal(read(["trim"]), trim(framed))
    (stored,) = cache_dir.glob("*.npy")
    np.save(stored, np.full((3, 3), 7, np.uint8))  # a later read takes the stored image, not the file
    assert np.array_equal(read(["trim"]), np.full((3, 3), 7, np.uint8))
    assert np.array_equal(read(["trim", "clahe"]), clahe(trim(framed))) and len(list(cache_dir.glob("*.npy"))) == 2
    cv2.imwrite(str(path), framed[::-1])  # the image changed (mtime): read again
    os.utime(path, ns=(1, 1))
    assert np.array_equal(read(["trim"]), trim(framed[::-1]))
    cache = ImageCache([path], 1, preprocess=["trim"], cache_dir=str(cache_dir))
    assert np.array_equal(cache[0], trim(framed[::-1])) and len(list(cache_dir.glob("*.npy"))) == 3


# --- a custom step's file is an input of the fold -----------------------------------------------------------


def test_a_custom_steps_file_is_a_fold_input_and_the_built_ins_have_none(tmp_path):
    from pipeline.artifacts.runs import fold_inputs, resume_stamp

    models = model_dir(tmp_path)
    (models / "steps").mkdir()
    text = "def invert(img):\n    return 255 - img\n\ndef same(img):\n    return img\n"
    for name in ("a.py", "b.py"):
        (models / "steps" / name).write_text(text)
    folds = tmp_path / "folds.csv"
    folds.write_text("image_id,fold\n")
    assert fold_inputs(load_model(models, "tiny", ["preprocess=[trim, clahe]"])[0], folds) == {"folds.csv": str(folds)}
    cfg = load_model(models, "tiny", ["preprocess=[steps/a.py:invert, trim, steps/a.py:same]"])[0]
    assert fold_inputs(cfg, folds) == {"folds.csv": str(folds), "preprocess file": str(models / "steps" / "a.py")}
    cfg2 = load_model(models, "tiny", ["preprocess=[steps/a.py:invert, steps/b.py:same]"])[0]
    assert list(fold_inputs(cfg2, folds)) == ["folds.csv", f"preprocess file {models / 'steps' / 'a.py'}",
                                             f"preprocess file {models / 'steps' / 'b.py'}"]
    before = resume_stamp({"config_hash": "h"}, fold_inputs(cfg, folds))
    (models / "steps" / "a.py").write_text(text.replace("255 - img", "img"))
    assert resume_stamp({"config_hash": "h"}, fold_inputs(cfg, folds)) != before  # the old file's last.pt: not resumed


@pytest.mark.slow
def test_editing_a_custom_steps_file_retrains_the_fold_and_predict_follows(tmp_path):
    make_competition(tmp_path, n_train=24, n_test=6, size=12, models_dir="models", n_folds=2)
    step = tmp_path / "models" / "steps" / "my.py"
    step.parent.mkdir(parents=True)
    step.write_text("def invert(img):\n    return 255 - img\n")
    model_dir(tmp_path, preprocess=["steps/my.py:invert"], img_size=12, epochs=1)
    c = ("-c", "competition.yaml")
    run_cli("folds", *c, cwd=tmp_path)
    for k in ("0", "1"):
        run_cli("train", *c, "--model", "tiny", "--fold", k, cwd=tmp_path)
    run_cli("predict", *c, cwd=tmp_path)
    done = json.loads((tmp_path / "runs/tiny/fold0/done.json").read_text())
    assert str(Path("models/steps/my.py")) in done["inputs"]

    os.utime(step, ns=(1, 1))  # touched, same text: still done, nothing to train or predict
    plan = run_cli("plan", *c, cwd=tmp_path)
    assert plan.stdout.strip() == "" and "plan: tiny: 2/2 folds done" in plan.stderr
    assert "tables up to date" in run_cli("predict", *c, cwd=tmp_path).stdout

    step.write_text("def invert(img):\n    return img  # edited\n")
    plan = run_cli("plan", *c, cwd=tmp_path)
    assert plan.stdout.split() == ["runs/tiny/fold0/done.json", "runs/tiny/fold1/done.json"]
    assert ("plan: tiny: 0/2 folds done; to train: fold0 (preprocess file changed), fold1 (preprocess file changed)"
            in plan.stderr)
    proc = run_cli("predict", *c, cwd=tmp_path, check=False)  # the old function's folds are not predicted
    assert proc.returncode != 0 and "fold0 (preprocess file changed), fold1 (preprocess file changed)" in proc.stderr
    proc = run_cli("train", *c, "--model", "tiny", "--fold", "0", cwd=tmp_path)
    assert "runs/tiny/fold0: preprocess file changed; training it again" in proc.stdout
    ckpt = torch.load(tmp_path / "runs/tiny/fold0/best.pt", weights_only=False)
    assert "# edited" in ckpt["data_config"]["preprocess"][0]["source"]
    plan = run_cli("plan", *c, cwd=tmp_path)  # the retrained fold is done with the edited file
    assert "plan: tiny: 1/2 folds done; to train: fold1 (preprocess file changed)" in plan.stderr
