"""Blends and stackers of level-1 predictions, as scikit-learn style estimators.

Every blend takes X = the models' probabilities side by side, shape (n, n_models * n_classes)
(model-major: columns 0..C-1 are model 0), and returns `predict_proba(X)` of shape (n, n_classes):

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
- `median` (all tasks, auto tries it for regression), `ridge` (regression): ridge per target column.
- `<name>+thr`: ordinal (`Thresholded`) class thresholds on the expected class index; multilabel
  (`LabelThresholded`) one threshold per label for the metric, moved to 0.5.
- Regression: X holds each model's predicted values; mean, median, weights (weights_scipy: squared
  error), lgbm (a regressor per target) and ridge; `predict_proba` returns the values (n, T).

Blends live in the registry `BLENDS` (name -> estimator class). A fitted blend exports its state as
JSON-safe data (`export_state`, no pickle) and `import_blend_state` rebuilds it exactly: `ensemble`
saves the chosen blend that way, `package` ships it and the Kaggle kernel applies it. `FittedBlend`
is the chosen blend as `ensemble` fitted it: one learner, or one per fold for blends that learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from pipeline.core.errors import ConfigError
from pipeline.core.metrics import Metric, apply_thresholds, fit_label_thresholds, fit_thresholds, get_metric, logloss

GMEAN_EPS = 1e-6
LOG_EPS = 1e-6
THRESHOLD_SUFFIX = "+thr"


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
    return p if task in ("multilabel", "regression") else normalise_rows(p)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, LOG_EPS, 1 - LOG_EPS)
    return np.log(p) - np.log1p(-p)


DEFAULT_METRIC = {"regression": "rmse", "multilabel": "f1_samples"}  # when a blend is made without one


def resolve_metric(metric: Metric | str | None, task: str) -> Metric:
    """A blend's `metric` parameter as a Metric: the object, a built-in name, or the task's default."""
    if isinstance(metric, Metric):
        return metric
    return get_metric(metric or DEFAULT_METRIC.get(task, "accuracy"), task)


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


def caruana_weights(P: np.ndarray, y: np.ndarray, task: str, metric: Metric | str, n_iter: int = 30
                    ) -> tuple[np.ndarray, list]:
    """Greedy forward selection with replacement: add the model that best improves the mean, keep the best step."""
    metric = resolve_metric(metric, task)
    P = np.asarray(P, dtype=np.float64)
    m = P.shape[0]
    counts = np.zeros(m, dtype=int)
    total = np.zeros_like(P[0])
    best, best_counts, path = None, None, []
    for step in range(1, n_iter + 1):
        pick, pick_score = None, None
        for k in range(m):
            s = metric.score(y, (total + P[k]) / step)
            if metric.is_better(s, pick_score):
                pick, pick_score = k, s
        if pick is None:  # the metric is undefined here (e.g. AUC with one class)
            break
        counts[pick] += 1
        total += P[pick]
        path.append(pick_score)
        if metric.is_better(pick_score, best):
            best, best_counts = pick_score, counts.copy()
    if best_counts is None:
        return np.full(m, 1.0 / m), path
    return best_counts / best_counts.sum(), path


def scipy_weights(P: np.ndarray, y: np.ndarray, task: str) -> np.ndarray:
    """Weights on the simplex minimising log loss (regression: squared error) of the weighted mean (SLSQP)."""
    from scipy.optimize import minimize

    P = np.asarray(P, dtype=np.float64)
    m = P.shape[0]
    y_values = np.asarray(y, dtype=np.float64).reshape(P.shape[1], -1)

    def loss(w):
        w = np.clip(w, 0, None)
        mean = np.tensordot(w / max(w.sum(), 1e-12), P, axes=1)
        return float(((mean - y_values) ** 2).mean()) if task == "regression" else logloss(task, y, mean)

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

    def __init__(self, task: str = "multiclass", n_classes: int | None = None, metric: Metric | str | None = None,
                 seed: int = 0):
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
            c = y.shape[1] if self.task in ("multilabel", "regression") else int(y.max()) + 1
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
        if self.task == "regression":
            return p
        return (p >= 0.5).astype(int) if self.task == "multilabel" else p.argmax(axis=1)

    # --- export / import of the fitted state as JSON-safe data (used by `package` and `kernel`) ---

    def export_state(self) -> dict:
        """The constructor parameters and fitted state as JSON-safe values (no pickle)."""
        check_is_fitted(self, "n_features_in_")
        params = {k: v for k, v in self.get_params(deep=False).items() if k != "metric"}  # used in fit only
        return {"class": type(self).__name__, "params": params,
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

    def __init__(self, task="multiclass", n_classes=None, metric=None, seed=0, eps: float = GMEAN_EPS):
        super().__init__(task, n_classes, metric, seed)
        self.eps = eps

    def _predict(self, P, X):
        return blend_gmean(P, self.task, self.eps)


class MedianBlend(Blend):
    """The median of the models' predictions (regression: robust to one model far off)."""

    def _predict(self, P, X):
        return _finish(self.task, np.median(np.asarray(P, dtype=np.float64), axis=0))


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

    def __init__(self, task="multiclass", n_classes=None, metric=None, seed=0,
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
    """(target vector, number of classes) per learner: one per label for multilabel, one per target column
    for regression (0 classes: a number), else one."""
    if task == "regression":
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        return [(y[:, j], 0) for j in range(y.shape[1])]
    if task == "multilabel":
        return [(np.asarray(y)[:, j].astype(int), 2) for j in range(n_classes)]
    return [(np.asarray(y).astype(int), n_classes)]


def _assemble(task: str, parts: list[np.ndarray], n_classes: int) -> np.ndarray:
    """Per-learner outputs -> (n, n_classes): multilabel parts are P(label) vectors, regression parts values."""
    if task in ("multilabel", "regression"):
        return np.column_stack(parts)
    return normalise_rows(parts[0])


class LGBMStacker(Blend):
    """LightGBM on the concatenated probabilities; early stopping on an inner split of the training rows.

    Deterministic: fixed seed, `num_threads`, deterministic=True, force_row_wise=True. Multilabel: one
    binary booster per label, each on all columns. A target with one value gets a constant prediction.
    """

    learned = True

    def __init__(self, task="multiclass", n_classes=None, metric=None, seed=0, n_estimators: int = 500,
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
            "objective": {0: "regression", 2: "binary"}.get(n_cls, "multiclass"),
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
            if len(np.unique(t)) < 2:  # a constant target: its class frequencies (regression: its value)
                self.boosters_.append(np.bincount(t, minlength=n_cls) / len(t) if n_cls else t[:1].copy())
                self.best_iterations_.append(0)
                continue
            idx = np.arange(len(t))
            try:
                tr, va = train_test_split(idx, test_size=self.inner_valid, random_state=self.seed,
                                          stratify=t if n_cls else None)
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
                if self.task == "regression":
                    parts.append(p)
                    continue
                p = np.column_stack([1 - p, p]) if p.ndim == 1 else p
            if self.task == "regression":
                parts.append(p[:, 0])
                continue
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

    def __init__(self, task="multiclass", n_classes=None, metric=None, seed=0, C: float = 1.0,
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


class RidgeStacker(Blend):
    """Regression: ridge regression per target column on every model's predictions of every target."""

    learned = True

    def __init__(self, task="regression", n_classes=None, metric=None, seed=0, alpha: float = 1.0):
        super().__init__(task, n_classes, metric, seed)
        self.alpha = alpha

    def _fit(self, P, X, y):
        from sklearn.linear_model import Ridge

        if self.task != "regression":
            raise ValueError("ridge stacks regression targets; use logreg or lgbm for classes")
        self.coef_, self.intercept_ = [], []
        for t, _ in _targets(self.task, y, self.n_classes_):
            est = Ridge(alpha=self.alpha).fit(X, t)
            self.coef_.append(est.coef_.astype(np.float64))
            self.intercept_.append(float(est.intercept_))

    def _predict(self, P, X):
        return np.column_stack([X @ c + b for c, b in zip(self.coef_, self.intercept_)])

    def _export_fitted(self) -> dict:
        return {"coef": [c.tolist() for c in self.coef_], "intercept": list(self.intercept_)}

    def _import_fitted(self, state: dict) -> None:
        self.coef_ = [np.asarray(c, dtype=np.float64) for c in state["coef"]]
        self.intercept_ = [float(b) for b in state["intercept"]]


class ThresholdWrapper(ClassifierMixin, BaseEstimator):
    """A blend (`estimator`) and thresholds fitted on its output (`thresholds_`); exported as JSON with both."""

    learned = True

    def export_state(self) -> dict:
        check_is_fitted(self, "thresholds_")
        return {"class": type(self).__name__, "estimator": self.estimator_.export_state(),
                "thresholds": [float(t) for t in self.thresholds_]}

    @classmethod
    def import_state(cls, data: dict):
        inner = import_blend_state(data["estimator"])
        est = cls(clone(inner))
        est.estimator_ = inner
        est.n_classes_, est.n_features_in_ = inner.n_classes_, inner.n_features_in_
        est.classes_ = np.arange(est.n_classes_)
        est.thresholds_ = np.asarray(data["thresholds"], dtype=np.float64)
        return est


class LabelThresholded(ThresholdWrapper):
    """Multilabel: a blend, then one threshold per label fitted on the training rows for the competition
    metric (pipeline.core.metrics.fit_label_thresholds). Its output moves each label's threshold to 0.5,
    piecewise linearly (p < t: 0.5 p / t; else 0.5 + 0.5 (p - t) / (1 - t)), so ranks stay and every
    later step that cuts at 0.5 (scores, submissions) cuts at the tuned thresholds."""

    def __init__(self, estimator=None, metric: Metric | str | None = None):
        self.estimator = estimator
        self.metric = metric

    def fit(self, X, y):
        self.estimator_ = clone(self.estimator).fit(X, y)
        self.n_classes_, self.n_features_in_ = self.estimator_.n_classes_, self.estimator_.n_features_in_
        self.classes_ = np.arange(self.n_classes_)
        self.thresholds_ = fit_label_thresholds(resolve_metric(self.metric, "multilabel"), np.asarray(y),
                                                self.estimator_.predict_proba(X))
        return self

    @staticmethod
    def recentre(p: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        t = np.clip(np.asarray(thresholds, dtype=np.float64), 1e-6, 1 - 1e-6)
        p = np.asarray(p, dtype=np.float64)
        return np.where(p < t, 0.5 * p / t, 0.5 + 0.5 * (p - t) / (1 - t))

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "thresholds_")
        return self.recentre(self.estimator_.predict_proba(X), self.thresholds_)

    def predict(self, X) -> np.ndarray:
        return (self.predict_proba(X) >= 0.5).astype(int)



class Thresholded(ThresholdWrapper):
    """Ordinal: a blend, then class thresholds on its expected class index fitted on the training rows."""

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



def import_blend_state(data: dict):
    """A fitted blend (or Thresholded) from `export_state()` output."""
    classes = {c.__name__: c for c in (VoteBlend, MeanBlend, MedianBlend, GMeanBlend, RankBlend, WeightsBlend,
                                       LGBMStacker, LogRegStacker, RidgeStacker, Thresholded, LabelThresholded)}
    if data.get("class") not in classes:
        raise ConfigError(f"unknown blend class {data.get('class')!r} in exported blend state")
    return classes[data["class"]].import_state(data)


BLENDS: dict[str, type[Blend] | partial] = {
    "vote": VoteBlend,
    "mean": MeanBlend,
    "median": MedianBlend,
    "gmean": GMeanBlend,
    "rank": RankBlend,
    "weights": WeightsBlend,
    "weights_scipy": partial(WeightsBlend, optimizer="scipy"),
    "lgbm": LGBMStacker,
    "logreg": LogRegStacker,
    "ridge": RidgeStacker,
}
METHODS = ("auto", *BLENDS)
# The blends `auto` tries, per kind of task (a method named explicitly must be one of them too).
REGRESSION_BLENDS = ("mean", "median", "weights", "weights_scipy", "lgbm", "ridge")
CLASS_BLENDS = ("vote", "mean", "gmean", "rank", "weights", "weights_scipy", "lgbm", "logreg")


def task_blends(task: str) -> tuple[str, ...]:
    return REGRESSION_BLENDS if task == "regression" else CLASS_BLENDS


def make_blend(name: str, task: str, n_classes: int, metric: Metric | None, seed: int = 0):
    """The estimator for a registry name; `<name>+thr` wraps it with thresholds (ordinal: class cut points
    on the expected class; multilabel: one threshold per label)."""
    base = name.removesuffix(THRESHOLD_SUFFIX)
    if base not in task_blends(task):
        raise ConfigError(f"unknown ensemble method {name!r} for task {task}; choose one of auto, "
                          f"{', '.join(task_blends(task))}")
    est = BLENDS[base](task=task, n_classes=n_classes, metric=metric, seed=seed)
    if not name.endswith(THRESHOLD_SUFFIX):
        return est
    return LabelThresholded(est, metric) if task == "multilabel" else Thresholded(est)


def thresholds_apply(metric: Metric) -> bool:
    """Blends get a `+thr` variant: ordinal qwk (class cut points), and multilabel metrics that decide at a
    threshold (f1, fbeta, accuracy, ...)."""
    return metric.name == "qwk" or (metric.task == "multilabel" and metric.thresholded)


def candidate_names(method: str, metric: Metric) -> list[str]:
    allowed = task_blends(metric.task)
    if method != "auto" and method.removesuffix(THRESHOLD_SUFFIX) not in allowed:
        raise ConfigError(f"unknown ensemble method {method!r} for task {metric.task}; choose one of auto, "
                          f"{', '.join(allowed)}")
    names = list(allowed) if method == "auto" else [method]
    if thresholds_apply(metric):
        names = [v for n in names for v in ((n, n + THRESHOLD_SUFFIX) if not n.endswith(THRESHOLD_SUFFIX) else (n,))]
    return names


# --- the chosen blend, fitted ---------------------------------------------------------------------------


def combine_tests(learners: list, X_test: np.ndarray, task: str) -> np.ndarray:
    """The test prediction of fold-wise learners: the mean of their predictions (Thresholded: the
    fold-averaged expected value cut at the fold-averaged thresholds)."""
    if isinstance(learners[0], Thresholded):
        value = np.mean([est.expected_value(X_test) for est in learners], axis=0)
        cuts = np.mean([np.sort(est.thresholds_) for est in learners], axis=0)
        return one_hot(apply_thresholds(value, cuts), learners[0].n_classes_)
    if isinstance(learners[0], LabelThresholded):  # fold-averaged probabilities at fold-averaged thresholds
        p = np.mean([est.estimator_.predict_proba(X_test) for est in learners], axis=0)
        return LabelThresholded.recentre(p, np.mean([est.thresholds_ for est in learners], axis=0))
    return _finish(task, np.mean([est.predict_proba(X_test) for est in learners], axis=0))


def blend_test_prediction(learned: bool, learners: list, X_test: np.ndarray, task: str) -> np.ndarray:
    """The test prediction from fitted learners: fold-wise learners combined for a blend that learns,
    the one learner applied for a blend that learns nothing."""
    if learned:
        return combine_tests(learners, np.asarray(X_test, dtype=np.float64), task)
    return learners[0].predict_proba(X_test)


@dataclass
class FittedBlend:
    """A blend as `ensemble` fitted it for the test set, exportable to JSON and back."""

    method: str
    learned: bool
    learners: list

    def predict_proba(self, X_test: np.ndarray, task: str) -> np.ndarray:
        return blend_test_prediction(self.learned, self.learners, X_test, task)

    def export(self) -> dict:
        for learner in self.learners:
            if not hasattr(learner, "export_state"):
                raise ConfigError(f"blend {self.method!r} cannot be exported to JSON")
        return {"method": self.method, "learned": self.learned,
                "learners": [learner.export_state() for learner in self.learners]}

    @classmethod
    def from_export(cls, data: dict) -> "FittedBlend":
        return cls(data["method"], bool(data["learned"]), [import_blend_state(s) for s in data["learners"]])
