"""Competition metrics on probability tables.

`score(metric, task, y, proba)`: y is the class index per row (n,) or the 0/1 matrix (n, C) for
multilabel; proba is (n, C). Each metric is a small function in a registry; `GREATER_IS_BETTER` says
which way is up.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

EPS = 1e-7


def _labels(task: str, proba: np.ndarray) -> np.ndarray:
    return (proba >= 0.5).astype(int) if task == "multilabel" else proba.argmax(axis=1)


def accuracy(task: str, y: np.ndarray, proba: np.ndarray) -> float:
    if task == "multilabel":  # mean per-label accuracy
        return float((_labels(task, proba) == y).mean())
    return float(accuracy_score(y, _labels(task, proba)))


def row_logloss(task: str, y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Log loss of every row: probabilities clipped to [EPS, 1 - EPS], single-label rows renormalised;
    multilabel rows average their labels' binary log losses."""
    p = np.clip(np.asarray(proba, dtype=np.float64), EPS, 1 - EPS)
    if task == "multilabel":
        return -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=1)
    p = p / p.sum(axis=1, keepdims=True)
    return -np.log(p[np.arange(len(y)), np.asarray(y, dtype=int)])


def logloss(task: str, y: np.ndarray, proba: np.ndarray) -> float:
    return float(row_logloss(task, y, proba).mean())


def f1_macro(task: str, y: np.ndarray, proba: np.ndarray) -> float:
    if task == "multilabel":
        return float(f1_score(y, _labels(task, proba), average="macro", zero_division=0))
    return float(f1_score(y, _labels(task, proba), average="macro", labels=np.arange(proba.shape[1]), zero_division=0))


def auc(task: str, y: np.ndarray, proba: np.ndarray) -> float:
    if task == "multilabel":
        cols = [c for c in range(y.shape[1]) if 0 < y[:, c].sum() < len(y)]
        if not cols:
            return float("nan")
        return float(np.mean([roc_auc_score(y[:, c], proba[:, c]) for c in cols]))
    if proba.shape[1] == 2:
        return float(roc_auc_score(y, proba[:, 1])) if len(np.unique(y)) == 2 else float("nan")
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    p = proba / np.clip(proba.sum(axis=1, keepdims=True), EPS, None)
    return float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=np.arange(proba.shape[1])))


def qwk(task: str, y: np.ndarray, proba: np.ndarray) -> float:
    """Quadratic weighted kappa of the argmax class over the full class range (see quadratic_kappa)."""
    return quadratic_kappa(y, proba.argmax(axis=1), proba.shape[1])


METRICS: dict[str, Callable[[str, np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "logloss": logloss,
    "f1_macro": f1_macro,
    "auc": auc,
    "qwk": qwk,
}
GREATER_IS_BETTER = {"accuracy": True, "logloss": False, "f1_macro": True, "auc": True, "qwk": True}


def score(metric: str, task: str, y: np.ndarray, proba: np.ndarray) -> float:
    return METRICS[metric](task, np.asarray(y), np.asarray(proba, dtype=np.float64))


def is_better(metric: str, new: float, old: float | None) -> bool:
    if old is None or np.isnan(old):
        return not np.isnan(new)
    return new > old if GREATER_IS_BETTER[metric] else new < old


def quadratic_kappa(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Quadratic weighted kappa over the full class range 0..n_classes-1: a class absent from both y and pred
    still counts in the distances (sklearn's cohen_kappa_score would close the gap). 0 when undefined."""
    y, pred = np.asarray(y, dtype=int), np.asarray(pred, dtype=int)
    observed = np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / max(len(y), 1)
    idx = np.arange(n_classes)
    weights = (idx[:, None] - idx[None, :]) ** 2
    denominator = (weights * expected).sum()
    return float(1.0 - (weights * observed).sum() / denominator) if denominator > 0 else 0.0


# --- ordinal thresholds (used by the ensemble stage for metric qwk) -----------------------------


def apply_thresholds(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Class index per value: the number of (sorted) thresholds at or below it."""
    return np.searchsorted(np.sort(np.asarray(thresholds, dtype=np.float64)), np.asarray(values), side="right")


def fit_thresholds(
    y: np.ndarray, values: np.ndarray, n_classes: int, passes: int = 3, max_candidates: int = 64
) -> np.ndarray:
    """Cut points on a continuous score (e.g. the expected class index) that maximise quadratic kappa.

    Coordinate search, deterministic: start at 0.5, 1.5, ...; move one threshold at a time to the best
    candidate between its neighbours (midpoints of the observed values, at most `max_candidates`).
    """
    y, values = np.asarray(y, dtype=int), np.asarray(values, dtype=np.float64)
    thresholds = np.arange(n_classes - 1, dtype=np.float64) + 0.5
    uniq = np.unique(values)
    mids = (uniq[:-1] + uniq[1:]) / 2 if len(uniq) > 1 else uniq
    best = quadratic_kappa(y, apply_thresholds(values, thresholds), n_classes)
    for _ in range(passes):
        moved = False
        for j in range(n_classes - 1):
            lo = thresholds[j - 1] if j > 0 else -np.inf
            hi = thresholds[j + 1] if j < n_classes - 2 else np.inf
            cands = mids[(mids > lo) & (mids < hi)]
            if len(cands) > max_candidates:
                cands = np.quantile(cands, np.linspace(0, 1, max_candidates))
            for c in cands:
                trial = thresholds.copy()
                trial[j] = c
                s = quadratic_kappa(y, apply_thresholds(values, trial), n_classes)
                if s > best + 1e-12:
                    best, thresholds, moved = s, trial, True
        if not moved:
            break
    return thresholds
