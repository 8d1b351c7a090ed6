"""`ensemble`: blend the level-1 tables in stacking/ into submissions/submission.csv and a CV report.

Inputs: `stacking/<model>.oof.csv` and `stacking/<model>.test.csv` (id + one probability column per
class, in class order). A model is any name with both files. Tables that miss or repeat ids, hold
NaN/Inf, or were made against another folds.csv (sidecar `folds_md5`) are refused.

Blends live in the registry `BLENDS` (name -> scikit-learn style estimator class). Every blend takes
X = the models' probabilities side by side, shape (n, n_models * n_classes) (model-major: columns
0..C-1 are model 0), and returns `predict_proba(X)` of shape (n, n_classes):

- `vote`: hard majority of the models' argmax; a tie goes to the tied class with the highest mean
  probability. Output: one-hot of the winner (multilabel: per label, the majority of p >= 0.5,
  a tie decided by mean p >= 0.5; output 0/1).
- `mean`: soft voting. `gmean`: geometric mean, probabilities clipped to GMEAN_EPS before the log,
  rows renormalised (multilabel: each label as a two-class problem, p and 1-p).
- `rank`: per-column ranks over the rows scaled to [0, 1], averaged over models; rows renormalised
  (binary: rank of the positive column; multilabel: per label, not renormalised).
- `weights`: non-negative model weights, Caruana greedy forward selection with replacement on the
  competition metric; `weights_scipy`: SLSQP on the simplex minimising log loss.
- `lgbm`: LightGBM on the concatenated probabilities (per label for multilabel), deterministic, early
  stopping on an inner split of its own training rows.
- `logreg`: logistic regression on log-probabilities (binary / multilabel: logits of the positive
  column, per label).

Honesty: a blend that learns (weights, weights_scipy, lgbm, logreg, and any blend with ordinal
thresholds) is scored by nested CV on the folds of folds.csv: fit on the other folds' OOF rows, predict
the held-out fold; its CV comes from those held-out predictions only. Its test prediction is the mean
of the fold-wise learners' test predictions. Blends that learn nothing are applied to all rows at once.

For metric qwk every blend also gets a `<name>+thr` variant: class thresholds on the expected class
index, fitted under the same nested rule; its prediction is a hard class (one-hot). Its test class is
the fold-averaged expected value cut at the fold-averaged thresholds.

`auto` (default) evaluates every blend and picks the best CV (ties: the first in registry order).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted
from tqdm import tqdm

from pipeline.config import Competition, ConfigError, config_hash
from pipeline.data import DataError, examples, class_names, encode_targets, read_sample, read_train
from pipeline.io import file_md5, write_json, write_text
from pipeline.metrics import GREATER_IS_BETTER, apply_thresholds, fit_thresholds, is_better, score

GMEAN_EPS = 1e-6
LOG_EPS = 1e-6
THRESHOLD_SUFFIX = "+thr"
TEST_PREDICTION_RULE = (
    "blends that learn: mean of the fold-wise learners' test predictions (nested CV); "
    "blends that learn nothing: applied once to the test tables"
)


class EnsembleError(DataError):
    """The stacking tables cannot be blended; the message says which file and why."""


# --- array helpers -----------------------------------------------------------------------------


def stack(P: np.ndarray) -> np.ndarray:
    """(n_models, n, C) -> (n, n_models * C), model-major columns."""
    P = np.asarray(P, dtype=np.float64)
    m, n, c = P.shape
    return P.transpose(1, 0, 2).reshape(n, m * c)


def unstack(X: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, n_models * C) -> (n_models, n, C)."""
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    return X.reshape(n, -1, n_classes).transpose(1, 0, 2)


def normalise_rows(p: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to 1; an all-zero row becomes uniform."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    s = p.sum(axis=1, keepdims=True)
    return np.where(s > 0, p / np.where(s > 0, s, 1.0), 1.0 / p.shape[1])


def one_hot(index: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(index), n_classes))
    out[np.arange(len(index)), np.asarray(index, dtype=int)] = 1.0
    return out


def _finish(task: str, p: np.ndarray) -> np.ndarray:
    return p if task == "multilabel" else normalise_rows(p)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, LOG_EPS, 1 - LOG_EPS)
    return np.log(p) - np.log1p(-p)


# --- the blends as functions of P (n_models, n, C) -------------------------------------------


def blend_vote(P: np.ndarray, task: str) -> np.ndarray:
    P = np.asarray(P, dtype=np.float64)
    m, n, c = P.shape
    mean = P.mean(axis=0)
    if task == "multilabel":
        votes = (P >= 0.5).sum(axis=0)
        return np.where(2 * votes > m, 1.0, np.where(2 * votes < m, 0.0, (mean >= 0.5).astype(float)))
    votes = np.zeros((n, c))
    for k in range(m):
        votes[np.arange(n), P[k].argmax(axis=1)] += 1
    tied = votes == votes.max(axis=1, keepdims=True)
    return one_hot(np.where(tied, mean, -np.inf).argmax(axis=1), c)


def blend_mean(P: np.ndarray, task: str) -> np.ndarray:
    return _finish(task, np.asarray(P, dtype=np.float64).mean(axis=0))


def blend_gmean(P: np.ndarray, task: str, eps: float = GMEAN_EPS) -> np.ndarray:
    P = np.asarray(P, dtype=np.float64)
    g = np.exp(np.log(np.clip(P, eps, 1.0)).mean(axis=0))
    if task == "multilabel":
        g0 = np.exp(np.log(np.clip(1.0 - P, eps, 1.0)).mean(axis=0))
        return g / (g + g0)
    return normalise_rows(g)


def _scaled_ranks(x: np.ndarray) -> np.ndarray:
    """Column-wise ranks over rows (ties averaged) scaled to [0, 1]."""
    n = x.shape[0]
    if n < 2:
        return np.full(x.shape, 0.5)
    return (rankdata(x, method="average", axis=0) - 1.0) / (n - 1.0)


def blend_rank(P: np.ndarray, task: str) -> np.ndarray:
    P = np.asarray(P, dtype=np.float64)
    if task == "binary":
        r = np.mean([_scaled_ranks(p[:, 1]) for p in P], axis=0)
        return np.column_stack([1.0 - r, r])
    r = np.mean([_scaled_ranks(p) for p in P], axis=0)
    return _finish(task, r)


def _fast_logloss(task: str, y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    if task == "multilabel":
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    p = p / p.sum(axis=1, keepdims=True)
    return float(-np.log(p[np.arange(len(y)), y.astype(int)]).mean())


def caruana_weights(P: np.ndarray, y: np.ndarray, task: str, metric: str, n_iter: int = 30) -> tuple[np.ndarray, list]:
    """Greedy forward selection with replacement: add the model that best improves the mean, keep the best step."""
    P = np.asarray(P, dtype=np.float64)
    m = P.shape[0]
    counts = np.zeros(m, dtype=int)
    total = np.zeros_like(P[0])
    best, best_counts, path = None, None, []
    for step in range(1, n_iter + 1):
        pick, pick_score = None, None
        for k in range(m):
            s = score(metric, task, y, (total + P[k]) / step)
            if is_better(metric, s, pick_score):
                pick, pick_score = k, s
        if pick is None:  # the metric is undefined here (e.g. AUC with one class)
            break
        counts[pick] += 1
        total += P[pick]
        path.append(pick_score)
        if is_better(metric, pick_score, best):
            best, best_counts = pick_score, counts.copy()
    if best_counts is None:
        return np.full(m, 1.0 / m), path
    return best_counts / best_counts.sum(), path


def scipy_weights(P: np.ndarray, y: np.ndarray, task: str) -> np.ndarray:
    """Weights on the simplex minimising log loss of the weighted mean (SLSQP)."""
    from scipy.optimize import minimize

    P = np.asarray(P, dtype=np.float64)
    m = P.shape[0]

    def loss(w):
        w = np.clip(w, 0, None)
        return _fast_logloss(task, y, np.tensordot(w / max(w.sum(), 1e-12), P, axes=1))

    res = minimize(
        loss, np.full(m, 1.0 / m), method="SLSQP", bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}], options={"maxiter": 200, "ftol": 1e-10},
    )
    w = np.clip(res.x, 0.0, None)
    return w / w.sum() if w.sum() > 0 else np.full(m, 1.0 / m)


# --- estimators (scikit-learn conventions) -----------------------------------------------------


class Blend(ClassifierMixin, BaseEstimator):
    """Base: X (n, n_models * n_classes) -> predict_proba (n, n_classes). Subclasses set `learned`."""

    learned = False

    def __init__(self, task: str = "multiclass", n_classes: int | None = None, metric: str = "accuracy", seed: int = 0):
        self.task = task
        self.n_classes = n_classes
        self.metric = metric
        self.seed = seed

    def _X(self, X, fitting: bool = False) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n, n_models * n_classes), got shape {X.shape}")
        if not fitting and X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} columns, the blend was fitted on {self.n_features_in_}")
        return X

    def fit(self, X, y):
        X = self._X(X, fitting=True)
        y = np.asarray(y)
        if self.n_classes is not None:
            c = int(self.n_classes)
        else:
            c = y.shape[1] if self.task == "multilabel" else int(y.max()) + 1
        if X.shape[1] % c:
            raise ValueError(f"X has {X.shape[1]} columns, not a multiple of n_classes={c}")
        self.n_classes_ = c
        self.n_models_ = X.shape[1] // c
        self.n_features_in_ = X.shape[1]
        self.classes_ = np.arange(c)
        self._fit(unstack(X, c), X, y)
        return self

    def _fit(self, P: np.ndarray, X: np.ndarray, y: np.ndarray) -> None:
        pass

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "n_features_in_")
        X = self._X(X)
        return self._predict(unstack(X, self.n_classes_), X)

    def _predict(self, P: np.ndarray, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, X) -> np.ndarray:
        p = self.predict_proba(X)
        return (p >= 0.5).astype(int) if self.task == "multilabel" else p.argmax(axis=1)

    # --- export / import of the fitted state as JSON-safe data (used by `package` and `kernel`) ---

    def export_state(self) -> dict:
        """The constructor parameters and fitted state as JSON-safe values (no pickle)."""
        check_is_fitted(self, "n_features_in_")
        return {"class": type(self).__name__, "params": self.get_params(deep=False),
                "n_classes_": int(self.n_classes_), "n_models_": int(self.n_models_),
                "n_features_in_": int(self.n_features_in_), "state": self._export_fitted()}

    def _export_fitted(self) -> dict:
        return {}

    @classmethod
    def import_state(cls, data: dict) -> "Blend":
        """Inverse of export_state: a fitted blend that predicts exactly as the exported one."""
        est = cls(**data["params"])
        est.n_classes_, est.n_models_ = int(data["n_classes_"]), int(data["n_models_"])
        est.n_features_in_ = int(data["n_features_in_"])
        est.classes_ = np.arange(est.n_classes_)
        est._import_fitted(data.get("state", {}))
        return est

    def _import_fitted(self, state: dict) -> None:
        pass


class VoteBlend(Blend):
    """Hard majority vote; ties go to the highest mean probability; output one-hot (0/1 per label)."""

    def _predict(self, P, X):
        return blend_vote(P, self.task)


class MeanBlend(Blend):
    """Soft voting: the mean probability."""

    def _predict(self, P, X):
        return blend_mean(P, self.task)


class GMeanBlend(Blend):
    """Geometric mean of probabilities clipped to `eps`, renormalised."""

    def __init__(self, task="multiclass", n_classes=None, metric="accuracy", seed=0, eps: float = GMEAN_EPS):
        super().__init__(task, n_classes, metric, seed)
        self.eps = eps

    def _predict(self, P, X):
        return blend_gmean(P, self.task, self.eps)


class RankBlend(Blend):
    """Mean of per-column ranks scaled to [0, 1] (ranks are taken over the rows predicted together)."""

    def _predict(self, P, X):
        return blend_rank(P, self.task)


class WeightsBlend(Blend):
    """Weighted mean of the models with non-negative weights summing to 1, searched on the training rows.

    optimizer 'greedy': Caruana forward selection with replacement (`n_iter` steps) on the competition
    metric; 'scipy': SLSQP minimising log loss.
    """

    learned = True

    def __init__(self, task="multiclass", n_classes=None, metric="accuracy", seed=0,
                 optimizer: str = "greedy", n_iter: int = 30):
        super().__init__(task, n_classes, metric, seed)
        self.optimizer = optimizer
        self.n_iter = n_iter

    def _fit(self, P, X, y):
        if self.optimizer == "greedy":
            self.weights_, self.path_ = caruana_weights(P, y, self.task, self.metric, self.n_iter)
        elif self.optimizer == "scipy":
            self.weights_, self.path_ = scipy_weights(P, y, self.task), []
        else:
            raise ValueError(f"optimizer must be 'greedy' or 'scipy', got {self.optimizer!r}")

    def _predict(self, P, X):
        return _finish(self.task, np.tensordot(self.weights_, P, axes=1))

    def _export_fitted(self) -> dict:
        return {"weights": [float(w) for w in self.weights_], "path": [float(v) for v in self.path_]}

    def _import_fitted(self, state: dict) -> None:
        self.weights_ = np.asarray(state["weights"], dtype=np.float64)
        self.path_ = list(state.get("path", []))


def _targets(task: str, y: np.ndarray, n_classes: int) -> list[tuple[np.ndarray, int]]:
    """(target vector, number of classes) per learner: one per label for multilabel, else one."""
    if task == "multilabel":
        return [(np.asarray(y)[:, j].astype(int), 2) for j in range(n_classes)]
    return [(np.asarray(y).astype(int), n_classes)]


def _assemble(task: str, parts: list[np.ndarray], n_classes: int) -> np.ndarray:
    """Per-learner outputs -> (n, n_classes): multilabel parts are P(label) vectors."""
    if task == "multilabel":
        return np.column_stack(parts)
    return normalise_rows(parts[0])


class LGBMStacker(Blend):
    """LightGBM on the concatenated probabilities; early stopping on an inner split of the training rows.

    Deterministic: fixed seed, `num_threads`, deterministic=True, force_row_wise=True. Multilabel: one
    binary booster per label, each on all columns. A target with one value gets a constant prediction.
    """

    learned = True

    def __init__(self, task="multiclass", n_classes=None, metric="accuracy", seed=0, n_estimators: int = 500,
                 learning_rate: float = 0.05, num_leaves: int = 8, min_child_samples: int = 10,
                 early_stopping_rounds: int = 30, inner_valid: float = 0.2, num_threads: int = 1):
        super().__init__(task, n_classes, metric, seed)
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.early_stopping_rounds = early_stopping_rounds
        self.inner_valid = inner_valid
        self.num_threads = num_threads

    def _params(self, n_cls: int) -> dict:
        params = {
            "objective": "binary" if n_cls == 2 else "multiclass",
            "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples, "seed": self.seed, "deterministic": True,
            "force_row_wise": True, "num_threads": self.num_threads, "verbose": -1, "feature_pre_filter": False,
        }
        if n_cls > 2:
            params["num_class"] = n_cls
        return params

    def _fit(self, P, X, y):
        import lightgbm as lgb
        from sklearn.model_selection import train_test_split

        self.boosters_, self.best_iterations_ = [], []
        for t, n_cls in _targets(self.task, y, self.n_classes_):
            if len(np.unique(t)) < 2:
                self.boosters_.append(np.bincount(t, minlength=n_cls) / len(t))
                self.best_iterations_.append(0)
                continue
            idx = np.arange(len(t))
            try:
                tr, va = train_test_split(idx, test_size=self.inner_valid, random_state=self.seed, stratify=t)
            except ValueError:
                tr, va = train_test_split(idx, test_size=self.inner_valid, random_state=self.seed)
            dtrain = lgb.Dataset(X[tr], t[tr], params={"verbose": -1})
            dvalid = lgb.Dataset(X[va], t[va], reference=dtrain)
            booster = lgb.train(
                self._params(n_cls), dtrain, num_boost_round=self.n_estimators, valid_sets=[dvalid],
                callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
            )
            self.boosters_.append(booster)
            self.best_iterations_.append(int(booster.best_iteration or self.n_estimators))

    def _predict(self, P, X):
        parts = []
        for booster, best in zip(self.boosters_, self.best_iterations_):
            if isinstance(booster, np.ndarray):  # a constant target: its class frequencies
                p = np.tile(booster, (len(X), 1))
            else:
                p = booster.predict(X, num_iteration=best)
                p = np.column_stack([1 - p, p]) if p.ndim == 1 else p
            parts.append(p[:, 1] if self.task == "multilabel" else p)
        return _assemble(self.task, parts, self.n_classes_)

    def _export_fitted(self) -> dict:
        boosters = [{"constant": [float(v) for v in b]} if isinstance(b, np.ndarray)
                    else {"model": b.model_to_string(num_iteration=-1)} for b in self.boosters_]
        return {"boosters": boosters, "best_iterations": [int(i) for i in self.best_iterations_]}

    def _import_fitted(self, state: dict) -> None:
        import lightgbm as lgb

        self.boosters_ = [np.asarray(b["constant"], dtype=np.float64) if "constant" in b
                          else lgb.Booster(model_str=b["model"]) for b in state["boosters"]]
        self.best_iterations_ = [int(i) for i in state["best_iterations"]]


class LogRegStacker(Blend):
    """Logistic regression on log-probabilities (multiclass) or logits of the positive column.

    Multilabel: one model per label on that label's logits from every model.
    """

    learned = True

    def __init__(self, task="multiclass", n_classes=None, metric="accuracy", seed=0, C: float = 1.0,
                 max_iter: int = 1000):
        super().__init__(task, n_classes, metric, seed)
        self.C = C
        self.max_iter = max_iter

    def _features(self, P: np.ndarray, label: int | None = None) -> np.ndarray:
        if self.task == "multilabel":
            return _logit(P[:, :, label]).T
        if self.n_classes_ == 2:
            return _logit(P[:, :, 1]).T
        return stack(np.log(np.clip(P, LOG_EPS, 1.0)))

    def _fit(self, P, X, y):
        from sklearn.linear_model import LogisticRegression

        self.estimators_ = []
        for j, (t, n_cls) in enumerate(_targets(self.task, y, self.n_classes_)):
            if len(np.unique(t)) < 2:
                self.estimators_.append(np.bincount(t, minlength=n_cls) / len(t))
                continue
            est = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)
            self.estimators_.append(est.fit(self._features(P, j), t))

    def _predict(self, P, X):
        parts = []
        n_out = 2 if self.task == "multilabel" else self.n_classes_
        for j, est in enumerate(self.estimators_):
            if isinstance(est, np.ndarray):
                p = np.tile(est, (P.shape[1], 1))
            else:
                p = np.zeros((P.shape[1], n_out))
                p[:, est.classes_] = est.predict_proba(self._features(P, j))
            parts.append(p[:, 1] if self.task == "multilabel" else p)
        return _assemble(self.task, parts, self.n_classes_)

    def _export_fitted(self) -> dict:
        out = []
        for est in self.estimators_:
            if isinstance(est, np.ndarray):
                out.append({"constant": [float(v) for v in est]})
            else:
                out.append({"params": est.get_params(), "coef": est.coef_.tolist(),
                            "intercept": est.intercept_.tolist(), "classes": est.classes_.tolist(),
                            "n_iter": np.asarray(est.n_iter_).tolist()})
        return {"estimators": out}

    def _import_fitted(self, state: dict) -> None:
        from sklearn.linear_model import LogisticRegression

        self.estimators_ = []
        for e in state["estimators"]:
            if "constant" in e:
                self.estimators_.append(np.asarray(e["constant"], dtype=np.float64))
                continue
            est = LogisticRegression(**e["params"])
            est.coef_ = np.asarray(e["coef"], dtype=np.float64)
            est.intercept_ = np.asarray(e["intercept"], dtype=np.float64)
            est.classes_ = np.asarray(e["classes"])
            est.n_features_in_ = est.coef_.shape[1]
            est.n_iter_ = np.asarray(e["n_iter"])
            self.estimators_.append(est)


class Thresholded(ClassifierMixin, BaseEstimator):
    """Ordinal: a blend, then class thresholds on its expected class index fitted on the training rows."""

    learned = True

    def __init__(self, estimator=None):
        self.estimator = estimator

    def fit(self, X, y):
        self.estimator_ = clone(self.estimator).fit(X, y)
        self.n_classes_ = self.estimator_.n_classes_
        self.n_features_in_ = self.estimator_.n_features_in_
        self.classes_ = np.arange(self.n_classes_)
        self.thresholds_ = fit_thresholds(np.asarray(y, dtype=int), self.expected_value(X), self.n_classes_)
        return self

    def expected_value(self, X) -> np.ndarray:
        return self.estimator_.predict_proba(X) @ np.arange(self.n_classes_)

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "thresholds_")
        return one_hot(apply_thresholds(self.expected_value(X), self.thresholds_), self.n_classes_)

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)

    def export_state(self) -> dict:
        check_is_fitted(self, "thresholds_")
        return {"class": "Thresholded", "estimator": self.estimator_.export_state(),
                "thresholds": [float(t) for t in self.thresholds_]}

    @classmethod
    def import_state(cls, data: dict) -> "Thresholded":
        inner = import_blend_state(data["estimator"])
        est = cls(clone(inner))
        est.estimator_ = inner
        est.n_classes_, est.n_features_in_ = inner.n_classes_, inner.n_features_in_
        est.classes_ = np.arange(est.n_classes_)
        est.thresholds_ = np.asarray(data["thresholds"], dtype=np.float64)
        return est


def import_blend_state(data: dict):
    """A fitted blend (or Thresholded) from `export_state()` output."""
    classes = {c.__name__: c for c in (VoteBlend, MeanBlend, GMeanBlend, RankBlend, WeightsBlend, LGBMStacker,
                                       LogRegStacker, Thresholded)}
    if data.get("class") not in classes:
        raise ConfigError(f"unknown blend class {data.get('class')!r} in exported blend state")
    return classes[data["class"]].import_state(data)


def blend_test_prediction(learned: bool, learners: list, X_test: np.ndarray, task: str) -> np.ndarray:
    """The test prediction exactly as `evaluate_blend` makes it from fitted learners."""
    if learned:
        return _combine_tests(learners, np.asarray(X_test, dtype=np.float64), task)
    return learners[0].predict_proba(X_test)


BLENDS: dict[str, type[Blend] | partial] = {
    "vote": VoteBlend,
    "mean": MeanBlend,
    "gmean": GMeanBlend,
    "rank": RankBlend,
    "weights": WeightsBlend,
    "weights_scipy": partial(WeightsBlend, optimizer="scipy"),
    "lgbm": LGBMStacker,
    "logreg": LogRegStacker,
}
METHODS = ("auto", *BLENDS)


def make_blend(name: str, task: str, n_classes: int, metric: str, seed: int = 0):
    """The estimator for a registry name; `<name>+thr` wraps it with ordinal thresholds."""
    base = name.removesuffix(THRESHOLD_SUFFIX)
    if base not in BLENDS:
        raise ConfigError(f"unknown ensemble method {name!r}; choose one of {', '.join(METHODS)}")
    est = BLENDS[base](task=task, n_classes=n_classes, metric=metric, seed=seed)
    return Thresholded(est) if name.endswith(THRESHOLD_SUFFIX) else est


def candidate_names(method: str, metric: str) -> list[str]:
    if method != "auto" and method.removesuffix(THRESHOLD_SUFFIX) not in BLENDS:
        raise ConfigError(f"unknown ensemble method {method!r}; choose one of {', '.join(METHODS)}")
    names = list(BLENDS) if method == "auto" else [method]
    if metric == "qwk":
        names = [v for n in names for v in ((n, n + THRESHOLD_SUFFIX) if not n.endswith(THRESHOLD_SUFFIX) else (n,))]
    return names


# --- nested cross-validation -------------------------------------------------------------------


@dataclass
class BlendResult:
    name: str
    learned: bool
    oof: np.ndarray  # (n, C): nested held-out predictions for learned blends
    test: np.ndarray  # (t, C)
    cv: float
    fold_scores: dict[int, float]
    learners: list = field(default_factory=list)
    test_score: float | None = None


def fold_scores(metric: str, task: str, y: np.ndarray, proba: np.ndarray, fold: np.ndarray) -> dict[int, float]:
    return {int(k): score(metric, task, y[fold == k], proba[fold == k]) for k in np.unique(fold)}


def _combine_tests(learners: list, X_test: np.ndarray, task: str) -> np.ndarray:
    if isinstance(learners[0], Thresholded):
        value = np.mean([est.expected_value(X_test) for est in learners], axis=0)
        cuts = np.mean([np.sort(est.thresholds_) for est in learners], axis=0)
        return one_hot(apply_thresholds(value, cuts), learners[0].n_classes_)
    return _finish(task, np.mean([est.predict_proba(X_test) for est in learners], axis=0))


def nested_cv(estimator, X: np.ndarray, y: np.ndarray, fold: np.ndarray):
    """Fit on the other folds, predict each held-out fold; -> (oof (n, C), the fold-wise learners)."""
    X, y, fold = np.asarray(X, dtype=np.float64), np.asarray(y), np.asarray(fold)
    oof, learners = None, []
    for k in np.unique(fold):
        held = fold == k
        est = clone(estimator).fit(X[~held], y[~held])
        p = est.predict_proba(X[held])
        if oof is None:
            oof = np.zeros((len(X), p.shape[1]))
        oof[held] = p
        learners.append(est)
    return oof, learners


def evaluate_blend(name: str, estimator, X, y, fold, X_test, metric: str, task: str) -> BlendResult:
    """Honest CV of one blend: nested for learned blends, one pass over all rows otherwise."""
    learned = bool(getattr(estimator, "learned", False))
    if learned:
        oof, learners = nested_cv(estimator, X, y, fold)
    else:
        est = clone(estimator).fit(X, y)
        oof, learners = est.predict_proba(X), [est]
    test = blend_test_prediction(learned, learners, X_test, task)
    return BlendResult(name, learned, oof, test, score(metric, task, y, oof),
                       fold_scores(metric, task, y, oof, fold), learners)


# --- the stage ---------------------------------------------------------------------------------


@dataclass
class Level1:
    models: list[str]
    classes: list[str]
    train_ids: list[str]
    test_ids: list[str]
    y: np.ndarray
    fold: np.ndarray
    oof: np.ndarray  # (n_models, n, C)
    test: np.ndarray  # (n_models, t, C)


def find_models(stacking: str | Path) -> tuple[list[str], list[str]]:
    """Names with both <name>.oof.csv and <name>.test.csv; and the files that lack their partner."""
    stacking = Path(stacking)
    oof = {p.name.removesuffix(".oof.csv") for p in stacking.glob("*.oof.csv")}
    test = {p.name.removesuffix(".test.csv") for p in stacking.glob("*.test.csv")}
    lonely = [f"{n}.oof.csv (no {n}.test.csv)" for n in sorted(oof - test)]
    lonely += [f"{n}.test.csv (no {n}.oof.csv)" for n in sorted(test - oof)]
    return sorted(oof & test), lonely


def load_folds(folds_path: str | Path, comp: Competition, train_ids: list[str]) -> np.ndarray:
    from pipeline.folds import read_folds

    folds_path = Path(folds_path)
    folds = read_folds(folds_path, comp.id_col)
    if comp.id_col not in folds.columns or "fold" not in folds.columns:
        raise DataError(f"{folds_path}: expected columns '{comp.id_col}' and 'fold', found {list(folds.columns)}")
    ids = folds[comp.id_col].astype(str)
    lacking = pd.Index(train_ids).difference(ids)
    extra = pd.Index(ids).difference(pd.Index(train_ids))
    if len(lacking) or len(extra) or ids.duplicated().any():
        raise DataError(
            f"{folds_path}: does not match {comp.train_csv_path} ({len(lacking)} train ids missing, {len(extra)} "
            f"unknown, {int(ids.duplicated().sum())} repeated); rerun `make folds`"
        )
    return folds.set_index(ids)["fold"].loc[train_ids].to_numpy(dtype=int)


def load_level1(comp: Competition, stacking: str | Path = "stacking", folds_path: str | Path = "folds/folds.csv") -> Level1:
    """Every model's OOF and test tables, checked against train ids, sample ids and folds.csv."""
    from pipeline.tables import read_table

    train = read_train(comp)
    classes = class_names(comp, train)
    y = encode_targets(comp, train, classes)
    train_ids = train[comp.id_col].astype(str).tolist()
    test_ids = read_sample(comp)[comp.id_col].astype(str).tolist()
    fold = load_folds(folds_path, comp, train_ids)
    folds_md5 = file_md5(folds_path)
    stacking = Path(stacking)
    if not stacking.is_dir():
        raise EnsembleError(f"{stacking}: folder not found; run `make predict` or put <model>.oof.csv/.test.csv there")
    models, lonely = find_models(stacking)
    for name in lonely:
        print(f"note: ignoring {stacking / name}")
    if not models:
        raise EnsembleError(f"{stacking}: no model with both <model>.oof.csv and <model>.test.csv")
    oof, test = [], []
    for m in models:
        oof.append(read_table(stacking / f"{m}.oof.csv", comp.id_col, classes, train_ids, folds_md5).to_numpy())
        test.append(read_table(stacking / f"{m}.test.csv", comp.id_col, classes, test_ids, folds_md5).to_numpy())
    return Level1(models, classes, train_ids, test_ids, y, fold, np.stack(oof), np.stack(test))


def read_answers(comp: Competition, classes: list[str], test_ids: list[str]) -> np.ndarray | None:
    """True test labels from `answers` (id + target column(s)), encoded like y, in test_ids order."""
    if comp.answers is None:
        return None
    path = Path(comp.answers)
    if not path.is_file():
        print(f"note: answers file {path} (competition key 'answers') not found; no test scores")
        return None
    df = pd.read_csv(path, dtype={comp.id_col: str}, keep_default_na=False)
    missing_cols = [c for c in [comp.id_col, *comp.target_cols] if c not in df.columns]
    if missing_cols:
        raise DataError(f"{path}: column(s) {missing_cols} missing (competition key 'answers')")
    df = df.drop_duplicates(comp.id_col).set_index(comp.id_col)
    lacking = pd.Index(test_ids).difference(df.index)
    if len(lacking):
        raise DataError(f"{path}: no answer for {len(lacking)} test id(s): {examples(lacking)}")
    df = df.loc[test_ids].reset_index()
    if comp.task != "multilabel":
        values = df[comp.target]
        labels = [str(v) for v in pd.to_numeric(values)] if comp.task == "ordinal" else values.astype(str).tolist()
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise DataError(f"{path}: label(s) {examples(unknown)} are not classes {examples(classes, 12)}")
    return encode_targets(comp, df, classes)


def _num(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.5f}"


def build_report(comp, level1: Level1, model_rows: list[dict], blends: list[BlendResult], errors: dict[str, str],
                 chosen: str, has_answers: bool, submission: dict) -> tuple[str, dict]:
    folds = sorted(int(k) for k in np.unique(level1.fold))
    report = {
        "metric": comp.metric, "greater_is_better": GREATER_IS_BETTER[comp.metric], "task": comp.task,
        "n_rows": len(level1.train_ids), "n_test": len(level1.test_ids), "n_models": len(level1.models),
        "n_classes": len(level1.classes), "n_folds": len(folds), "classes": level1.classes, "chosen": chosen,
        "test_prediction": TEST_PREDICTION_RULE,
        "models": {r["name"]: {"cv": _num(r["cv"]), "folds": {str(k): _num(v) for k, v in r["folds"].items()},
                               "test": _num(r.get("test"))} for r in model_rows},
        "blends": {}, **submission,
    }
    for b in blends:
        entry = {"cv": _num(b.cv), "nested": b.learned, "folds": {str(k): _num(v) for k, v in b.fold_scores.items()},
                 "test": _num(b.test_score)}
        weights = [est.weights_ for est in b.learners if hasattr(est, "weights_")]
        if weights:
            entry["weights"] = dict(zip(level1.models, np.round(np.mean(weights, axis=0), 4).tolist()))
        report["blends"][b.name] = entry
    for name, err in errors.items():
        report["blends"][name] = {"cv": None, "error": err}

    arrow = "higher" if GREATER_IS_BETTER[comp.metric] else "lower"
    head = ["", "name", "kind", f"CV {comp.metric}"] + [f"fold {k}" for k in folds] + (["test"] if has_answers else [])
    lines = [
        "# CV report", "",
        f"{len(level1.train_ids)} rows, {len(level1.test_ids)} test rows, {len(level1.models)} models, "
        f"{len(level1.classes)} classes, {len(folds)} folds; task {comp.task}, metric {comp.metric} ({arrow} is better).",
        "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
    ]

    def row(mark, name, kind, cv, per_fold, test):
        cells = [mark, name, kind, _fmt(cv)] + [_fmt(per_fold.get(k)) for k in folds]
        return "| " + " | ".join(cells + ([_fmt(test)] if has_answers else [])) + " |"

    for r in model_rows:
        lines.append(row("", r["name"], "model", r["cv"], r["folds"], r.get("test")))
    for b in blends:
        lines.append(row("**chosen**" if b.name == chosen else "", b.name, "blend, nested CV" if b.learned else "blend",
                         b.cv, b.fold_scores, b.test_score))
    for name, err in errors.items():
        lines.append(row("", name, f"failed: {err}"[:80], None, {}, None))
    lines += ["", f"Test prediction: {TEST_PREDICTION_RULE}.",
              f"Submission: {submission.get('submission')} ({submission.get('format')}); "
              f"archived as {submission.get('history')}.", ""]
    return "\n".join(lines), report


def ensemble_inputs(comp: Competition, method: str, stacking: str | Path, folds_path: str | Path) -> dict:
    """What a blend depends on: the method, the competition config, and the md5 of every input file."""
    stacking = Path(stacking)
    files = sorted(p for p in stacking.iterdir() if p.is_file()) if stacking.is_dir() else []
    answers = Path(comp.answers) if comp.answers is not None else None
    md5 = {str(p): file_md5(p) for p in [Path(folds_path), comp.train_csv_path, comp.sample_submission_path,
                                         *([answers] if answers and answers.is_file() else []), *files]
           if p.is_file()}
    return {"method": method, "competition": config_hash(comp), "md5": md5}


def run_ensemble(comp: Competition, method: str = "auto", stacking: str | Path = "stacking",
                 folds_path: str | Path = "folds/folds.csv", out: str | Path = "submissions",
                 force: bool = False) -> dict:
    """The stage: blend, score honestly, pick, validate and write the submission and cv.md/cv.json.

    When cv.json records the same inputs (method, config, md5 of every table) and the submission is
    there, nothing is redone (no new history file); `force` reruns."""
    from pipeline.submission import archive_submission, infer_format, make_submission, write_submission
    from pipeline.tables import write_table

    names = candidate_names(method, comp.metric)
    out = Path(out)
    inputs = ensemble_inputs(comp, method, stacking, folds_path)
    if not force and (out / "cv.json").is_file() and (out / "submission.csv").is_file():
        previous = json.loads((out / "cv.json").read_text())
        if previous.get("inputs") == inputs:
            print(f"{out / 'submission.csv'}: inputs unchanged since the last ensemble (chosen: "
                  f"{previous.get('chosen')}); skipping. `--force` (make ensemble FORCE=1) reruns it")
            return previous
    level1 = load_level1(comp, stacking, folds_path)
    task, metric, C = comp.task, comp.metric, len(level1.classes)
    sample = read_sample(comp)
    fmt = infer_format(comp, sample, level1.classes)  # fail on a bad sample before any work
    y_test = read_answers(comp, level1.classes, level1.test_ids)
    X, X_test, y, fold = stack(level1.oof), stack(level1.test), level1.y, level1.fold

    model_rows = []
    for m, name in enumerate(level1.models):
        r = {"name": name, "cv": score(metric, task, y, level1.oof[m]),
             "folds": fold_scores(metric, task, y, level1.oof[m], fold)}
        if y_test is not None:
            r["test"] = score(metric, task, y_test, level1.test[m])
        model_rows.append(r)

    blends, errors = [], {}
    for name in tqdm(names, desc="blends", leave=False):
        est = make_blend(name, task, C, metric, comp.seed)
        try:
            b = evaluate_blend(name, est, X, y, fold, X_test, metric, task)
        except Exception as e:  # in auto, one failing blend must not sink the others
            if method != "auto":
                raise
            errors[name] = f"{type(e).__name__}: {e}"
            print(f"warning: blend {name} failed: {errors[name]}")
            continue
        if y_test is not None:
            b.test_score = score(metric, task, y_test, b.test)
        blends.append(b)
    if not blends:
        raise EnsembleError("every blend failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))

    best = None
    for b in blends:
        if best is None or is_better(metric, b.cv, best.cv):
            best = b
    df = make_submission(fmt, sample, level1.classes, level1.test_ids, best.test)
    path = write_submission(out / "submission.csv", df, fmt, sample, level1.classes, task)
    history = archive_submission(path, out / "history", best.name, best.cv)
    meta = {"method": best.name, "cv": _num(best.cv), "metric": metric, "folds_md5": file_md5(folds_path)}
    blend_table = write_table(out / "blend.test.csv", level1.test_ids, best.test, level1.classes, comp.id_col,
                              meta={**meta, "models": level1.models})
    write_table(out / "blend.oof.csv", level1.train_ids, best.oof, level1.classes, comp.id_col,  # for `make report`
                meta=meta)
    submission = {"submission": str(path), "history": str(history), "format": fmt.kind,
                  "blend_test_table": str(blend_table), "submission_test": _num(best.test_score)}
    text, report = build_report(comp, level1, model_rows, blends, errors, best.name, y_test is not None, submission)
    report["inputs"] = inputs
    write_text(out / "cv.md", text)
    write_json(out / "cv.json", report)
    print(text)
    print(f"chosen: {best.name} (CV {_fmt(best.cv)}"
          + (f", test {_fmt(best.test_score)}" if y_test is not None else "") + f") -> wrote {path}")
    return report


# --- CLI -------------------------------------------------------------------------------------


def cmd_ensemble(args: argparse.Namespace) -> None:
    from pipeline.cli import _competition

    run_ensemble(_competition(args), method=args.method, stacking=args.stacking, folds_path=args.folds, out=args.out,
                 force=args.force)


def cmd_validate(args: argparse.Namespace) -> None:
    from pipeline.cli import _competition
    from pipeline.submission import validate_file

    fmt = validate_file(args.path, _competition(args))
    print(f"{args.path}: valid ({fmt.kind}, header {list(fmt.columns)})")


def add_commands(sub) -> None:
    """Register `ensemble` and `validate` on an argparse subparsers object."""
    from pipeline.cli import _add_competition

    p = sub.add_parser("ensemble", help="blend stacking/ tables -> submissions/submission.csv, cv.md, cv.json")
    _add_competition(p)
    p.add_argument("--method", default="auto", choices=METHODS, help="blend to use; auto picks the best honest CV")
    p.add_argument("--stacking", default="stacking", help="folder of <model>.oof.csv and <model>.test.csv")
    p.add_argument("--folds", default="folds/folds.csv")
    p.add_argument("--out", default="submissions", help="output folder")
    p.add_argument("--force", action="store_true", help="rerun even when the inputs are unchanged")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("validate", help="check a submission CSV against sample_submission.csv")
    p.add_argument("path", help="the CSV to check")
    _add_competition(p)
    p.set_defaults(func=cmd_validate)
