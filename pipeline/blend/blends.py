"""Blends and stackers of level-1 predictions, as scikit-learn estimators: the package's front door.

Every blend takes X = the models' predictions side by side, shape (n, n_models * n_classes) (model-major:
columns 0..C-1 are model 0). A classification blend is a classifier whose `predict_proba(X)` is
(n, n_classes); a regression blend is a regressor whose `predict(X)` is (n, n_targets) values;
`blend_output` asks either for its output by its kind.

Where they live:

- `registry`: the one list of blends (`BLENDS`: name -> description, tasks, estimator classes); the
  CLI's `--method` help, `make_blend`, `candidate_names` and `import_blend_state` all read it.
- `base`: the array layout (`stack`, `unstack`) and the estimator bases (`Blend`, `RegressionBlend`).
- `simple`: vote, mean, median, gmean, rank, weights, weights_scipy.
- `stackers`: lgbm, logreg, ridge; `perclass`: the per-class formulations lgbm and logreg use at many classes
  (cost linear in C) and the cost estimates that choose them (`plan_blend`).
- `thresholded`: `<name>+thr`, ordinal (`Thresholded`) class thresholds on the expected class index;
  multilabel (`LabelThresholded`) one threshold per label for the metric, moved to 0.5.

A fitted blend exports its state as JSON-safe data (`export_state`, no pickle) and `import_blend_state`
rebuilds it exactly: `ensemble` saves the chosen blend that way, `package` ships it and the Kaggle kernel
applies it. `FittedBlend` is the chosen blend as `ensemble` fitted it: one learner, or one per fold for
blends that learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.blend.base import (Blend, BlendBase, RegressionBlend, as_float, blend_output, one_hot, stack,
                                 unstack)
from pipeline.blend.registry import AUTO, BLENDS, THRESHOLD_SUFFIX, BlendEntry, get_blend, task_blends
from pipeline.blend.simple import (GMEAN_EPS, GMeanBlend, MeanBlend, MeanRegressor, MedianRegressor, RankBlend,
                                   VoteBlend, WeightsBlend, WeightsRegressor, blend_gmean, blend_mean, blend_rank,
                                   blend_vote, caruana_weights, scipy_weights)
from pipeline.blend.stackers import LGBMRegressionStacker, LGBMStacker, LogRegStacker, RidgeStacker
from pipeline.blend.thresholded import LabelThresholded, Thresholded, ThresholdWrapper
from pipeline.core.errors import ConfigError
from pipeline.core.metrics import Metric

__all__ = [
    "AUTO", "BLENDS", "GMEAN_EPS", "THRESHOLD_SUFFIX", "Blend", "BlendBase", "BlendEntry", "FittedBlend",
    "GMeanBlend", "LGBMRegressionStacker", "LGBMStacker", "LabelThresholded", "LogRegStacker", "MeanBlend",
    "MeanRegressor", "MedianRegressor", "RankBlend", "RegressionBlend", "RidgeStacker", "ThresholdWrapper",
    "Thresholded", "VoteBlend", "WeightsBlend", "WeightsRegressor", "blend_classes", "blend_gmean", "blend_mean",
    "blend_output", "blend_rank", "blend_test_prediction", "blend_vote", "candidate_names", "caruana_weights",
    "combine_tests", "import_blend_state", "make_blend", "one_hot", "plan_blend", "scipy_weights", "stack",
    "task_blends", "thresholds_apply", "unstack",
]

# blend.json files written before regression blends were regressors name the classifier's class with
# params task=regression; they load as these regressors (RidgeStacker kept its name).
LEGACY_REGRESSORS = {"MeanBlend": MeanRegressor, "MedianBlend": MedianRegressor, "WeightsBlend": WeightsRegressor,
                     "LGBMStacker": LGBMRegressionStacker}


def make_blend(name: str, task: str, n_classes: int, metric: Metric | str | None, seed: int = 0):
    """The unfitted estimator for a registry name; `<name>+thr` wraps it with thresholds (ordinal: class
    cut points on the expected class; multilabel: one threshold per label). ConfigError naming the task's
    blends for an unknown name."""
    est = get_blend(name, task).make(task, n_classes, metric, seed)
    if not name.endswith(THRESHOLD_SUFFIX):
        return est
    return LabelThresholded(est, metric) if task == "multilabel" else Thresholded(est)


def plan_blend(estimator, n_rows: int, n_classes: int, n_models: int, n_folds: int) -> float:
    """Fix a stacker's formulation for the rows each fold's fit sees, so that every fold fits the same one
    (a wrapper's inner blend; see stackers), and return the estimated seconds of the blend's CV: every
    fold's fit for a blend that learns (nested CV), one fit on all rows otherwise."""
    inner = estimator.estimator if isinstance(estimator, ThresholdWrapper) else estimator
    learned = bool(getattr(estimator, "learned", False))
    rows = round(n_rows * (n_folds - 1) / n_folds) if learned and n_folds > 1 else n_rows
    if "formulation" in inner.get_params(deep=False):
        inner.set_params(formulation=inner.formulation_for(rows, n_classes, n_models))
    return (n_folds if learned else 1) * inner.fit_seconds(rows, n_classes, n_models)


def thresholds_apply(metric: Metric) -> bool:
    """Blends get a `+thr` variant: ordinal qwk (class cut points), and multilabel metrics that decide at a
    threshold (f1, fbeta, accuracy, ...)."""
    return metric.name == "qwk" or (metric.task == "multilabel" and metric.thresholded)


def candidate_names(method: str, metric: Metric) -> list[str]:
    """The blends `ensemble --method` scores: the task's registry names for `auto` (each with its `+thr`
    variant where thresholds apply), else the one named."""
    if method == AUTO:
        names = list(task_blends(metric.task))
    else:
        get_blend(method, metric.task)  # ConfigError naming the task's blends
        names = [method]
    if thresholds_apply(metric):
        names = [v for n in names for v in ((n, n + THRESHOLD_SUFFIX) if not n.endswith(THRESHOLD_SUFFIX) else (n,))]
    return names


# --- fitted state: export and import ----------------------------------------------------------------


def blend_classes() -> dict[str, type]:
    """Every class an exported blend state may name: the registry's estimators and the threshold wrappers."""
    classes = {cls.__name__: cls for entry in BLENDS.values() for cls in entry.classes()}
    return {**classes, Thresholded.__name__: Thresholded, LabelThresholded.__name__: LabelThresholded}


def import_blend_state(data: dict):
    """A fitted blend (or threshold wrapper) from `export_state()` output."""
    name, classes = data.get("class"), blend_classes()
    if name in LEGACY_REGRESSORS and data.get("params", {}).get("task") == "regression":
        return LEGACY_REGRESSORS[name].import_state(data, import_blend_state)
    if name not in classes:
        raise ConfigError(f"unknown blend class {name!r} in exported blend state; known: {', '.join(sorted(classes))}")
    return classes[name].import_state(data, import_blend_state)


# --- the chosen blend, fitted ---------------------------------------------------------------------------


def combine_tests(learners: list, X_test: np.ndarray, task: str) -> np.ndarray:
    """The test prediction of fold-wise learners: the mean of their outputs (threshold wrappers: the
    fold-averaged prediction cut at the fold-averaged thresholds)."""
    return type(learners[0]).combine(learners, X_test, task)


def blend_test_prediction(learned: bool, learners: list, X_test: np.ndarray, task: str) -> np.ndarray:
    """The test prediction from fitted learners: fold-wise learners combined for a blend that learns,
    the one learner applied for a blend that learns nothing."""
    if learned:
        return combine_tests(learners, as_float(X_test), task)
    return blend_output(learners[0], X_test)


@dataclass
class FittedBlend:
    """A blend as `ensemble` fitted it for the test set, exportable to JSON and back."""

    method: str
    learned: bool
    learners: list
    meta: dict | None = None  # the metadata encoding (pipeline.core.meta) of a stacker fitted with meta_cols

    def with_meta(self, X_test: np.ndarray, comp, test_ids: list[str]) -> np.ndarray:
        """X_test with the test rows' metadata after it, coded as at fitting (read from the competition's
        test table), for a blend fitted with metadata; X_test itself otherwise."""
        if self.meta is None:
            return X_test
        from pipeline.core.meta import MetaEncoding, test_meta

        return np.hstack([X_test, test_meta(comp, MetaEncoding.from_export(self.meta), test_ids)])

    def predict_proba(self, X_test: np.ndarray, task: str) -> np.ndarray:
        """The blend's test output: probabilities (n, C), or values (n, T) for regression."""
        return blend_test_prediction(self.learned, self.learners, X_test, task)

    def export(self) -> dict:
        for learner in self.learners:
            if not hasattr(learner, "export_state"):
                raise ConfigError(f"blend {self.method!r} cannot be exported to JSON")
        meta = {"meta": self.meta} if self.meta is not None else {}
        return {"method": self.method, "learned": self.learned,
                "learners": [learner.export_state() for learner in self.learners], **meta}

    @classmethod
    def from_export(cls, data: dict) -> "FittedBlend":
        return cls(data["method"], bool(data["learned"]), [import_blend_state(s) for s in data["learners"]],
                   data.get("meta"))
