"""`python -m pipeline check` (and `make check`): every problem named in one run, before any training."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, TINY_MODEL, make_competition, run_cli, write_yaml

DATA = Path("data/tiny")


def competition(root: Path, n_train: int = 30, n_test: int = 6, **config) -> Path:
    """A tiny competition (PNG images, ids without extension) with its answers and no model configs."""
    config = {"answers": "data/tiny-answers.csv", "models_dir": "models", **config}
    return make_competition(root, n_train=n_train, n_test=n_test, **config)


def check(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("check", "-c", "competition.yaml", *args, cwd=root, check=False)


def failed(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "ok" not in proc.stdout.splitlines(), proc.stdout
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not in:\n{proc.stderr}"
    return proc.stderr


def set_config(root: Path, **changes) -> None:
    path = root / "competition.yaml"
    write_yaml(path, {**yaml.safe_load(path.read_text()), **changes})


def edit_csv(path: Path, fn) -> None:
    fn(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)


def train_ids(root: Path) -> list[str]:
    return list(pd.read_csv(root / DATA / "train.csv", dtype=str)["image_id"])


def test_good_data_passes_and_prints_the_counts(tmp_path):
    competition(tmp_path)
    write_yaml(tmp_path / "models" / "tiny.yaml", TINY_MODEL)
    proc = check(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "train.csv: 30 rows, 3 classes" in out and "sample_submission.csv: 6 test rows" in out
    assert "train images: 30 of 30 found" in out and "test images: 6 of 6 found" in out
    assert re.search(r"decode: 36 of 36 sampled images read .* height 8\.\.8, width 8\.\.8, stored channels 1 \(36\)",
                     out)
    assert "answers: data/tiny-answers.csv covers all 6 test ids" in out
    assert "models: 1 config(s) in models: tiny; 1 valid; backbones test_resnet" in out
    assert out.splitlines()[-1] == "ok"


def test_ids_that_end_in_the_templates_extension_get_the_fixed_template(tmp_path):
    competition(tmp_path, train_images="train/{id}.jpg")
    for png in (tmp_path / DATA / "train").glob("*.png"):
        png.rename(png.with_suffix(".jpg"))
    edit_csv(tmp_path / DATA / "train.csv", lambda df: df.assign(image_id=df.image_id + ".jpg"))
    err = failed(check(tmp_path), "30 of 30 train image(s) not found", "'train/{id}.jpg'",
                 "30 of the missing ids already end in '.jpg'", "set train_images: 'train/{id}'")
    assert f"train/{train_ids(tmp_path)[0]}.jpg" in err  # the doubled path named
    assert err.count(".jpg.jpg") <= 6  # at most 5 examples, and one in the hint
    set_config(tmp_path, train_images="train/{id}")
    assert check(tmp_path).returncode == 0


def test_files_with_another_extension_are_named(tmp_path):
    competition(tmp_path, train_images="train/{id}.jpg")
    failed(check(tmp_path), "exist with another extension: .png (30)", "set train_images: 'train/{id}.png'")


def test_every_problem_is_listed_in_one_run(tmp_path):
    """Missing test images, a corrupt train image, answers lacking test ids: all three named."""
    competition(tmp_path)
    tests = sorted((tmp_path / DATA / "test").glob("*.png"))
    for png in tests[:2]:
        png.unlink()
    corrupt = tmp_path / DATA / "train" / f"{train_ids(tmp_path)[7]}.png"
    corrupt.write_bytes(b"not an image at all")
    lacking = pd.read_csv(tmp_path / "data/tiny-answers.csv", dtype=str)["image_id"][:3].tolist()
    edit_csv(tmp_path / "data/tiny-answers.csv", lambda df: df.iloc[3:])
    proc = check(tmp_path)
    failed(proc, "check found 3 problem(s)", "2 of 6 test image(s) not found", str(DATA / "test" / tests[0].name),
                 "1 of 34 sampled image(s) cannot be read", str(DATA / "train" / corrupt.name),
                 "no answer for 3 of 6 test id(s)", *lacking)
    assert "test images: 2 of 6 MISSING" in proc.stdout and "answers: data/tiny-answers.csv FAILED" in proc.stdout


@pytest.mark.slow
def test_model_configs_with_a_typo_and_an_unknown_backbone_are_both_named(tmp_path):
    competition(tmp_path)
    write_yaml(tmp_path / "models" / "good.yaml", TINY_MODEL)
    write_yaml(tmp_path / "models" / "typo.yaml", {**TINY_MODEL, "epoch": 3})
    write_yaml(tmp_path / "models" / "nobody.yaml", {**TINY_MODEL, "backbone": "resnet_18"})
    proc = check(tmp_path)
    err = failed(proc, "check found 2 problem(s)", "models/typo.yaml", "key 'epoch': unknown key",
                 "did you mean 'epochs'", "models/nobody.yaml", "unknown timm model 'resnet_18'", "resnet18")
    assert "good.yaml" not in err
    assert "models: 3 config(s) in models: good, nobody, typo; 1 valid, 2 FAILED" in proc.stdout


def test_ids_holding_a_subfolder_pass(tmp_path):
    competition(tmp_path, n_train=40)
    train = tmp_path / DATA / "train"
    for k, image_id in enumerate(train_ids(tmp_path)):
        (train / f"part{k % 4}").mkdir(exist_ok=True)
        (train / f"{image_id}.png").rename(train / f"part{k % 4}" / f"{image_id}.png")
    edit_csv(tmp_path / DATA / "train.csv",
             lambda df: df.assign(image_id=[f"part{k % 4}/{i}" for k, i in enumerate(df.image_id)]))
    proc = check(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "train images: 40 of 40 found (4 folders" in proc.stdout


def test_a_missing_folder_is_named_with_the_folders_data_dir_holds(tmp_path):
    competition(tmp_path, test_images="images/{id}.png")
    failed(check(tmp_path), "6 of 6 test image(s) not found", "1 folder(s) not found: data/tiny/images",
           "data/tiny holds test/, train/")


def test_make_check(tmp_path):
    competition(tmp_path)
    make = ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "check", "COMPETITION=competition.yaml"]
    proc = subprocess.run(make, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "ok", proc.stdout + proc.stderr
    (tmp_path / DATA / "test" / sorted(p.name for p in (tmp_path / DATA / "test").iterdir())[0]).unlink()
    proc = subprocess.run(make, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "1 of 6 test image(s) not found" in proc.stderr, proc.stdout + proc.stderr


def test_a_table_problem_does_not_hide_the_others(tmp_path):
    competition(tmp_path, classes=["c0", "c1"])
    (tmp_path / DATA / "test" / sorted(p.name for p in (tmp_path / DATA / "test").iterdir())[0]).unlink()
    proc = check(tmp_path, "n_folds=3")
    failed(proc, "check found 2 problem(s)", "competition key 'classes' lists ['c0', 'c1']", "['c2']",
           "1 of 6 test image(s) not found")
    assert "train images: 30 of 30 found" in proc.stdout

    edit_csv(tmp_path / DATA / "train.csv", lambda df: df.rename(columns={"label": "y"}))
    proc = check(tmp_path, "classes=null")
    failed(proc, "check found 2 problem(s)", "column(s) ['label']", "1 of 6 test image(s) not found")
    assert "train images: not checked (its table failed)" in proc.stdout


def regression(root: Path, scores: list[str]) -> None:
    """The tiny competition as a regression on a column `score` holding `scores` (repeated to fill it)."""
    competition(root, answers=None, target="score", task="regression", metric="rmse")
    edit_csv(root / DATA / "train.csv", lambda df: df.assign(score=(scores * len(df))[: len(df)]))


def test_regression_targets_beyond_float32_are_named_by_check_and_folds(tmp_path):
    """1e308 is a finite float64 but infinite as the float32 training uses: it used to reach sklearn's
    'Input contains infinity' mid-training, naming nothing."""
    regression(tmp_path, ["1.5", "2", "3"])
    edit_csv(tmp_path / DATA / "train.csv", lambda df: df.assign(score=df.score.where(df.index != 4, "1e308")))
    needles = [str(DATA / "train.csv"), "regression target column 'score' holds value(s) beyond the float32 range",
               "1e308 in line(s) 6"]
    failed(check(tmp_path), *needles)
    failed(run_cli("folds", "-c", "competition.yaml", cwd=tmp_path, check=False), *needles)
    # values inside the range whose float32 spread overflows: named too
    edit_csv(tmp_path / DATA / "train.csv", lambda df: df.assign(score=["3e38", "-3e38"] * 15))
    failed(check(tmp_path), "regression target column 'score' overflows float32 when training scales it")


def test_a_constant_regression_target_warns_at_check_and_folds(tmp_path):
    regression(tmp_path, ["7"])
    warning = (f"warning: {DATA / 'train.csv'}: regression target column(s) 'score' (always 7) hold one value in "
               "every row")
    proc = check(tmp_path)
    assert proc.returncode == 0 and warning in proc.stdout, proc.stdout + proc.stderr
    proc = run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    assert warning in proc.stderr
    regression(tmp_path, ["7", "8"])
    assert "warning" not in check(tmp_path).stdout


def test_unreadable_images_are_warnings_under_bad_images_skip(tmp_path):
    competition(tmp_path)
    corrupt = tmp_path / DATA / "train" / f"{train_ids(tmp_path)[7]}.png"
    corrupt.write_bytes(b"not an image at all")
    failed(check(tmp_path), "1 of 36 sampled image(s) cannot be read", "bad_images: skip", corrupt.name)
    proc = check(tmp_path, "bad_images=skip")
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "ok", proc.stdout + proc.stderr
    assert "warning: 1 of 36 sampled image(s) cannot be read; bad_images: skip skips them" in proc.stdout
    assert corrupt.name in proc.stdout
