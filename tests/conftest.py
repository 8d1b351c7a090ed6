"""Shared fixtures. Everything runs on CPU, in temporary folders, on tiny data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# Keep CPU tests quick and reproducible on small machines: the cores shared by the test workers (pytest-xdist,
# `make test`), so that two workers on two cores do not each start two torch threads.
_THREADS = str(max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))
os.environ.setdefault("OMP_NUM_THREADS", _THREADS)
os.environ.setdefault("MKL_NUM_THREADS", _THREADS)
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def run_cli(*args: str, cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m pipeline ...` as a user would; return the completed process."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_competition(
    root: Path,
    n_train: int = 60,
    n_test: int = 12,
    n_classes: int = 3,
    size: int = 8,
    seed: int = 0,
    **config,
) -> Path:
    """A tiny random competition under root/data/tiny and its config root/competition.yaml."""
    from pipeline.core.demo import write_competition

    rng = np.random.default_rng(seed)
    train_x = rng.integers(0, 256, (n_train, size, size), dtype=np.uint8)
    test_x = rng.integers(0, 256, (n_test, size, size), dtype=np.uint8)
    train_y = np.arange(n_train) % n_classes
    test_y = np.arange(n_test) % n_classes
    classes = [f"c{i}" for i in range(n_classes)]
    write_competition(root / "data" / "tiny", train_x, train_y, test_x, test_y, classes)
    cfg = {
        "data_dir": "data/tiny", "id_col": "image_id", "target": "label", "task": "multiclass",
        "metric": "accuracy", "n_folds": 3, "seed": 0, **config,
    }
    return write_yaml(root / "competition.yaml", cfg)


TINY_MODEL = {
    "backbone": "test_resnet", "img_size": 16, "in_chans": 1, "epochs": 2, "batch_size": 16,
    "lr": 0.01, "augment": "none", "num_workers": 0, "warmup_epochs": 0.5,
}


def train_tiny(root: Path, n_train: int, n_test: int, model: dict | None = None, blend: str | None = None):
    """A tiny competition with one tiny model `tiny` trained on 3 folds and predicted through the CLI,
    then blended with `blend` when given; returns the predict command's completed process."""
    make_competition(root, n_train=n_train, n_test=n_test, models_dir="models")
    write_yaml(root / "models" / "tiny.yaml", {**TINY_MODEL, **(model or {})})
    run_cli("folds", "-c", "competition.yaml", cwd=root)
    for k in range(3):
        run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", str(k), cwd=root)
    proc = run_cli("predict", "-c", "competition.yaml", cwd=root)
    if blend:
        run_cli("ensemble", "-c", "competition.yaml", "--method", blend, cwd=root)
    return proc


def edit_train(root: Path, fn) -> None:
    """Rewrite data/tiny/train.csv through fn(df) -> df."""
    path = root / "data" / "tiny" / "train.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(df).to_csv(path, index=False)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    make_competition(tmp_path)
    return tmp_path


def read_table_file(path: Path) -> pd.DataFrame:
    """A level-1 table as a frame, whatever its format (the pipeline's Parquet, or a CSV): ids as text."""
    path = Path(path)
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
        return df.astype({df.columns[0]: str})
    return pd.read_csv(path, dtype={0: str}, keep_default_na=False)
