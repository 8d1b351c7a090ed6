"""Competition metrics: one registry for every task, a metric from your own file, per-label thresholds.

`get_metric(name, task, beta=2.0, k=5, greater_is_better=None, base_dir=None)` returns a `Metric`;
`metric.score(y, pred)` scores a prediction table and `metric.is_better(new, old)` knows which way is up.

What `y` and `pred` are, by task (the same for built-in metrics and for a metric from a file):

- binary, multiclass, ordinal: y is the class index per row, int (n,); pred is (n, C) probabilities
  (binary: C = 2, the positive class is the second column; a binary pred of shape (n,) is read as that
  column). Decisions are the argmax class.
- multilabel: y is the 0/1 matrix (n, C); pred is (n, C) per-label probabilities. Metrics that need
  decisions (accuracy, f1, f1_macro, f1_micro, f1_samples, fbeta) decide `pred >= thresholds`, one per
  label (default 0.5 each); they have `thresholded=True`, and `fit_label_thresholds` tunes them.
- regression: y is the (n, T) float targets, pred the (n, T) predictions ((n,) is read as T = 1).

Built-in metrics (see METRIC_NAMES and metric_tasks), computed with scikit-learn where it has them;
"higher" means greater is better:

| name | tasks | direction |
| --- | --- | --- |
| accuracy | binary, multiclass, ordinal; multilabel (mean per-label accuracy) | higher |
| balanced_accuracy | binary, multiclass, ordinal | higher |
| logloss | binary, multiclass, ordinal (clipped to [EPS, 1-EPS], rows renormalised); multilabel (mean binary) | lower |
| auc | binary, multiclass, ordinal, multilabel (see below) | higher |
| average_precision | binary, multiclass, ordinal, multilabel (see below) | higher |
| f1 | binary (positive class); multilabel (micro) | higher |
| f1_macro, f1_micro | binary, multiclass, ordinal, multilabel | higher |
| f1_samples | multilabel | higher |
| fbeta (`beta`) | binary (positive class); multiclass, ordinal (macro); multilabel (samples: Planet's F2) | higher |
| mcc | binary, multiclass, ordinal | higher |
| qwk | ordinal (quadratic weighted kappa of the argmax over the full class range) | higher |
| map@k (`k`, or map@5) | binary, multiclass, ordinal (per row 1/rank of the true class in the top k, else 0) | higher |
| rmse, mae | regression (mean over target columns) | lower |
| r2 | regression (mean over target columns) | higher |

auc: binary on the positive column; multiclass and ordinal macro one-vs-rest on renormalised rows (an
all-zero row reads as uniform), NaN unless every class is present; multilabel the mean over the columns that
hold both values. average_precision: binary on the positive column; multiclass and ordinal macro
one-vs-rest over the classes present; multilabel macro over the columns with a positive.

Undefined scores are NaN (AUC or average precision with one class present, any metric on no rows).
F-scores count 0 where undefined (sklearn's zero_division=0): a multilabel row with no true and no
predicted label scores 0 in f1_samples and fbeta. map@k ranks tied probabilities by class order, as a
topk submission writes them.

A metric from your own file: set `metric: path/to/file.py:function` (a path relative to `base_dir`, the
folder the pipeline runs in, unless absolute) and `greater_is_better: true` or `false`. The function is

    def function(y_true: np.ndarray, y_pred: np.ndarray) -> float

with y_true and y_pred shaped as above for the competition's task (y_true int64 class indices or 0/1
matrix, float64 targets for regression; y_pred float64 probabilities, or predictions for regression,
always 2-D), copies it may change. It gets probabilities, never thresholded decisions, and must return a
finite real number; an exception or anything else stops the run with an error naming file:function.

The legacy helpers `score(metric, task, y, proba)`, `is_better(metric, new, old)` and `GREATER_IS_BETTER`
keep working over the same implementations, as do `row_logloss`, `logloss`, `quadratic_kappa` and the
ordinal cut points `apply_thresholds` / `fit_thresholds`.

This is a bottom-floor module: numpy at import, scikit-learn only inside the functions that need it.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import inspect
import itertools
import math
import numbers
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.core.errors import ConfigError

EPS = 1e-7
TASKS = ("binary", "multiclass", "multilabel", "ordinal", "regression")
SINGLE = ("binary", "multiclass", "ordinal")
CLASSIFICATION = (*SINGLE, "multilabel")
DEFAULT_THRESHOLD = 0.5


class MetricError(ConfigError):
    """A metric from a file failed while scoring (it raised, or returned something that is not a real number)."""


# --- the metric -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A competition metric bound to its task. Build it with `get_metric`.

    name: as configured ("f1_samples", "map@5", "path/to/file.py:function"); task: the competition task;
    greater_is_better: its direction; thresholded: multilabel decisions are `pred >= thresholds`.
    """

    name: str
    task: str
    greater_is_better: bool
    thresholded: bool = False
    beta: float = 2.0
    k: int = 5
    source: str | None = None  # a metric from a file: "<absolute path>:<function>"
    _fn: Callable | None = field(default=None, compare=False, repr=False)

    def score(self, y, pred, thresholds=None) -> float:
        """The metric of `pred` against `y` (shapes: see the module docstring), a float64; NaN where undefined.

        thresholds: thresholded multilabel metrics only (a number or one per label; default 0.5 each);
        ignored by every other metric.
        """
        y, pred = _prepare(self.task, y, pred)
        if self.source is not None:
            return self._score_custom(y, pred)
        if len(y) == 0:
            return float("nan")
        if self.task == "multilabel":
            decisions = pred >= (_thresholds(thresholds, pred.shape[1]) if self.thresholded else DEFAULT_THRESHOLD)
        elif self.task == "regression":
            decisions = None
        else:
            decisions = pred.argmax(axis=1)
        return float(_BUILTINS[_base_name(self.name)].fn(self, y, pred, decisions))

    def is_better(self, new: float, old: float | None) -> bool:
        """new beats old in this metric's direction; an old None/NaN is beaten by any new that is not NaN."""
        return _better(self.greater_is_better, new, old)

    def _score_custom(self, y: np.ndarray, pred: np.ndarray) -> float:
        where = self.source
        try:
            value = self._fn(y.copy(), pred.copy())
        except Exception as e:
            raise MetricError(f"metric {self.name!r}: {where} raised {type(e).__name__}: {e}") from e
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value[()]
        if isinstance(value, bool) or isinstance(value, np.bool_) or not isinstance(value, numbers.Real):
            raise MetricError(f"metric {self.name!r}: {where} returned {value!r} ({type(value).__name__}); "
                              "a metric must return a real number")
        value = float(value)
        if not math.isfinite(value):
            raise MetricError(f"metric {self.name!r}: {where} returned {value}; a metric must return a finite number")
        return value

    # A Metric is immutable: copies (sklearn's clone of an estimator holding one) are itself. A metric from a
    # file pickles as its absolute path and is imported again, since a file module's function cannot be.
    def __copy__(self) -> "Metric":
        return self

    def __deepcopy__(self, memo) -> "Metric":
        return self

    def __reduce__(self):
        if self.source is None:
            return Metric, (self.name, self.task, self.greater_is_better, self.thresholded, self.beta, self.k)
        return _reload, (self.name, self.task, self.greater_is_better, self.source)


def _reload(name: str, task: str, greater_is_better: bool, source: str) -> Metric:
    path, _, function = source.rpartition(":")
    return _custom_metric(name, task, Path(path), function, greater_is_better)


def _better(greater: bool, new: float, old: float | None) -> bool:
    if old is None or np.isnan(old):
        return not np.isnan(new)
    if np.isnan(new):
        return False
    return bool(new > old) if greater else bool(new < old)


# --- inputs -----------------------------------------------------------------------------------------


def _prepare(task: str, y, pred) -> tuple[np.ndarray, np.ndarray]:
    """Check and normalise (y, pred) for a task (see the module docstring); ValueError on a wrong shape."""
    y, pred = np.asarray(y), np.asarray(pred, dtype=np.float64)
    if task == "regression":
        y = y.astype(np.float64)
        y = y[:, None] if y.ndim == 1 else y
        pred = pred[:, None] if pred.ndim == 1 else pred
        if y.ndim != 2 or y.shape != pred.shape:
            raise ValueError(f"regression: y and pred must both be (n, T), got {y.shape} and {pred.shape}")
        return y, pred
    if task == "multilabel":
        if y.ndim != 2 or y.shape != pred.shape:
            raise ValueError(f"multilabel: y and pred must both be (n, C), got {y.shape} and {pred.shape}")
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("multilabel: y must be a 0/1 matrix")
        return y.astype(np.int64), pred
    if task not in SINGLE:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if task == "binary" and pred.ndim == 1:
        pred = np.column_stack([1 - pred, pred])
    if y.ndim != 1 or pred.ndim != 2 or len(y) != len(pred):
        raise ValueError(f"{task}: y must be (n,) class indices and pred (n, C), got {y.shape} and {pred.shape}")
    if task == "binary" and pred.shape[1] != 2:
        raise ValueError(f"binary: pred must have 2 columns (negative, positive), got {pred.shape[1]}")
    yi = y.astype(np.int64)
    if len(y) and (not np.array_equal(yi, y) or yi.min() < 0 or yi.max() >= pred.shape[1]):
        raise ValueError(f"{task}: y must hold class indices 0..{pred.shape[1] - 1}")
    return yi, pred


def _thresholds(thresholds, n_labels: int) -> np.ndarray:
    if thresholds is None:
        return np.full(n_labels, DEFAULT_THRESHOLD)
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (n_labels,)) if np.ndim(thresholds) == 0 \
        else np.asarray(thresholds, dtype=np.float64)
    if t.shape != (n_labels,):
        raise ValueError(f"thresholds: expected one per label ({n_labels}), got shape {t.shape}")
    return t



# --- built-in implementations: fn(metric, y, pred, decisions) -> float -------------------------------------


def _m_accuracy(m: Metric, y, p, d) -> float:
    if m.task == "multilabel":  # mean per-label accuracy
        return float((d == y).mean())
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(y, d))


def _m_balanced_accuracy(m: Metric, y, p, d) -> float:
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a predicted class absent from y
        return float(balanced_accuracy_score(y, d))


def _m_logloss(m: Metric, y, p, d) -> float:
    return logloss(m.task, y, p)


def _m_auc(m: Metric, y, p, d) -> float:
    from sklearn.metrics import roc_auc_score

    if m.task == "multilabel":
        cols = [c for c in range(y.shape[1]) if 0 < y[:, c].sum() < len(y)]
        if not cols:
            return float("nan")
        return float(np.mean([roc_auc_score(y[:, c], p[:, c]) for c in cols]))
    if p.shape[1] == 2:
        return float(roc_auc_score(y, p[:, 1])) if len(np.unique(y)) == 2 else float("nan")
    if len(np.unique(y)) < p.shape[1]:  # a class absent: its one-vs-rest AUC is undefined (sklearn: NaN)
        return float("nan")
    total = p.sum(axis=1, keepdims=True)
    q = np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / p.shape[1])  # an all-zero row: uniform
    return float(roc_auc_score(y, q, multi_class="ovr", average="macro", labels=np.arange(p.shape[1])))


def _m_average_precision(m: Metric, y, p, d) -> float:
    from sklearn.metrics import average_precision_score

    if m.task != "multilabel" and p.shape[1] == 2:
        return float(average_precision_score(y, p[:, 1])) if (y == 1).any() else float("nan")
    truth = y if m.task == "multilabel" else (y[:, None] == np.arange(p.shape[1])).astype(np.int64)
    cols = [c for c in range(truth.shape[1]) if truth[:, c].any()]
    if not cols:
        return float("nan")
    return float(np.mean([average_precision_score(truth[:, c], p[:, c]) for c in cols]))


def _f_args(m: Metric, p) -> dict:
    return {"zero_division": 0} if m.task == "multilabel" else {"zero_division": 0, "labels": np.arange(p.shape[1])}


def _m_f1(m: Metric, y, p, d) -> float:
    from sklearn.metrics import f1_score

    if m.task == "multilabel":
        return float(f1_score(y, d.astype(np.int64), average="micro", zero_division=0))
    return float(f1_score(y, d, average="binary", pos_label=1, zero_division=0))


def _m_f1_macro(m: Metric, y, p, d) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, d.astype(np.int64), average="macro", **_f_args(m, p)))


def _m_f1_micro(m: Metric, y, p, d) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, d.astype(np.int64), average="micro", **_f_args(m, p)))


def _m_f1_samples(m: Metric, y, p, d) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, d.astype(np.int64), average="samples", zero_division=0))


def _m_fbeta(m: Metric, y, p, d) -> float:
    from sklearn.metrics import fbeta_score

    if m.task == "multilabel":
        return float(fbeta_score(y, d.astype(np.int64), beta=m.beta, average="samples", zero_division=0))
    if m.task == "binary":
        return float(fbeta_score(y, d, beta=m.beta, average="binary", pos_label=1, zero_division=0))
    return float(fbeta_score(y, d, beta=m.beta, average="macro", **_f_args(m, p)))


def _m_mcc(m: Metric, y, p, d) -> float:
    from sklearn.metrics import matthews_corrcoef

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(matthews_corrcoef(y, d))


def _m_qwk(m: Metric, y, p, d) -> float:
    return quadratic_kappa(y, d, p.shape[1])


def _m_map_at_k(m: Metric, y, p, d) -> float:
    return map_at_k(y, p, m.k)


def _m_rmse(m: Metric, y, p, d) -> float:
    from sklearn.metrics import root_mean_squared_error

    return float(root_mean_squared_error(y, p))


def _m_mae(m: Metric, y, p, d) -> float:
    from sklearn.metrics import mean_absolute_error

    return float(mean_absolute_error(y, p))


def _m_r2(m: Metric, y, p, d) -> float:
    from sklearn.metrics import r2_score

    if len(y) < 2:
        return float("nan")
    return float(r2_score(y, p))


def map_at_k(y: np.ndarray, proba: np.ndarray, k: int) -> float:
    """Mean average precision at k for single-label rows: per row 1/rank of the true class among the k most
    likely classes (ties ranked by class order, as a topk submission writes them), 0 when it is not there."""
    y, proba = np.asarray(y, dtype=np.int64), np.asarray(proba, dtype=np.float64)
    if len(y) == 0:
        return float("nan")
    top = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    hit = top == y[:, None]
    return float(np.where(hit.any(axis=1), 1.0 / (hit.argmax(axis=1) + 1), 0.0).mean())


@dataclass(frozen=True)
class _Builtin:
    fn: Callable[[Metric, np.ndarray, np.ndarray, Any], float]
    tasks: tuple[str, ...]
    greater_is_better: bool
    thresholded: bool = False  # multilabel decisions at per-label thresholds


_BUILTINS: dict[str, _Builtin] = {
    "accuracy": _Builtin(_m_accuracy, CLASSIFICATION, True, True),
    "balanced_accuracy": _Builtin(_m_balanced_accuracy, SINGLE, True),
    "logloss": _Builtin(_m_logloss, CLASSIFICATION, False),
    "auc": _Builtin(_m_auc, CLASSIFICATION, True),
    "average_precision": _Builtin(_m_average_precision, CLASSIFICATION, True),
    "f1": _Builtin(_m_f1, ("binary", "multilabel"), True, True),
    "f1_macro": _Builtin(_m_f1_macro, CLASSIFICATION, True, True),
    "f1_micro": _Builtin(_m_f1_micro, CLASSIFICATION, True, True),
    "f1_samples": _Builtin(_m_f1_samples, ("multilabel",), True, True),
    "fbeta": _Builtin(_m_fbeta, CLASSIFICATION, True, True),
    "mcc": _Builtin(_m_mcc, SINGLE, True),
    "qwk": _Builtin(_m_qwk, ("ordinal",), True),
    "map@k": _Builtin(_m_map_at_k, SINGLE, True),
    "rmse": _Builtin(_m_rmse, ("regression",), False),
    "mae": _Builtin(_m_mae, ("regression",), False),
    "r2": _Builtin(_m_r2, ("regression",), True),
}
METRIC_NAMES: tuple[str, ...] = tuple(_BUILTINS)
GREATER_IS_BETTER: dict[str, bool] = {name: b.greater_is_better for name, b in _BUILTINS.items()}

_MAP_AT = re.compile(r"map@(\d+)")


def _base_name(name: str) -> str:
    """The registry key of a built-in name ("map@5" -> "map@k"); the name itself otherwise."""
    return "map@k" if _MAP_AT.fullmatch(name) else name


def _is_custom(name: str) -> bool:
    path, sep, _ = name.rpartition(":")
    return bool(sep) and path.endswith(".py")


def _names_for(task: str) -> list[str]:
    return [n for n, b in _BUILTINS.items() if task in b.tasks]


def _unknown(name: str, task: str | None) -> ConfigError:
    valid = _names_for(task) if task else list(METRIC_NAMES)
    close = difflib.get_close_matches(name.lower(), valid, n=1) or difflib.get_close_matches(
        name.lower(), METRIC_NAMES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "."
    where = f" for task {task}" if task else ""
    return ConfigError(f"unknown metric {name!r}{where}{hint} Metrics{where}: {', '.join(valid)}; "
                       "or your own, as path/to/file.py:function with greater_is_better")


def metric_tasks(name: str) -> tuple[str, ...]:
    """The tasks a built-in metric name applies to (a metric from a file applies to every task)."""
    if _is_custom(name):
        return TASKS
    base = _base_name(name)
    if base not in _BUILTINS:
        raise _unknown(name, None)
    return _BUILTINS[base].tasks


def get_metric(name: str, task: str, *, beta: float = 2.0, k: int = 5, greater_is_better: bool | None = None,
               base_dir: Path | None = None) -> Metric:
    """The Metric called `name` for `task`; ConfigError for an unknown name, a name that does not apply to the
    task, a bad beta or k, or a metric file that cannot be used (see the module docstring)."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"metric must be a name, got {name!r}")
    if _is_custom(name):
        if greater_is_better is None:
            raise ConfigError(f"metric {name!r} comes from a file, so its direction must be declared: set the "
                              "competition key `greater_is_better` to true (higher is better) or false")
        path, _, function = name.rpartition(":")
        file = Path(path).expanduser()
        if not file.is_absolute():
            file = Path(base_dir if base_dir is not None else ".") / file
        return _custom_metric(name, task, file.resolve(), function, bool(greater_is_better))
    base = _base_name(name)
    if base not in _BUILTINS:
        raise _unknown(name, task)
    spec = _BUILTINS[base]
    if task not in spec.tasks:
        raise ConfigError(f"metric {name!r} does not apply to task {task}; it applies to {', '.join(spec.tasks)}. "
                          f"Metrics for {task}: {', '.join(_names_for(task))}")
    if greater_is_better is not None and bool(greater_is_better) != spec.greater_is_better:
        raise ConfigError(f"metric {name!r} is {'greater' if spec.greater_is_better else 'lower'}-is-better; "
                          f"greater_is_better: {str(bool(greater_is_better)).lower()} contradicts it (the key is "
                          "for a metric from a file; leave it unset)")
    if name != base:  # map@5: the number wins
        k = int(_MAP_AT.fullmatch(name).group(1))
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ConfigError(f"metric {name!r}: k must be a whole number >= 1, got {k!r}")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not (0 < beta < math.inf):
        raise ConfigError(f"metric {name!r}: beta must be a number > 0, got {beta!r}")
    return Metric(name, task, spec.greater_is_better, spec.thresholded and task == "multilabel",
                  beta=float(beta), k=int(k))


# --- a metric from a file ---------------------------------------------------------------------------


_LOADED: dict[tuple, Callable] = {}
_COUNTER = itertools.count()


def _custom_metric(name: str, task: str, file: Path, function: str, greater_is_better: bool) -> Metric:
    where = f"{file}:{function}"
    if not function.isidentifier():
        raise ConfigError(f"metric {name!r}: {function!r} is not a function name (write path/to/file.py:function)")
    if not file.is_file():
        raise ConfigError(f"metric {name!r}: file {file} not found (function {function!r})")
    stat = file.stat()
    key = (str(file), stat.st_mtime_ns, stat.st_size, function)
    if key not in _LOADED:
        _LOADED[key] = _load_function(name, file, function)
    return Metric(name, task, greater_is_better, False, source=where, _fn=_LOADED[key])


def _load_function(name: str, file: Path, function: str) -> Callable:
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:10]
    module_name = f"_kfold_metric_{re.sub(r'[^0-9A-Za-z_]', '_', file.stem)}_{digest}_{next(_COUNTER)}"
    try:
        spec = importlib.util.spec_from_file_location(module_name, file)
        if spec is None or spec.loader is None:
            raise ImportError("not a Python source file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses, pickling by reference and the like look it up
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        sys.modules.pop(module_name, None)
        raise ConfigError(f"metric {name!r}: cannot import {file} (for function {function!r}): "
                          f"{type(e).__name__}: {e}") from None
    if not hasattr(module, function):
        callables = sorted(n for n, v in vars(module).items()
                           if callable(v) and not n.startswith("__") and not inspect.ismodule(v))
        close = difflib.get_close_matches(function, callables, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise ConfigError(f"metric {name!r}: {file} has no function {function!r}{hint} "
                          f"Its callables: {', '.join(callables) or 'none'}")
    fn = getattr(module, function)
    if not callable(fn):
        raise ConfigError(f"metric {name!r}: {file}:{function} is a {type(fn).__name__}, not a function")
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        raise ConfigError(f"metric {name!r}: {file}:{function} must take two arguments, "
                          f"(y_true, y_pred), but its signature is {inspect.signature(fn)}") from None
    except ValueError:  # no signature to read (a builtin): let it be
        pass
    return fn


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


# --- legacy helpers ---------------------------------------------------------------------------------------


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


def score(metric: str, task: str, y: np.ndarray, proba: np.ndarray) -> float:
    """Legacy: the built-in `metric` for `task` (decisions at 0.5 for multilabel). As before, a built-in is
    not refused for a task outside its list when its rule still computes (e.g. qwk on multiclass)."""
    base = _base_name(metric)
    if base not in _BUILTINS or task in _BUILTINS[base].tasks:
        return get_metric(metric, task).score(y, proba)
    spec = _BUILTINS[base]
    k = int(_MAP_AT.fullmatch(metric).group(1)) if metric != base else 5
    return Metric(metric, task, spec.greater_is_better, spec.thresholded and task == "multilabel", k=k).score(y, proba)


def is_better(metric: str, new: float, old: float | None) -> bool:
    """Legacy: new beats old for the built-in `metric` (old None/NaN: any new that is not NaN)."""
    base = _base_name(metric)
    if base not in _BUILTINS:
        raise _unknown(metric, None)
    return _better(_BUILTINS[base].greater_is_better, new, old)


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
