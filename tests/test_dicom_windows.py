"""`dicom_windows`: one CT slice becomes one channel per (center, width) window, in every stage that reads
images (check, folds, show-batch and training through images.read_image) and in the Kaggle kernel."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import TINY_MODEL, run_cli, write_yaml
from tests.test_images import write_dicom

pytest.importorskip("pydicom")

WINDOWS = [[40, 80], [80, 200], [600, 2800]]  # brain, subdural, bone (RSNA intracranial haemorrhage)
SIDE = 16


@pytest.fixture(autouse=True)
def own_windows():
    """Tests here set the process's DICOM windows (load_competition); later tests read files' own windows."""
    from pipeline.core.images import set_dicom_windows

    yield
    set_dicom_windows(None)


def hounsfield(seed: int) -> np.ndarray:
    """A 16x16 slice in Hounsfield units: air, water, brain, blood, bone and values between."""
    rng = np.random.default_rng(seed)
    return rng.choice([-1000, -100, 0, 20, 40, 60, 80, 150, 300, 1000, 2000], (SIDE, SIDE)).astype(np.int16)


def expected(hu: np.ndarray) -> np.ndarray:
    """The windows as channels, written out again: (HU - (c - w/2)) / w, clipped to 0..1, x 255, rounded."""
    return np.dstack([np.rint(np.clip((hu - (c - w / 2)) / w, 0, 1) * 255) for c, w in WINDOWS]).astype(np.uint8)


def dicom_competition(root, in_chans: int = 3, **config) -> dict[str, np.ndarray]:
    """30 train and 6 test CT slices stored as HU + 1024 (RescaleIntercept -1024); -> train id: its HU."""
    data = root / "data" / "ct"
    (data / "train").mkdir(parents=True)
    (data / "test").mkdir()
    slices = {}
    for split, n in (("train", 30), ("test", 6)):
        for i in range(n):
            hu = hounsfield(i + (100 if split == "test" else 0))
            write_dicom(data / split / f"{split}{i}.dcm", (hu + 1024).astype(np.int16), RescaleSlope=1,
                        RescaleIntercept=-1024, WindowCenter=500, WindowWidth=1000)  # the file's window: unused
            if split == "train":
                slices[f"train{i}"] = hu
    pd.DataFrame({"image_id": list(slices), "label": [f"c{i % 3}" for i in range(30)]}).to_csv(
        data / "train.csv", index=False)
    pd.DataFrame({"image_id": [f"test{i}" for i in range(6)], "label": "c0"}).to_csv(
        data / "sample_submission.csv", index=False)
    write_yaml(root / "competition.yaml", {
        "data_dir": "data/ct", "target": "label", "n_folds": 3, "seed": 0, "models_dir": "models",
        "train_images": "train/{id}.dcm", "test_images": "test/{id}.dcm", "dicom_windows": WINDOWS, **config})
    write_yaml(root / "models" / "tiny.yaml", {**TINY_MODEL, "in_chans": in_chans, "img_size": SIDE,
                                               "mean": [0.0], "std": [1.0], "augment": "none"})
    return slices


@pytest.mark.slow
def test_three_windows_become_three_channels_through_check_folds_and_show_batch(tmp_path, monkeypatch):
    slices = dicom_competition(tmp_path)
    proc = run_cli("check", "-c", "competition.yaml", cwd=tmp_path)
    assert ("decode: 36 of 36 sampled images read as 3 channel(s); height 16..16, width 16..16, stored channels 3 (36)"
            in proc.stdout), proc.stdout
    proc = run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    assert "30 training rows -> 3 folds" in proc.stdout
    run_cli("show-batch", "-c", "competition.yaml", "--model", "tiny", "--n", "6", cwd=tmp_path)
    assert (tmp_path / "runs" / "tiny" / "show_batch" / "eval.png").is_file()

    # What the model receives (the evaluation transform, denormalised) is the windows, channel by channel.
    from pipeline.core.config import load_competition
    from pipeline.nn.models import load_model
    from pipeline.tools.show_batch import batch_arrays

    monkeypatch.chdir(tmp_path)
    comp = load_competition("competition.yaml")
    cfg, _ = load_model("models", "tiny")
    batch = batch_arrays(comp, cfg, n=6)
    for image_id, seen in zip(batch.ids, batch.eval):
        assert np.array_equal(seen, expected(slices[image_id])), image_id


def test_windows_apply_rescale_and_reach_the_kernel(tmp_path, monkeypatch):
    from pipeline.core.config import load_competition
    from pipeline.core.images import read_image, set_dicom_windows
    from pipeline.kaggle.kernel import bundle_competition

    slices = dicom_competition(tmp_path)
    monkeypatch.chdir(tmp_path)
    path = "data/ct/train/train0.dcm"
    comp = load_competition("competition.yaml")
    windowed = read_image(path, 3)
    assert np.array_equal(windowed, expected(slices["train0"]))
    set_dicom_windows(None)  # the file's own window (500, 1000) otherwise
    assert not np.array_equal(read_image(path, 3), windowed)
    # The kernel builds the competition from the bundle's copy of the config (as bundle.py writes it).
    info = {"competition": comp.model_dump(mode="json", exclude={"data_dir", "answers", "generator", "models_dir"})}
    assert info["competition"]["dicom_windows"] == WINDOWS
    bundle_competition(info, tmp_path / "data" / "ct")
    assert np.array_equal(read_image(path, 3), windowed)
    set_dicom_windows([[40, 80]])  # one window: a grayscale image
    assert np.array_equal(read_image(path, 1), windowed[:, :, 0])


def test_a_one_channel_model_with_three_windows_is_named_by_check(tmp_path):
    dicom_competition(tmp_path, in_chans=1)
    proc = run_cli("check", "-c", "competition.yaml", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert ("error: data/ct/train/train0.dcm: the competition key dicom_windows gives 3 windows, one per channel, "
            "but this model reads in_chans: 1. Set in_chans: 3 in the model config, or give dicom_windows a single "
            "window") in proc.stderr


@pytest.mark.parametrize("windows, message", [
    ([[40, 80], [80, 200]], "key 'dicom_windows': give 1 window (one grayscale channel) or 3 (one per RGB channel)"),
    ([[40, 0]], "key 'dicom_windows': every window's width (its second number) must be > 0, not [[40.0, 0.0]]"),
])
def test_bad_windows_name_the_file_and_the_key(tmp_path, windows, message):
    dicom_competition(tmp_path, dicom_windows=windows)
    proc = run_cli("check", "-c", "competition.yaml", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "competition.yaml" in proc.stderr and message in proc.stderr, proc.stderr


def test_unset_windows_leave_the_competition_hash_as_it_was(tmp_path):
    """A project that does not set the new key keeps every stage's record (the key drops out of the dump)."""
    from pipeline.core.config import NEUTRAL_KEYS, Competition, config_hash

    base = {"data_dir": "d", "target": "label"}
    plain = Competition.model_validate(base)
    assert "dicom_windows" not in plain.model_dump()
    assert config_hash(plain, NEUTRAL_KEYS) != config_hash(Competition.model_validate(
        {**base, "dicom_windows": WINDOWS}), NEUTRAL_KEYS)
    assert config_hash(plain, NEUTRAL_KEYS) == config_hash(Competition.model_validate(
        {**base, "duplicates": "exact"}), NEUTRAL_KEYS)  # folds records `duplicates` itself
    assert json.loads(plain.model_dump_json()).get("duplicates") == "near"


def test_changed_windows_make_trained_folds_stale():
    """A fold trained on other windows saw other pixels: its stamp holds the windows (only when they are set)."""
    from pipeline.artifacts.runs import fold_params
    from pipeline.core.config import Competition, validate
    from pipeline.nn.models import ModelConfig

    cfg = validate(ModelConfig, TINY_MODEL, "tiny.yaml")
    base = {"data_dir": "d", "target": "label"}
    plain = fold_params(cfg, ["a", "b"], Competition.model_validate(base))
    assert "dicom_windows" not in plain  # folds trained before the key existed stay done
    windowed = fold_params(cfg, ["a", "b"], Competition.model_validate({**base, "dicom_windows": WINDOWS}))
    other = fold_params(cfg, ["a", "b"], Competition.model_validate({**base, "dicom_windows": [[40, 80]]}))
    assert windowed["dicom_windows"] == WINDOWS and windowed != other
