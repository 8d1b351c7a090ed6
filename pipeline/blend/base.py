"""What every blend shares: the array layout, the two estimator bases, and the output of either kind.

X = the models' predictions side by side, shape (n, n_models * n_classes), model-major (columns 0..C-1 are
model 0). A classification blend is a scikit-learn classifier (`Blend`: `predict_proba` (n, C), `predict`
the labels); a regression blend is a regressor (`RegressionBlend`: `predict` (n, T) values, like
`StackingRegressor`). `blend_output` asks either for its output by its kind. Both export their fitted state
as JSON-safe data (`export_state`, no pickle) and rebuild from it (`import_state`).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_regressor
from sklearn.utils.validation import check_is_fitted

from pipeline.blend.meta import split_meta
from pipeline.core.metrics import Metric, get_metric

LOG_EPS = 1e-6
DEFAULT_METRIC = {"regression": "rmse", "multilabel": "f1_samples"}  # when a blend is made without one

# Estimated seconds on a 2-core machine (`fit_seconds`; pipeline.blend.perclass says how the estimates were
# calibrated). A stacker whose joint formulation is estimated over FIT_BUDGET_S for one fit uses its
# per-class one. (`ensemble --method auto` skips a blend whose CV, every fold's fit, is estimated over the
# competition key `blend_budget_minutes`, default 5, and says so in cv.md.)
FIT_BUDGET_S = 60.0
CELL_S = 5e-9  # one elementwise pass over one (row, model, class) cell of X (numpy; measured as perclass says)


# --- array helpers -----------------------------------------------------------------------------


def work_dtype(X) -> np.dtype:
    """The float dtype blends compute and answer in: float32 input stays float32, anything else float64."""
    return np.dtype(np.float32) if np.asarray(X).dtype == np.float32 else np.dtype(np.float64)


def as_float(X) -> np.ndarray:
    """X as float32 or float64 (work_dtype), without a copy when it already is one."""
    return np.asarray(X, dtype=work_dtype(X))


def stack(P: np.ndarray) -> np.ndarray:
    """(n_models, n, C) -> (n, n_models * C), model-major columns, in P's float dtype (float32 stays float32).
    A view, without a copy, when P is a transposed view of an (n, n_models, C) array."""
    P = as_float(P)
    m, n, c = P.shape
    return P.transpose(1, 0, 2).reshape(n, m * c)


def unstack(X: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, n_models * C) -> (n_models, n, C), a view of X (float32 stays float32)."""
    X = as_float(X)
    n = X.shape[0]
    return X.reshape(n, -1, n_classes).transpose(1, 0, 2)


def normalise_rows(p: np.ndarray, in_place: bool = False) -> np.ndarray:
    """Rows scaled to sum to 1; an all-zero row becomes uniform. float32 stays float32. `in_place`: p (a float
    array the caller owns) is overwritten instead of copied: the same values, one (n, C) array fewer."""
    p = as_float(p)
    p = np.clip(p, 0.0, None, out=p if in_place else None)  # the one copy (none in place); divided in place
    s = p.sum(axis=1, keepdims=True, dtype=np.float64)
    np.divide(p, np.where(s > 0, s, 1.0), out=p, casting="unsafe")
    p[~(s[:, 0] > 0)] = 1.0 / p.shape[1]
    return p


def one_hot(index: np.ndarray, n_classes: int, dtype=np.float64) -> np.ndarray:
    out = np.zeros((len(index), n_classes), dtype=dtype)
    out[np.arange(len(index)), np.asarray(index, dtype=int)] = 1.0
    return out


def finish(task: str, p: np.ndarray, in_place: bool = False) -> np.ndarray:
    """Single-label rows renormalised (`in_place`: overwriting p, see normalise_rows); multilabel probabilities
    and regression values as they are."""
    return p if task in ("multilabel", "regression") else normalise_rows(p, in_place)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, LOG_EPS, 1 - LOG_EPS)
    return np.log(p) - np.log1p(-p)


def resolve_metric(metric: Metric | str | None, task: str) -> Metric:
    """A blend's `metric` parameter as a Metric: the object, a built-in name, or the task's default."""
    if isinstance(metric, Metric):
        return metric
    return get_metric(metric or DEFAULT_METRIC.get(task, "accuracy"), task)


def targets(task: str, y: np.ndarray, n_classes: int) -> list[tuple[np.ndarray, int]]:
    """(target vector, number of classes) per learner: one per label for multilabel, one per target column
    for regression (0 classes: a number), else one."""
    if task == "regression":
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        return [(y[:, j], 0) for j in range(y.shape[1])]
    if task == "multilabel":
        return [(np.asarray(y)[:, j].astype(int), 2) for j in range(n_classes)]
    return [(np.asarray(y).astype(int), n_classes)]


def assemble(task: str, parts: list[np.ndarray], n_classes: int) -> np.ndarray:
    """Per-learner outputs -> (n, n_classes): multilabel parts are P(label) vectors, regression parts values."""
    if task in ("multilabel", "regression"):
        return np.column_stack(parts)
    return normalise_rows(parts[0])


def blend_output(estimator, X) -> np.ndarray:
    """What a fitted blend says about X, by its kind: a regressor's values (n, T), a classifier's
    probabilities (n, C)."""
    return estimator.predict(X) if is_regressor(estimator) else estimator.predict_proba(X)


# --- the estimators' shared part ------------------------------------------------------------------


class BlendBase(BaseEstimator):
    """X (n, n_models * n_classes) -> one output column per class (regression: per target). Subclasses set
    `learned` and define `_predict(P, X)` (P: (n_models, n, C)), and `_fit`/`_export_fitted`/`_import_fitted`
    when they learn."""

    learned = False
    passes = 4  # passes over X's cells one fit and predict make, for the cost estimate (fit_seconds)

    def __init__(self, task: str = "multiclass", n_classes: int | None = None, metric: Metric | str | None = None,
                 seed: int = 0):
        self.task = task
        self.n_classes = n_classes
        self.metric = metric
        self.seed = seed

    def fit_seconds(self, n_rows: int, n_classes: int, n_models: int) -> float:
        """Estimated seconds of one fit on n_rows and its prediction (`passes` over the cells; stackers
        estimate their own)."""
        return self.passes * n_rows * n_classes * n_models * CELL_S

    def _X(self, X, fitting: bool = False) -> np.ndarray:
        X = as_float(X)  # float32 stays float32: no full float64 copy of X
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n, n_models * n_classes), got shape {X.shape}")
        if not fitting and X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} columns, the blend was fitted on {self.n_features_in_}")
        return X

    def fit(self, X, y):
        X = self._X(X, fitting=True)
        width = X.shape[1]
        X, self._meta_rows = split_meta(X, getattr(self, "meta_kinds", None))  # metadata columns: pipeline.blend.meta
        y = np.asarray(y)
        if self.n_classes is not None:
            c = int(self.n_classes)
        else:
            c = y.shape[1] if self.task in ("multilabel", "regression") else int(y.max()) + 1
        if X.shape[1] % c:
            raise ValueError(f"X has {X.shape[1]} columns, not a multiple of n_classes={c}")
        self.n_classes_ = c
        self.n_models_ = X.shape[1] // c
        self.n_features_in_ = width
        self.classes_ = np.arange(c)
        self._fit(unstack(X, c), X, y)
        self._meta_rows = None
        return self

    def _fit(self, P: np.ndarray, X: np.ndarray, y: np.ndarray) -> None:
        pass

    def _output(self, X) -> np.ndarray:
        check_is_fitted(self, "n_features_in_")
        X, self._meta_rows = split_meta(self._X(X), getattr(self, "meta_kinds", None))
        try:
            return self._predict(unstack(X, self.n_classes_), X)
        finally:
            self._meta_rows = None

    def _predict(self, P: np.ndarray, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

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
    def import_state(cls, data: dict, load=None) -> "BlendBase":
        """Inverse of export_state: a fitted blend that predicts exactly as the exported one. (`load`, the
        importer of nested states, is for wrappers; a blend has none.)"""
        est = cls(**data["params"])
        est.n_classes_, est.n_models_ = int(data["n_classes_"]), int(data["n_models_"])
        est.n_features_in_ = int(data["n_features_in_"])
        est.classes_ = np.arange(est.n_classes_)
        est._import_fitted(data.get("state", {}))
        return est

    def _import_fitted(self, state: dict) -> None:
        pass

    @classmethod
    def combine(cls, learners: list["BlendBase"], X_test, task: str) -> np.ndarray:
        """Fold-wise learners' test prediction: the mean of their outputs (summed one learner at a time)."""
        total = None
        for est in learners:
            out = blend_output(est, X_test)
            total = out.copy() if total is None else np.add(total, out, out=total)
        return finish(task, total / len(learners))


class Blend(ClassifierMixin, BlendBase):
    """A classification blend: `predict_proba` (n, n_classes), `predict` the class (multilabel: 0/1)."""

    def predict_proba(self, X) -> np.ndarray:
        return self._output(X)

    def predict(self, X) -> np.ndarray:
        p = self.predict_proba(X)
        return (p >= 0.5).astype(int) if self.task == "multilabel" else p.argmax(axis=1)


class RegressionBlend(RegressorMixin, BlendBase):
    """A regression blend: `predict` (n, n_targets) values, as scikit-learn's StackingRegressor."""

    def __init__(self, task: str = "regression", n_classes: int | None = None, metric: Metric | str | None = None,
                 seed: int = 0):
        super().__init__(task, n_classes, metric, seed)

    def fit(self, X, y):
        if self.task != "regression":
            raise ValueError(f"{type(self).__name__} blends regression targets, not task={self.task!r}")
        return super().fit(X, y)

    def predict(self, X) -> np.ndarray:
        return self._output(X)
