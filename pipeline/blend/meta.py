"""Per-image metadata (competition key `meta_cols`) beside the models' probabilities in the stackers.

The columns come from train.csv for the training rows and from the test table (competition key `test_csv`;
default: the sample submission when it holds them) for the test rows, matched by the id column. Each
column's kind and encoding are fitted on train.csv only (`MetaEncoding.fit`): a column whose every
non-blank cell is a number is numeric (a blank cell is missing: NaN); any other column is categorical,
coded by its sorted train values (a blank cell, or a value train never had, is missing: NaN). The
encoding is saved in blend.json (key "meta") so the Kaggle kernel codes the test table exactly so.

`encode` gives one float column per metadata column; the stackers (`lgbm`, `logreg`, `catboost`,
META_BLENDS) take them as the last columns of X, after the probabilities, and say how many with the
parameter `meta_kinds` ("num" / "cat" per column). Inside each training fold: lgbm takes categorical codes
as categorical features and NaN as missing; catboost takes them as cat_features; logreg imputes numeric
columns with the fold's median, standardises them, and one-hot codes the categories (see MetaFeatures).
Blends that take no features (vote, mean, gmean, rank, weights, ...) ignore metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Competition
from pipeline.core.data import read_csv_text
from pipeline.core.errors import ConfigError, DataError

META_BLENDS = ("lgbm", "logreg", "catboost")  # the blends that take metadata (and their `+thr` variants)


def takes_meta(name: str) -> bool:
    """Whether the blend `name` (or its `+thr` variant) takes metadata columns."""
    return name.split("+")[0] in META_BLENDS


def test_table_path(comp: Competition) -> Path:
    """The table the test rows' metadata comes from: `test_csv`, else the sample submission."""
    return comp.data_dir / comp.test_csv if comp.test_csv else comp.sample_submission_path


def _columns(comp: Competition, path: Path, df: pd.DataFrame, hint: str) -> None:
    missing = [c for c in [comp.id_col, *comp.meta_cols] if c not in df.columns]
    if missing:
        raise ConfigError(f"competition key meta_cols: {path} has no column(s) {', '.join(missing)} "
                          f"(it has {', '.join(map(str, df.columns[:12]))}){hint}")


def read_meta(comp: Competition, split: str, ids: list[str]) -> pd.DataFrame:
    """The meta_cols of train.csv ("train") or of the test table ("test"), one row per id in `ids`' order,
    as text. ConfigError naming the file and columns when a column is missing; DataError naming ids the
    table lacks."""
    path = comp.train_csv_path if split == "train" else test_table_path(comp)
    hint = ("" if split == "train" or comp.test_csv else
            "; set the competition key test_csv to the test table holding the metadata columns")
    df = read_csv_text(path, f" (competition key {'train_csv' if split == 'train' else 'test_csv'})")
    _columns(comp, path, df, hint)
    df = df.drop_duplicates(comp.id_col).set_index(comp.id_col)
    absent = [i for i in ids if i not in df.index]
    if absent:
        raise DataError(f"{path}: no row for {len(absent)} {split} id(s) ({', '.join(absent[:5])}); its metadata "
                        f"columns {', '.join(comp.meta_cols)} are needed for every {split} row")
    return df.loc[ids, comp.meta_cols].reset_index(drop=True)


def check_meta(comp: Competition) -> None:
    """meta_cols exist in train.csv and in the test table (for `make check` and `ensemble`)."""
    if not comp.meta_cols:
        return
    for split, path in (("train", comp.train_csv_path), ("test", test_table_path(comp))):
        df = read_csv_text(path).head(0)
        hint = "" if split == "train" or comp.test_csv else ("; set the competition key test_csv to the test "
                                                             "table holding the metadata columns")
        _columns(comp, path, df, hint)


def _number(text: pd.Series) -> pd.Series:
    return pd.to_numeric(text.str.strip().replace("", np.nan), errors="coerce")


@dataclass
class MetaEncoding:
    """Each metadata column's kind ("num" or "cat") and, for a categorical one, its train values in code order."""

    columns: list[str]
    kinds: list[str]
    values: dict[str, list[str]]

    @classmethod
    def fit(cls, train: pd.DataFrame) -> "MetaEncoding":
        kinds, values = [], {}
        for col in train.columns:
            text = train[col].astype(str)
            filled = text.str.strip() != ""
            if _number(text)[filled].notna().all():
                kinds.append("num")
            else:
                kinds.append("cat")
                values[col] = sorted(set(text[filled]))
        return cls(list(train.columns), kinds, values)

    def encode(self, table: pd.DataFrame) -> np.ndarray:
        """(n, len(columns)) float64: numbers (NaN: blank or not a number), category codes (NaN: blank or unseen)."""
        out = np.full((len(table), len(self.columns)), np.nan)
        for j, (col, kind) in enumerate(zip(self.columns, self.kinds)):
            text = table[col].astype(str)
            if kind == "num":
                out[:, j] = _number(text).to_numpy(dtype=np.float64)
            else:
                codes = {v: float(i) for i, v in enumerate(self.values[col])}
                out[:, j] = text.map(codes).to_numpy(dtype=np.float64)
        return out

    def export(self) -> dict:
        return {"columns": self.columns, "kinds": self.kinds, "values": self.values}

    @classmethod
    def from_export(cls, data: dict) -> "MetaEncoding":
        return cls(list(data["columns"]), list(data["kinds"]), {k: list(v) for k, v in data["values"].items()})

    def describe(self) -> str:
        return ", ".join(self.columns)


def train_meta(comp: Competition, train_ids: list[str]) -> tuple[MetaEncoding, np.ndarray] | None:
    """(the encoding fitted on train.csv, the training rows' encoded metadata), or None without meta_cols."""
    if not comp.meta_cols:
        return None
    table = read_meta(comp, "train", train_ids)
    enc = MetaEncoding.fit(table)
    return enc, enc.encode(table)


def test_meta(comp: Competition, enc: MetaEncoding, test_ids: list[str]) -> np.ndarray:
    """The test rows' metadata coded by the saved encoding (the kernel reads the test table in its data folder)."""
    return enc.encode(read_meta(comp, "test", test_ids))


# --- inside a stacker: the metadata part of X -----------------------------------------------------------------


def split_meta(X: np.ndarray, meta_kinds) -> tuple[np.ndarray, np.ndarray | None]:
    """X = [probabilities | metadata] -> (probabilities, metadata or None)."""
    k = len(meta_kinds or ())
    if not k:
        return X, None
    return X[:, :-k], np.asarray(X[:, -k:], dtype=np.float64)


def cat_index(meta_kinds, offset: int) -> list[int]:
    """The feature indexes of the categorical metadata columns when they follow `offset` other features."""
    return [offset + j for j, kind in enumerate(meta_kinds or ()) if kind == "cat"]


def with_meta(F: np.ndarray, M: np.ndarray | None, meta_kinds, repeat: int = 1, none=None):
    """(F with each row's metadata columns after it, repeated `repeat` times per row for per-class rows; the
    categorical columns' indexes), or (F, `none`) without metadata: the tree stackers' shared feature step."""
    if M is None:
        return F, none
    return np.hstack([F, np.repeat(M, repeat, axis=0)]), cat_index(meta_kinds, F.shape[1])


class MetaFeatures:
    """logreg's view of metadata, fitted on a training fold: numeric columns imputed with the fold's median and
    standardised; categorical codes one-hot (a code the fold lacks, or a missing one, is all zeros)."""

    def __init__(self, kinds, median=None, mean=None, scale=None, levels=None):
        self.kinds = list(kinds)
        self.median, self.mean, self.scale, self.levels = median, mean, scale, levels

    @classmethod
    def fit(cls, kinds, M: np.ndarray) -> "MetaFeatures":
        med, mean, scale, levels = [], [], [], []
        for j, kind in enumerate(kinds):
            col = M[:, j]
            seen = col[~np.isnan(col)]
            if kind == "num":
                m = float(np.median(seen)) if len(seen) else 0.0
                filled = np.where(np.isnan(col), m, col)
                s = float(filled.std())
                med.append(m), mean.append(float(filled.mean())), scale.append(s if s > 0 else 1.0), levels.append([])
            else:
                med.append(0.0), mean.append(0.0), scale.append(1.0)
                levels.append(sorted(int(v) for v in np.unique(seen)))
        return cls(kinds, med, mean, scale, levels)

    def transform(self, M: np.ndarray) -> np.ndarray:
        parts = []
        for j, kind in enumerate(self.kinds):
            col = M[:, j]
            if kind == "num":
                parts.append(((np.where(np.isnan(col), self.median[j], col) - self.mean[j]) / self.scale[j])[:, None])
            else:
                parts.append((col[:, None] == np.asarray(self.levels[j], dtype=np.float64)[None, :]).astype(float))
        return np.hstack(parts) if parts else np.zeros((len(M), 0))

    def export(self) -> dict:
        return {"kinds": self.kinds, "median": self.median, "mean": self.mean, "scale": self.scale,
                "levels": self.levels}

    @classmethod
    def from_export(cls, data: dict) -> "MetaFeatures":
        return cls(data["kinds"], data["median"], data["mean"], data["scale"], data["levels"])


def features_line(name: str, n_models: int, enc: MetaEncoding | None) -> str:
    """cv.md's line on what a stacker took: `lgbm: 3 models' probabilities + meta age, sex, site`."""
    what = f"{n_models} models' probabilities" if n_models != 1 else "1 model's probabilities"
    return f"{name}: {what}" + (f" + meta {enc.describe()}" if enc is not None and takes_meta(name) else "")
