"""Competitions written in Kaggle layout from data that ships with our dependencies or with Debian.

- `digits`: scikit-learn's load_digits (1,797 8x8 grayscale images), the embedded demo.
- `fashion-mnist`: the IDX files of Debian's `dataset-fashion-mnist`, the real-size example.

Both write `<out>/train.csv`, `<out>/train/<id>.png`, `<out>/test/<id>.png`,
`<out>/sample_submission.csv`, and the test answers to `<out>-answers.csv` beside (not inside) the
competition folder. Output is deterministic, and the folder appears only once complete.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.core.io import make_dir_public, write_csv

DIGIT_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FASHION_CLASSES = [
    "tshirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]  # fmt: skip
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def answers_path(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}-answers.csv"


def _ids(prefix: str, n: int) -> list[str]:
    # Hash-like string ids, as Kaggle often has; some are all digits, which exercises str parsing.
    return [hashlib.md5(f"{prefix}{i}".encode()).hexdigest()[:10] for i in range(n)]


def write_competition(
    out_dir: str | Path,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    classes: list[str],
    id_col: str = "image_id",
    target: str = "label",
) -> Path:
    """Write uint8 images (n, h, w) and integer labels as a Kaggle-style competition folder."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        train_ids, test_ids = _ids("train", len(train_x)), _ids("test", len(test_x))
        for split, ids, images in (("train", train_ids, train_x), ("test", test_ids, test_x)):
            (tmp / split).mkdir()
            for image_id, img in zip(tqdm(ids, desc=f"writing {split} images", leave=False, disable=None), images):
                cv2.imwrite(str(tmp / split / f"{image_id}.png"), img)
        names = np.asarray(classes)
        write_csv(tmp / "train.csv", pd.DataFrame({id_col: train_ids, target: names[train_y]}))
        write_csv(tmp / "sample_submission.csv", pd.DataFrame({id_col: test_ids, target: classes[0]}))
        write_csv(answers_path(out_dir), pd.DataFrame({id_col: test_ids, target: names[test_y]}))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        make_dir_public(tmp)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def write_digits(out_dir: str | Path = "data/demo", n_test: int = 297, seed: int = 0) -> Path:
    """scikit-learn's digits, 8x8 grayscale scaled to 0..255; `n_test` images kept back as the test set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    idx_train, idx_test = train_test_split(
        np.arange(len(images)), test_size=n_test, stratify=digits.target, random_state=seed
    )
    return write_competition(
        out_dir, images[idx_train], digits.target[idx_train], images[idx_test], digits.target[idx_test], DIGIT_CLASSES
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) as a numpy array of unsigned bytes."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(source: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (source / name).is_file():
            return source / name
    raise FileNotFoundError(
        f"{source / stem}(.gz) not found: install Debian's package with "
        "`apt-get install -y dataset-fashion-mnist`, or pass --source"
    )


def _subsample(y: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Indices of a class-stratified subsample of size n (all rows when n is None or too large)."""
    if n is None or n >= len(y):
        return np.arange(len(y))
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=seed)
    return np.sort(keep)


def write_fashion_mnist(
    out_dir: str | Path = "data/fashion-mnist",
    source: str | Path = FASHION_MNIST_DIR,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
) -> Path:
    """Fashion-MNIST from its IDX files; n_train/n_test take class-stratified subsamples."""
    source = Path(source)
    train_x = read_idx(_find_idx(source, "train-images-idx3-ubyte"))
    train_y = read_idx(_find_idx(source, "train-labels-idx1-ubyte")).astype(np.int64)
    test_x = read_idx(_find_idx(source, "t10k-images-idx3-ubyte"))
    test_y = read_idx(_find_idx(source, "t10k-labels-idx1-ubyte")).astype(np.int64)
    tr, te = _subsample(train_y, n_train, seed), _subsample(test_y, n_test, seed)
    return write_competition(out_dir, train_x[tr], train_y[tr], test_x[te], test_y[te], FASHION_CLASSES)


GENERATORS = {"digits": write_digits}
