"""Fitted thresholds: per-label decision thresholds for a thresholded multilabel metric, and ordinal cut points
on a continuous score that maximise quadratic kappa. Both are deterministic coordinate searches.

`fit_label_thresholds(metric, y, proba)` returns one threshold per label for a `Metric` (pipeline.core.metrics)
whose multilabel decisions are `pred >= thresholds`; `fit_thresholds(y, values, n_classes)` returns the cut
points that `apply_thresholds(values, cuts)` turns into class indices (the ensemble stage, for metric qwk).

A bottom-floor module: numpy at import, as pipeline.core.metrics.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from pipeline.core.metrics import DEFAULT_THRESHOLD, Metric, _base_name, _prepare, quadratic_kappa


# --- per-label thresholds (multilabel) -------------------------------------------------------------------


def fit_label_thresholds(metric: Metric, y, proba, grid: int = 41, passes: int = 2) -> np.ndarray:
    """Per-label thresholds (C,) that maximise (or minimise, by direction) a thresholded multilabel metric
    on (y, proba).

    Deterministic coordinate search: start at 0.5 for every label; a pass moves each label in turn to its
    best candidate (`grid` points over 0.05..0.95, plus `grid` quantiles of that label's probabilities),
    keeping the others fixed, and only for a strict improvement (ties go to the candidate nearest the
    current threshold); at most `passes` passes. Never worse than all-0.5 on the rows it was fitted on.
    A metric that does not threshold (auc, logloss, a metric from a file) gets 0.5 everywhere.
    """
    if metric.task != "multilabel":
        raise ValueError(f"per-label thresholds are for multilabel metrics, not task {metric.task}")
    y, proba = _prepare("multilabel", y, proba)
    n, C = proba.shape
    start = np.full(C, DEFAULT_THRESHOLD)
    if not metric.thresholded or n == 0:
        return start
    grid, passes = max(int(grid), 2), max(int(passes), 1)
    base_grid = np.linspace(0.05, 0.95, grid)
    cands = [np.unique(np.concatenate([base_grid, np.quantile(proba[:, c], np.linspace(0, 1, grid))]))
             for c in range(C)]
    sign = 1.0 if metric.greater_is_better else -1.0
    fast = _FAST.get(_base_name(metric.name))
    t = start.copy()
    counts = _Counts(y, proba >= t)
    current = metric.score(y, proba, t) if fast is None else fast(metric, counts, None, None)
    for _ in range(passes):
        moved = False
        for c in range(C):
            cand = cands[c]
            if fast is not None:
                scores = fast(metric, counts, c, proba[:, c], cand)
            else:
                scores = np.array([metric.score(y, proba, np.where(np.arange(C) == c, v, t)) for v in cand])
            s = sign * np.where(np.isnan(scores), -np.inf, scores)
            best = s.max()
            if best > sign * current + 1e-12 or (np.isnan(current) and np.isfinite(best)):
                ties = np.flatnonzero(s >= best - 1e-12)
                pick = ties[np.argmin(np.abs(cand[ties] - t[c]))]
                t[c], current, moved = cand[pick], scores[pick], True
                counts.set(c, proba[:, c] >= t[c])
        if not moved:
            break
    if not metric.is_better(metric.score(y, proba, t), metric.score(y, proba, start)):
        return start  # no gain (or a rounding difference): keep 0.5
    return t


class _Counts:
    """Multilabel decisions D against y as counts per row and per label, kept up to date as one label's
    decisions change, so that every candidate threshold of a label is scored in O(n)."""

    def __init__(self, y: np.ndarray, D: np.ndarray):
        self.y, self.D = np.asarray(y).astype(bool), np.array(D, dtype=bool)
        hit = self.y & self.D
        self.row_tp, self.row_pred, self.row_true = hit.sum(axis=1), self.D.sum(axis=1), self.y.sum(axis=1)
        self.col_tp, self.col_pred, self.col_true = hit.sum(axis=0), self.D.sum(axis=0), self.y.sum(axis=0)
        self.n = len(self.y)

    def set(self, c: int, column: np.ndarray) -> None:
        yc, old, column = self.y[:, c], self.D[:, c], np.asarray(column, dtype=bool)
        self.row_tp += (yc & column).astype(np.int64) - (yc & old)
        self.row_pred += column.astype(np.int64) - old
        self.col_tp[c], self.col_pred[c] = (yc & column).sum(), column.sum()
        self.D[:, c] = column


def _divide(num, den) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _sum_above(p: np.ndarray, values: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """For each candidate threshold t: the sum of `values` over the rows where p >= t (one sort, no (n, K))."""
    order = np.argsort(p, kind="stable")
    prefix = np.concatenate([[0.0], np.cumsum(np.asarray(values, dtype=np.float64)[order])])
    return prefix[-1] - prefix[np.searchsorted(p[order], cand, side="left")]


# Each scores a thresholded multilabel metric from _Counts: the current decisions (c None), or, for label c
# with probabilities p (n,), every candidate threshold in cand (K,) at once, the other labels fixed -> (K,).


def _fast_samples(metric: Metric, k: _Counts, c, p=None, cand=None):
    b2 = metric.beta**2 if _base_name(metric.name) == "fbeta" else 1.0
    if c is None:
        return float(_divide((1 + b2) * k.row_tp, b2 * k.row_true + k.row_pred).mean())
    yc, old = k.y[:, c], k.D[:, c]
    tp, pred = k.row_tp - (yc & old), k.row_pred - old  # label c off
    off = _divide((1 + b2) * tp, b2 * k.row_true + pred)
    on = _divide((1 + b2) * (tp + yc), b2 * k.row_true + pred + 1)
    return (off.sum() + _sum_above(p, on - off, cand)) / k.n


def _fast_micro(metric: Metric, k: _Counts, c, p=None, cand=None):
    tp, pred, true = k.col_tp.sum(), k.col_pred.sum(), k.col_true.sum()
    if c is None:
        return float(_divide(2 * tp, true + pred))
    tp_c = tp - k.col_tp[c] + _sum_above(p, k.y[:, c], cand)
    return _divide(2 * tp_c, true + pred - k.col_pred[c] + _sum_above(p, np.ones(k.n), cand))


def _fast_macro(metric: Metric, k: _Counts, c, p=None, cand=None):
    per = _divide(2 * k.col_tp, k.col_true + k.col_pred)
    if c is None:
        return float(per.mean())
    col = _divide(2 * _sum_above(p, k.y[:, c], cand), k.col_true[c] + _sum_above(p, np.ones(k.n), cand))
    return (per.sum() - per[c] + col) / len(per)


def _fast_accuracy(metric: Metric, k: _Counts, c, p=None, cand=None):
    wrong = k.col_pred + k.col_true - 2 * k.col_tp  # false positives + false negatives, per label
    size = k.n * len(wrong)
    if c is None:
        return float(1 - wrong.sum() / size)
    wrong_c = _sum_above(p, 1 - 2 * k.y[:, c].astype(np.int64), cand) + k.col_true[c]
    return 1 - (wrong.sum() - wrong[c] + wrong_c) / size


# The thresholded multilabel metrics, scored from counts for the threshold search only; the tests check
# them against Metric.score, which uses scikit-learn.
_FAST: dict[str, Callable] = {
    "accuracy": _fast_accuracy,
    "f1": _fast_micro,
    "f1_micro": _fast_micro,
    "f1_macro": _fast_macro,
    "f1_samples": _fast_samples,
    "fbeta": _fast_samples,
}


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
