"""Competition metrics on probability tables.

`score(metric, task, y, proba)`: y is the class index per row (n,) or the 0/1 matrix (n, C) for
multilabel; proba is (n, C). Each metric is a small function in a registry; `GREATER_IS_BETTER` says
which way is up.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, log_loss, roc_auc_score

EPS = 1e-7


def _labels(task: str, proba: np.ndarray) -> np.ndarray:
    return (proba >= 0.5).astype(int) if task == "multilabel" else proba.argmax(axis=1)


def accuracy(task: str, y: np.ndarray, proba: np.ndarray) -> float:
    if task == "multilabel":  # mean per-label accuracy
        return float((_labels(task, proba) == y).mean())
    return float(accuracy_score(y, _labels(task, proba)))


def logloss(task: str, y: np.ndarray, proba: np.ndarray) -> float:
    p = np.clip(proba, EPS, 1 - EPS)
    if task == "multilabel":
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    p = p / p.sum(axis=1, keepdims=True)
    return float(log_loss(y, p, labels=np.arange(proba.shape[1])))


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
    return float(cohen_kappa_score(y, proba.argmax(axis=1), weights="quadratic"))


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
