"""Per-image metadata (competition key `meta_cols`) beside the models' probabilities in the stackers.

The columns are read and coded by pipeline.core.meta (`MetaEncoding`, fitted on train.csv, saved in blend.json
under "meta" so the Kaggle kernel codes the test table exactly so). `encode` gives one float column per
metadata column; the stackers (`lgbm`, `logreg`, `catboost`, META_BLENDS) take them as the last columns of X,
after the probabilities, and say how many with the parameter `meta_kinds` ("num" / "cat" per column). Inside
each training fold: lgbm takes categorical codes as categorical features and NaN as missing; catboost takes
them as cat_features; logreg imputes numeric columns with the fold's median, standardises them, and one-hot
codes the categories (see MetaFeatures). Blends that take no features (vote, mean, gmean, rank, weights, ...)
ignore metadata.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.meta import MetaEncoding

META_BLENDS = ("lgbm", "logreg", "catboost")  # the blends that take metadata (and their `+thr` variants)


def takes_meta(name: str) -> bool:
    """Whether the blend `name` (or its `+thr` variant) takes metadata columns."""
    return name.split("+")[0] in META_BLENDS


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
