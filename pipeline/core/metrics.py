"""Competition metrics: one registry for every task, a metric from your own file, per-label thresholds.

`get_metric(name, task, beta=2.0, k=5, greater_is_better=None, base_dir=None)` returns a `Metric`;
`metric.score(y, pred)` scores a prediction table and `metric.is_better(new, old)` knows which way is up.

What `y` and `pred` are, by task (the same for built-in metrics and for a metric from a file):

- binary, multiclass, ordinal: y is the class index per row, int (n,); pred is (n, C) probabilities
  (binary: C = 2, the positive class is the second column; a binary pred of shape (n,) is read as that
  column). Decisions are the argmax class.
- multilabel: y is the 0/1 matrix (n, C); pred is (n, C) per-label probabilities. Metrics that need
  decisions (accuracy, f1, f1_macro, f1_micro, f1_samples, fbeta) decide `pred >= thresholds`, one per
  label (default 0.5 each); they have `thresholded=True`, and
  `pipeline.core.thresholds.fit_label_thresholds` tunes them.
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
Loading the config reads the file without running it (it must parse and define the function with two
arguments); the file is imported, its top-level code run, only where the metric scores (training,
predict, ensemble, validate, ...). Training checks once, before the first epoch, that the function
returns a real number on a few validation rows (`Metric.ready`).

`row_logloss`, `logloss` and `quadratic_kappa` are the plain functions behind logloss and qwk. Fitting
thresholds (per-label multilabel thresholds, ordinal cut points) is in pipeline.core.thresholds.

This is a bottom-floor module: numpy at import, scikit-learn only inside the functions that need it.
"""

from __future__ import annotations

import difflib
import itertools
import math
import numbers
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.core.errors import ConfigError
from pipeline.core.metricfile import load_function, read_statically

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
        fn = self._function()
        try:
            value = fn(y.copy(), pred.astype(np.float64))  # a copy, float64 as documented
        except Exception as e:
            raise MetricError(f"metric {self.name!r}: {where} raised {type(e).__name__}: {e}") from e
        value = self._real(value)
        if not math.isfinite(value):
            raise MetricError(f"metric {self.name!r}: {where} returned {value}; a metric must return a finite number")
        return value

    def _real(self, value, what: str = "") -> float:
        """A metric's return value as a float; MetricError when it is not a real number."""
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value[()]
        if isinstance(value, bool) or isinstance(value, np.bool_) or not isinstance(value, numbers.Real):
            raise MetricError(f"metric {self.name!r}: {self.source} returned {value!r} ({type(value).__name__})"
                              f"{what}; a metric must return a real number")
        return float(value)

    def _function(self) -> Callable:
        """A metric from a file: its function, imported on first use (never at config load, so a file's
        top-level code runs only in the stages that score)."""
        if self._fn is None:
            path, _, function = self.source.rpartition(":")
            object.__setattr__(self, "_fn", _imported(self.name, Path(path), function))
        return self._fn

    def ready(self, y, n_columns: int) -> None:
        """Before training: import a metric from a file and check once, on a tiny input (up to 8 rows of `y`
        scored against their own labels as the prediction, `n_columns` columns), that it returns a real
        number; MetricError naming file:function when it does not. An exception or a NaN on so few rows
        proves nothing and is left to the real scoring. Built-in metrics: nothing to do."""
        if self.source is None or self.source in _PROBED:
            return
        fn = self._function()
        y = np.asarray(y)[:8]
        if self.task in ("regression", "multilabel"):
            pred = y.astype(np.float64)
        else:
            pred = np.eye(n_columns)[y.astype(np.int64)]
        try:
            y, pred = _prepare(self.task, y, pred)
            value = fn(y.copy(), pred.astype(np.float64))  # a copy, float64 as documented
        except Exception:
            return
        self._real(value, f" on a tiny input ({len(y)} validation rows scored against their own labels)")
        _PROBED.add(self.source)

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
    y, pred = np.asarray(y), _floats(pred)
    if task == "regression":
        y, pred = y.astype(np.float64), pred.astype(np.float64, copy=False)
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
        pred = pred.astype(np.float64, copy=False)
        pred = np.column_stack([1 - pred, pred])
    if y.ndim != 1 or pred.ndim != 2 or len(y) != len(pred):
        raise ValueError(f"{task}: y must be (n,) class indices and pred (n, C), got {y.shape} and {pred.shape}")
    if task == "binary" and pred.shape[1] != 2:
        raise ValueError(f"binary: pred must have 2 columns (negative, positive), got {pred.shape[1]}")
    yi = y.astype(np.int64)
    if len(y) and (not np.array_equal(yi, y) or yi.min() < 0 or yi.max() >= pred.shape[1]):
        raise ValueError(f"{task}: y must hold class indices 0..{pred.shape[1] - 1}")
    return yi, pred


def _floats(pred) -> np.ndarray:
    """pred as a float array without a copy when it is float32 or float64 already (a 100k x 1,000 float32
    table stays 400 MB, not 800); anything else as float64. Arithmetic on it casts to float64 itself."""
    pred = np.asarray(pred)
    return pred if pred.dtype in (np.float32, np.float64) else pred.astype(np.float64)


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
    # sklearn's accuracy_score, without importing sklearn (2 s) into every fold's process
    return float(np.mean(np.asarray(y).reshape(-1) == np.asarray(d).reshape(-1)))


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
    p = p.astype(np.float64, copy=False)
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
    y, proba = np.asarray(y, dtype=np.int64), _floats(proba)
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
_PROBED: set[str] = set()  # metrics from files whose return type `Metric.ready` has checked
_COUNTER = itertools.count()


def _custom_metric(name: str, task: str, file: Path, function: str, greater_is_better: bool) -> Metric:
    """A metric from a file, checked without running the file (its syntax, that it defines `function`
    taking two arguments); it is imported on first use (Metric._function)."""
    where = f"{file}:{function}"
    if not function.isidentifier():
        raise ConfigError(f"metric {name!r}: {function!r} is not a function name (write path/to/file.py:function)")
    if not file.is_file():
        raise ConfigError(f"metric {name!r}: file {file} not found (function {function!r})")
    read_statically(name, file, function)
    return Metric(name, task, greater_is_better, False, source=where)


def _imported(name: str, file: Path, function: str) -> Callable:
    """The function, imported once per version of the file."""
    stat = file.stat()
    key = (str(file), stat.st_mtime_ns, stat.st_size, function)
    if key not in _LOADED:
        _LOADED[key] = load_function(name, file, function, next(_COUNTER))
    return _LOADED[key]


# --- log loss per row and quadratic kappa (the report, the blends and the qwk metric use them) ---------------


ROW_CHUNK = 1024  # rows per float64 chunk in row_logloss


def row_logloss(task: str, y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Log loss of every row: probabilities clipped to [EPS, 1 - EPS], single-label rows renormalised;
    multilabel rows average their labels' binary log losses."""
    y, proba = np.asarray(y), _floats(proba)
    out = np.empty(len(proba), dtype=np.float64)
    for start in range(0, len(proba), ROW_CHUNK):  # in float64 chunks: no full-size temporaries
        rows = slice(start, start + ROW_CHUNK)
        p = np.clip(proba[rows].astype(np.float64), EPS, 1 - EPS)
        if task == "multilabel":
            yc = y[rows]
            out[rows] = -(yc * np.log(p) + (1 - yc) * np.log(1 - p)).mean(axis=1)
        else:
            out[rows] = -np.log(p[np.arange(len(p)), np.asarray(y[rows], dtype=int)] / p.sum(axis=1))
    return out


def logloss(task: str, y: np.ndarray, proba: np.ndarray) -> float:
    return float(row_logloss(task, y, proba).mean())


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
