"""The blends that combine the models' predictions directly (weights at most), as functions and estimators.

- `vote`: hard majority of the models' argmax; a tie goes to the tied class with the highest mean
  probability. Output: one-hot of the winner (multilabel: per label, the majority of p >= 0.5,
  a tie decided by mean p >= 0.5; output 0/1).
- `mean`: soft voting. `gmean`: geometric mean, probabilities clipped to GMEAN_EPS before the log,
  rows renormalised (multilabel: each label as a two-class problem, p and 1-p).
- `rank`: per-column ranks over the rows scaled to [0, 1], averaged over models; rows renormalised
  (binary: rank of the positive column; multilabel: per label, not renormalised).
- `weights`: non-negative model weights, Caruana greedy forward selection with replacement on the
  competition metric; `weights_scipy`: SLSQP on the simplex minimising log loss (regression: squared error).
- Regression: `mean`, `median` and `weights` of each model's predicted values, as regressors.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from pipeline.blend.base import Blend, RegressionBlend, as_float, finish, normalise_rows, one_hot, resolve_metric
from pipeline.core.metrics import Metric, row_logloss

GMEAN_EPS = 1e-6
LOSS_CHUNK_CELLS = 1 << 22  # weights_scipy's float64 loss goes over the rows in chunks of about this many cells
LOSS_BLOCK_ROWS = 1024  # and each chunk's float64 weighted mean a block of this many rows at a time


# --- the blends as functions of P (n_models, n, C) -------------------------------------------


def blend_vote(P: np.ndarray, task: str) -> np.ndarray:
    P = as_float(P)
    m, n, c = P.shape
    mean = P.mean(axis=0)
    if task == "multilabel":
        votes = (P >= 0.5).sum(axis=0)
        out = np.where(2 * votes > m, 1.0, np.where(2 * votes < m, 0.0, (mean >= 0.5).astype(float)))
        return out.astype(P.dtype, copy=False)
    votes = np.zeros((n, c), dtype=np.min_scalar_type(m))  # counts up to m: one byte a cell for m < 256
    for k in range(m):
        votes[np.arange(n), P[k].argmax(axis=1)] += 1
    mean[votes < votes.max(axis=1, keepdims=True)] = -np.inf  # in place: only the tied classes compete
    del votes
    return one_hot(mean.argmax(axis=1), c, P.dtype)


def blend_mean(P: np.ndarray, task: str) -> np.ndarray:
    return finish(task, as_float(P).mean(axis=0), in_place=True)  # the mean is a new array: normalised in place


def _mean_log(P: np.ndarray, eps: float, complement: bool = False) -> np.ndarray:
    """The mean over models of log(clip(p)) (or of log(clip(1 - p))), one model at a time: no full-size copy."""
    total = None
    for p in P:
        x = np.clip(1.0 - p if complement else p, eps, 1.0)
        np.log(x, out=x)
        total = x if total is None else np.add(total, x, out=total)
    return np.divide(total, len(P), out=total)


def blend_gmean(P: np.ndarray, task: str, eps: float = GMEAN_EPS) -> np.ndarray:
    P = as_float(P)
    g = _mean_log(P, eps)
    np.exp(g, out=g)  # in place, as the normalising below: one (n, C) array at a time beside P
    if task == "multilabel":
        g0 = np.exp(_mean_log(P, eps, complement=True))
        return g / (g + g0)
    return normalise_rows(g, in_place=True)


RANK_CHUNK_CELLS = 1 << 20  # columns are ranked a few at a time: scipy's rankdata holds several float64 copies


def _scaled_ranks(x: np.ndarray, add_to: np.ndarray | None = None) -> np.ndarray:
    """Column-wise ranks over rows (ties averaged) scaled to [0, 1]; with `add_to` (2-D x only), added to it
    in place, a few columns at a time, instead of returned as a new array (one (n, C) array fewer)."""
    n = x.shape[0]
    if n < 2:
        return np.full(x.shape, 0.5) if add_to is None else np.add(add_to, 0.5, out=add_to)
    if x.ndim == 1:
        return (rankdata(x, method="average") - 1.0) / (n - 1.0)
    out = np.empty(x.shape, dtype=as_float(x).dtype) if add_to is None else add_to  # float32 stays float32
    step = max(1, RANK_CHUNK_CELLS // n)
    for j in range(0, x.shape[1], step):
        # the scaled ranks are rounded to out's dtype before the sum: a sum of float32 ranks (exact up to 2**24)
        r = ((rankdata(x[:, j:j + step], method="average", axis=0) - 1.0) / (n - 1.0)).astype(out.dtype)
        if add_to is None:
            out[:, j:j + step] = r
        else:
            out[:, j:j + step] += r
    return out


def blend_rank(P: np.ndarray, task: str) -> np.ndarray:
    P = as_float(P)
    if task == "binary":
        r = np.mean([_scaled_ranks(p[:, 1]) for p in P], axis=0)
        return np.column_stack([1.0 - r, r]).astype(P.dtype, copy=False)
    total = None  # summed into one array, one model at a time: no (n_models, n, C) stack of ranks
    for p in P:
        total = _scaled_ranks(p) if total is None else _scaled_ranks(p, add_to=total)
    total /= len(P)
    return finish(task, total.astype(P.dtype, copy=False), in_place=True)


def caruana_weights(P: np.ndarray, y: np.ndarray, task: str, metric: Metric | str, n_iter: int = 30
                    ) -> tuple[np.ndarray, list]:
    """Greedy forward selection with replacement: add the model that best improves the mean, keep the best step."""
    metric = resolve_metric(metric, task)
    P = as_float(P)
    m = P.shape[0]
    counts = np.zeros(m, dtype=int)
    total, mean = np.zeros_like(P[0]), np.empty_like(P[0])
    best, best_counts, path = None, None, []
    for step in range(1, n_iter + 1):
        pick, pick_score = None, None
        for k in range(m):
            np.add(total, P[k], out=mean)
            mean /= step
            s = metric.score(y, mean)
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

    P = as_float(P)
    m, n = P.shape[:2]
    y_values = np.asarray(y, dtype=np.float64).reshape(n, -1)
    step = max(1, LOSS_CHUNK_CELLS // int(np.prod(P.shape[2:]) or 1))
    chunks = [slice(i, min(i + step, n)) for i in range(0, n, step)]

    def chunk_loss(w, s):  # float64: SLSQP's finite differences need it
        if task == "regression":
            return float(((weighted_mean(w, P[:, s]) - y_values[s]) ** 2).mean())
        # log loss is a mean of row losses: they are made LOSS_BLOCK_ROWS rows at a time and joined before the
        # mean, so the loss is logloss's to the last bit with a float64 mean of a block in memory, not a chunk's
        blocks = [slice(i, min(i + LOSS_BLOCK_ROWS, s.stop)) for i in range(s.start, s.stop, LOSS_BLOCK_ROWS)]
        row_losses = np.concatenate([row_logloss(task, y[b], weighted_mean(w, P[:, b])) for b in blocks])
        return float(row_losses.mean())

    def loss(w):
        w = np.clip(w, 0, None)
        w = w / max(w.sum(), 1e-12)
        if len(chunks) == 1:
            return chunk_loss(w, chunks[0])
        return sum(chunk_loss(w, s) * (s.stop - s.start) for s in chunks) / n

    res = minimize(
        loss, np.full(m, 1.0 / m), method="SLSQP", bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}], options={"maxiter": 200, "ftol": 1e-10},
    )
    w = np.clip(res.x, 0.0, None)
    return w / w.sum() if w.sum() > 0 else np.full(m, 1.0 / m)


def weighted_mean(w: np.ndarray, P: np.ndarray, dtype=np.float64) -> np.ndarray:
    """sum_m w_m P[m] in `dtype`, one model at a time (tensordot would copy a strided P whole on every call)."""
    out = np.multiply(P[0], w[0], dtype=dtype)
    term = np.empty_like(out)
    for k in range(1, len(P)):
        out += np.multiply(P[k], w[k], out=term, dtype=dtype)
    return out


# --- estimators ------------------------------------------------------------------------------------


class VoteBlend(Blend):
    """Hard majority vote; ties go to the highest mean probability; output one-hot (0/1 per label)."""

    def _predict(self, P, X):
        return blend_vote(P, self.task)


class _MeanRule:
    def _predict(self, P, X):
        return blend_mean(P, self.task)


class MeanBlend(_MeanRule, Blend):
    """Soft voting: the mean probability."""


class MeanRegressor(_MeanRule, RegressionBlend):
    """The mean of the models' predicted values."""


class MedianRegressor(RegressionBlend):
    """The median of the models' predicted values (robust to one model far off)."""

    def _predict(self, P, X):
        return np.median(np.asarray(P, dtype=np.float64), axis=0)


class GMeanBlend(Blend):
    """Geometric mean of probabilities clipped to `eps`, renormalised."""

    def __init__(self, task="multiclass", n_classes=None, metric=None, seed=0, eps: float = GMEAN_EPS):
        super().__init__(task, n_classes, metric, seed)
        self.eps = eps

    def _predict(self, P, X):
        return blend_gmean(P, self.task, self.eps)


class RankBlend(Blend):
    """Mean of per-column ranks scaled to [0, 1] (ranks are taken over the rows predicted together)."""

    passes = 40  # a sort of every column (cost estimate; measured: 29)

    def _predict(self, P, X):
        return blend_rank(P, self.task)


class _WeightsRule:
    """Weighted mean of the models with non-negative weights summing to 1, searched on the training rows.

    optimizer 'greedy': Caruana forward selection with replacement (`n_iter` steps) on the competition
    metric; 'scipy': SLSQP minimising log loss (regression: squared error).
    """

    learned = True

    def _fit(self, P, X, y):
        if self.optimizer == "greedy":
            self.weights_, self.path_ = caruana_weights(P, y, self.task, self.metric, self.n_iter)
        elif self.optimizer == "scipy":
            self.weights_, self.path_ = scipy_weights(P, y, self.task), []
        else:
            raise ValueError(f"optimizer must be 'greedy' or 'scipy', got {self.optimizer!r}")

    @property
    def passes(self) -> int:  # cost estimate: per greedy step, every model's mean and its score
        return self.n_iter if self.optimizer == "greedy" else 40  # measured: 22 and 15 at n_iter 30

    def _predict(self, P, X):
        return finish(self.task, weighted_mean(self.weights_, P, P.dtype), in_place=True)  # a new array

    def _export_fitted(self) -> dict:
        return {"weights": [float(w) for w in self.weights_], "path": [float(v) for v in self.path_]}

    def _import_fitted(self, state: dict) -> None:
        self.weights_ = np.asarray(state["weights"], dtype=np.float64)
        self.path_ = list(state.get("path", []))


class WeightsBlend(_WeightsRule, Blend):
    __doc__ = _WeightsRule.__doc__

    def __init__(self, task="multiclass", n_classes=None, metric=None, seed=0,
                 optimizer: str = "greedy", n_iter: int = 30):
        super().__init__(task, n_classes, metric, seed)
        self.optimizer = optimizer
        self.n_iter = n_iter


class WeightsRegressor(_WeightsRule, RegressionBlend):
    __doc__ = _WeightsRule.__doc__

    def __init__(self, task="regression", n_classes=None, metric=None, seed=0,
                 optimizer: str = "greedy", n_iter: int = 30):
        super().__init__(task, n_classes, metric, seed)
        self.optimizer = optimizer
        self.n_iter = n_iter
