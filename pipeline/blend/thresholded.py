"""`<name>+thr`: a classification blend, then thresholds fitted on its output on the training rows.

Ordinal (`Thresholded`): class cut points on the expected class index (qwk). Multilabel (`LabelThresholded`):
one threshold per label for the competition metric, moved to 0.5. Both export the inner blend's state and
the thresholds as JSON.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from pipeline.blend.base import one_hot, resolve_metric
from pipeline.core.metrics import Metric
from pipeline.core.thresholds import apply_thresholds, fit_label_thresholds, fit_thresholds


class ThresholdWrapper(ClassifierMixin, BaseEstimator):
    """A blend (`estimator`) and thresholds fitted on its output (`thresholds_`); exported as JSON with both."""

    learned = True

    def _fit_inner(self, X, y) -> None:
        self.estimator_ = clone(self.estimator).fit(X, y)
        self.n_classes_, self.n_features_in_ = self.estimator_.n_classes_, self.estimator_.n_features_in_
        self.classes_ = np.arange(self.n_classes_)

    def export_state(self) -> dict:
        check_is_fitted(self, "thresholds_")
        return {"class": type(self).__name__, "estimator": self.estimator_.export_state(),
                "thresholds": [float(t) for t in self.thresholds_]}

    @classmethod
    def import_state(cls, data: dict, load):
        """Inverse of export_state; `load` rebuilds the inner blend from its exported state."""
        inner = load(data["estimator"])
        est = cls(clone(inner))
        est.estimator_ = inner
        est.n_classes_, est.n_features_in_ = inner.n_classes_, inner.n_features_in_
        est.classes_ = np.arange(est.n_classes_)
        est.thresholds_ = np.asarray(data["thresholds"], dtype=np.float64)
        return est


class LabelThresholded(ThresholdWrapper):
    """Multilabel: a blend, then one threshold per label fitted on the training rows for the competition
    metric (pipeline.core.thresholds.fit_label_thresholds). Its output moves each label's threshold to 0.5,
    piecewise linearly (p < t: 0.5 p / t; else 0.5 + 0.5 (p - t) / (1 - t)), so ranks stay and every
    later step that cuts at 0.5 (scores, submissions) cuts at the tuned thresholds."""

    def __init__(self, estimator=None, metric: Metric | str | None = None):
        self.estimator = estimator
        self.metric = metric

    def fit(self, X, y):
        self._fit_inner(X, y)
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

    @classmethod
    def combine(cls, learners: list["LabelThresholded"], X_test, task: str = "multilabel") -> np.ndarray:
        """Fold-wise learners' test prediction: fold-averaged probabilities at fold-averaged thresholds."""
        p = np.mean([est.estimator_.predict_proba(X_test) for est in learners], axis=0)
        return cls.recentre(p, np.mean([est.thresholds_ for est in learners], axis=0))


class Thresholded(ThresholdWrapper):
    """Ordinal: a blend, then class thresholds on its expected class index fitted on the training rows."""

    def __init__(self, estimator=None):
        self.estimator = estimator

    def fit(self, X, y):
        self._fit_inner(X, y)
        self.thresholds_ = fit_thresholds(np.asarray(y, dtype=int), self.expected_value(X), self.n_classes_)
        return self

    def expected_value(self, X) -> np.ndarray:
        return self.estimator_.predict_proba(X) @ np.arange(self.n_classes_)

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "thresholds_")
        return one_hot(apply_thresholds(self.expected_value(X), self.thresholds_), self.n_classes_)

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)

    @classmethod
    def combine(cls, learners: list["Thresholded"], X_test, task: str = "ordinal") -> np.ndarray:
        """Fold-wise learners' test prediction: the fold-averaged expected value cut at the fold-averaged
        thresholds."""
        value = np.mean([est.expected_value(X_test) for est in learners], axis=0)
        cuts = np.mean([np.sort(est.thresholds_) for est in learners], axis=0)
        return one_hot(apply_thresholds(value, cuts), learners[0].n_classes_)

