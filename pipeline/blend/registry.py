"""The one list of blends: name, what it does, the tasks it serves, and its estimator classes.

Everything that names blends reads it: the CLI's `--method` help, `make_blend`, `candidate_names` (what
`auto` tries, in this order), and `import_blend_state` (which classes a saved blend.json may name). It
imports nothing heavy, so the CLI builds its help without numpy or scikit-learn: an entry's estimator
classes are imported when first asked for.

A classification entry's estimator is a classifier (`predict_proba` (n, C)); a regression entry's is a
regressor (`predict` (n, T)). An entry with both serves every task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from pipeline.core.config import TASKS
from pipeline.core.errors import ConfigError

AUTO = "auto"  # the method that scores every blend of the task and keeps the best honest CV
THRESHOLD_SUFFIX = "+thr"  # `<name>+thr`: the blend, then thresholds tuned on its output (ordinal, multilabel)
REGRESSION = "regression"
CLASS_TASKS = tuple(t for t in TASKS if t != REGRESSION)


def _simple():
    from pipeline.blend import simple  # numpy, scipy and scikit-learn only once a blend is made

    return simple


def _stackers():
    from pipeline.blend import stackers

    return stackers


def _catboost():
    from pipeline.blend import catboost_blend  # catboost itself only once a model is fitted or loaded

    return catboost_blend


@dataclass(frozen=True)
class BlendEntry:
    """One blend: `classifier` and `regressor` load its estimator class for class tasks and for regression
    (None: not offered there); `params` are fixed constructor parameters of this name."""

    name: str
    description: str
    classifier: Callable[[], type] | None = None
    regressor: Callable[[], type] | None = None
    params: dict = field(default_factory=dict, hash=False)

    @property
    def tasks(self) -> tuple[str, ...]:
        return (CLASS_TASKS if self.classifier else ()) + ((REGRESSION,) if self.regressor else ())

    def estimator_class(self, task: str) -> type:
        load = self.regressor if task == REGRESSION else self.classifier
        if load is None:
            raise ConfigError(unknown_method(self.name, task))
        return load()

    def classes(self) -> list[type]:
        return [load() for load in (self.classifier, self.regressor) if load is not None]

    def make(self, task: str, n_classes: int, metric, seed: int = 0):
        """The unfitted estimator for `task`."""
        return self.estimator_class(task)(task=task, n_classes=n_classes, metric=metric, seed=seed, **self.params)

    def help(self) -> str:
        kinds = [k for k, load in (("classes", self.classifier), ("regression", self.regressor)) if load]
        return f"{self.name}: {self.description} [{', '.join(kinds)}]"


BLENDS: dict[str, BlendEntry] = {}


def register(entry: BlendEntry) -> BlendEntry:
    if entry.name in BLENDS or entry.name == AUTO or entry.name.endswith(THRESHOLD_SUFFIX):
        raise ValueError(f"blend name {entry.name!r} is taken or reserved")
    BLENDS[entry.name] = entry
    return entry


for _entry in (
    BlendEntry("vote", "hard majority vote, ties to the highest mean probability",
               classifier=lambda: _simple().VoteBlend),
    BlendEntry("mean", "the mean of the models' predictions, soft voting",
               classifier=lambda: _simple().MeanBlend, regressor=lambda: _simple().MeanRegressor),
    BlendEntry("median", "the median of the models' predicted values", regressor=lambda: _simple().MedianRegressor),
    BlendEntry("gmean", "geometric mean of the probabilities, renormalised", classifier=lambda: _simple().GMeanBlend),
    BlendEntry("rank", "mean of per-column ranks scaled to 0..1", classifier=lambda: _simple().RankBlend),
    BlendEntry("weights", "weighted mean, Caruana greedy selection on the competition metric",
               classifier=lambda: _simple().WeightsBlend, regressor=lambda: _simple().WeightsRegressor),
    BlendEntry("weights_scipy", "weighted mean, SLSQP weights minimising log loss or squared error",
               classifier=lambda: _simple().WeightsBlend, regressor=lambda: _simple().WeightsRegressor,
               params={"optimizer": "scipy"}),
    BlendEntry("lgbm", "LightGBM stacker on the predictions, early-stopped on an inner split (at many classes, "
               "one booster over each row's candidate classes)",
               classifier=lambda: _stackers().LGBMStacker, regressor=lambda: _stackers().LGBMRegressionStacker),
    BlendEntry("logreg", "logistic regression stacker on log-probabilities (at many classes, a "
               "conditional logit, one weight per model)",
               classifier=lambda: _stackers().LogRegStacker),
    BlendEntry("catboost", "CatBoost stacker on the predictions, early-stopped on an inner split (at many "
               "classes, one model over each row's candidate classes)",
               classifier=lambda: _catboost().CatBoostStacker),
    BlendEntry("ridge", "ridge regression stacker per target", regressor=lambda: _stackers().RidgeStacker),
):
    register(_entry)
del _entry


def task_blends(task: str) -> tuple[str, ...]:
    """The blends offered for `task`, in the order `auto` tries them."""
    return tuple(name for name, entry in BLENDS.items() if task in entry.tasks)


def unknown_method(method: str, task: str) -> str:
    thr = "" if task == REGRESSION else f" (any of them + {THRESHOLD_SUFFIX!r} for tuned thresholds)"
    names = ", ".join((AUTO, *task_blends(task)))
    return f"unknown ensemble method {method!r} for task {task}; choose one of {names}{thr}"


def get_blend(method: str, task: str) -> BlendEntry:
    """The entry of `method` (without a `+thr` suffix); ConfigError naming the task's blends otherwise."""
    entry = BLENDS.get(method.removesuffix(THRESHOLD_SUFFIX))
    if entry is None or task not in entry.tasks or (task == REGRESSION and method.endswith(THRESHOLD_SUFFIX)):
        raise ConfigError(unknown_method(method, task))
    return entry


def methods_help() -> str:
    """The `--method` help: every name with what it does and the tasks it serves."""
    return "; ".join([f"{AUTO}: the best honest CV of the task's blends", *(e.help() for e in BLENDS.values())]) + (
        f". <name>{THRESHOLD_SUFFIX} adds tuned thresholds (ordinal qwk, thresholded multilabel metrics)")
