"""Per-class stackers: one small model shared by every class, so that a stacker's cost grows with C, not C².

The joint stackers explode with the number of classes C: LightGBM multiclass grows one tree per class per
round on all C·M columns (~ n·C²·M per round), and multinomial logistic regression on every model's C
log-probabilities fits (C·M) × C coefficients (~ n·C²·M per iteration). The per-class formulations here
describe a (row, class) pair by that class's columns only, the same way for every class:

- conditional logit (`logreg`): the score of class c is sum_m w_m log p_mc + b_c (one weight per model,
  a bias per class), softmax over the classes; fitted by L-BFGS on the mean multinomial log loss plus
  (|w|² + |b|²) / (2 C_reg n) (scikit-learn's scaling of C). Cost O(n·C·M) per iteration.
- candidate booster (`lgbm`): one binary LightGBM over (row, candidate) pairs, the K classes with the
  highest mean probability in the row; features: each model's probability of the class, the same relative
  to that model's top probability in the row, the mean probability, and the candidate's rank in the row.
  Single-label output: the candidates get the booster's probabilities, the other classes share what is
  left in proportion to their mean probability, rows renormalised; multilabel: the candidates' labels get
  the booster's probabilities, the others their mean probability. Cost O(n·K·M) per round.

Rows are processed in chunks (`CHUNK_CELLS` cells), so no full-size float64 copy of X is made; float32
input stays float32 and the output has X's float dtype.

Cost estimates (`lgbm_seconds`, `logreg_seconds`: seconds of one fit and its prediction) choose between
the joint and the per-class formulation (base.FIT_BUDGET_S) and let `ensemble` skip a blend over its
budget (the competition key `blend_budget_minutes`). They are upper-end estimates: LightGBM is costed for
all `n_estimators` rounds (early stopping only shortens it), L-BFGS for a typical iteration count. The
constants are CPU seconds (LightGBM runs on one thread, so about the wall time of an idle machine)
measured on this project's 2-core machine (Python 3.11, numpy 2.4 with OpenBLAS, scikit-learn 1.9,
LightGBM 4.7) on generated probabilities (a true class boosted in softmax noise), December 2026:

- LightGBM binary trees, 50k-200k rows, 8 and 14 features: 52 ns a row at 8 features, +3.8 ns a
  row-feature; multiclass trees, 4.8k-19k rows, 30-90 features: 0.7-2.8 ms a tree (~2.6 ns a
  row-feature, ~12 us a feature). Constants: 30 ns a row, 3 ns a row-feature, 10 us a feature.
- scikit-learn lbfgs, multinomial, 4.8k-9.6k rows, C 10-30, M 3-5: 16-41 iterations, 1.2-1.8 ns a
  multiply-add (4·n·F·C an iteration). Constants: 200 iterations, 1.5 ns.
- conditional logit, 4.8k-9.6k rows, C 100-1,000, M 3-5: 22-30 iterations, 5.3-9.7 ns a cell an
  iteration. Constants: 40 iterations, 8 ns.
- elementwise blends (vote, mean, gmean) at 9.6k x 1,000 x 3: 2-4 ns a cell; rank 29 passes, weights 22,
  weights_scipy 15. Constant: base.CELL_S = 5 ns a cell times the blend's `passes`.

On a busy machine (load 5 on 2 cores while measuring) the wall times were twice these. The estimates are
meant to be right within a factor of about 2: enough to tell seconds from hours.
"""

from __future__ import annotations

import numpy as np

from pipeline.blend.base import LOG_EPS, normalise_rows, work_dtype

CHUNK_CELLS = 1 << 22  # rows are processed in chunks of about this many (row, model, class) cells

# --- cost estimates (seconds), calibrated as the module says -------------------------------------------

LGBM_TREE_ROW_S = 3e-8  # one tree: per row (gradients, partitions), one thread
LGBM_TREE_CELL_S = 3e-9  # one tree: per row and feature (histograms)
LGBM_TREE_FEATURE_S = 1e-5  # one tree: per feature (bins, split search)
LOGREG_JOINT_MAC_S = 1.5e-9  # scikit-learn lbfgs: one multiply-add (X @ W and its gradient: 4 n F C an iteration)
LOGREG_JOINT_ITERATIONS = 200  # a typical lbfgs run on log-probabilities (max_iter bounds it)
LOGIT_CELL_S = 8e-9  # conditional logit: one (row, model, class) cell in one loss-and-gradient evaluation
LOGIT_EVALUATIONS = 40  # a typical L-BFGS run of the conditional logit (max_iter bounds it)
CANDIDATE_CELL_S = 5e-9  # candidate booster: choosing the candidates and their features, per cell


def lgbm_seconds(formulation: str, task: str, n: int, C: int, M: int, rounds: int, candidates: int) -> float:
    """Estimated seconds of one LightGBM stacker fit (every round grown: early stopping only shortens it)."""
    if formulation == "per_class":
        rows, features, trees = n * min(candidates, C), 2 * M + 2, rounds
        extra = 2 * n * C * M * CANDIDATE_CELL_S  # candidates and features, at fit and at predict
    else:  # binary: one tree a round; multiclass: one per class; multilabel, regression: a booster per column
        rows, features, extra = n, C * M, 0.0
        trees = rounds * (1 if task == "binary" else C)
    per_tree = rows * (LGBM_TREE_ROW_S + features * LGBM_TREE_CELL_S) + features * LGBM_TREE_FEATURE_S
    return trees * per_tree + extra


def logreg_seconds(formulation: str, task: str, n: int, C: int, M: int, max_iter: int) -> float:
    """Estimated seconds of one logistic-regression stacker fit."""
    if formulation == "per_class":
        return min(LOGIT_EVALUATIONS, max_iter) * n * C * M * LOGIT_CELL_S
    iterations = min(LOGREG_JOINT_ITERATIONS, max_iter)
    if task == "multilabel":  # one model per label on its M logits
        return C * iterations * 4 * n * M * LOGREG_JOINT_MAC_S
    features, outputs = (M, 1) if C == 2 else (C * M, C)
    return iterations * 4 * n * features * outputs * LOGREG_JOINT_MAC_S


# --- shared helpers ---------------------------------------------------------------------------------------


def row_chunks(n: int, width: int) -> list[slice]:
    step = max(1, CHUNK_CELLS // max(width, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _by_model(X: np.ndarray, n_models: int, n_classes: int) -> np.ndarray:
    """X (n, M*C) as a (n, M, C) view (model-major columns)."""
    return X.reshape(len(X), n_models, n_classes)


def _log(block: np.ndarray) -> np.ndarray:
    """log of the probabilities clipped to LOG_EPS, in the block's own float dtype (one copy of the block)."""
    out = np.clip(block, LOG_EPS, 1.0)
    return np.log(out, out=out)


# --- conditional logit -----------------------------------------------------------------------------------


def fit_conditional_logit(X: np.ndarray, y: np.ndarray, n_models: int, n_classes: int, C: float, max_iter: int,
                          tol: float = 1e-5) -> tuple[np.ndarray, np.ndarray, int]:
    """(weights (M,), biases (C,), iterations) minimising the L2-penalised mean multinomial log loss."""
    from scipy.optimize import minimize

    n, M = len(y), n_models
    X3, y = _by_model(X, n_models, n_classes), np.asarray(y, dtype=int)
    chunks = row_chunks(n, M * n_classes)
    alpha = 1.0 / (C * n)
    z_true = np.log(np.clip(X3[np.arange(n), :, y].astype(np.float64), LOG_EPS, 1.0))  # (n, M)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)

    def loss_and_grad(theta):
        w, b = theta[:M], theta[M:]
        loss = float(-(z_true @ w + b[y]).sum())
        gw, gb = -z_true.sum(axis=0), -counts.copy()
        for s in chunks:
            z = _log(X3[s])
            S = np.einsum("kmc,m->kc", z, w) + b
            top = S.max(axis=1, keepdims=True)
            np.exp(S - top, out=S)
            den = S.sum(axis=1)
            loss += float((np.log(den) + top[:, 0]).sum())
            S /= den[:, None]
            gw += np.einsum("kmc,kc->m", z, S)
            gb += S.sum(axis=0)
        grad = np.concatenate([gw, gb]) / n + alpha * theta
        return loss / n + 0.5 * alpha * float(theta @ theta), grad

    theta0 = np.concatenate([np.full(M, 1.0 / M), np.zeros(n_classes)])  # the geometric mean
    res = minimize(loss_and_grad, theta0, jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-12})
    return res.x[:M].copy(), res.x[M:].copy(), int(res.nit)


def predict_conditional_logit(X: np.ndarray, weights: np.ndarray, bias: np.ndarray, n_models: int) -> np.ndarray:
    """Softmax over the classes of sum_m w_m log p_mc + b_c, (n, C) in X's float dtype."""
    n_classes = len(bias)
    X3 = _by_model(X, n_models, n_classes)
    out = np.empty((len(X), n_classes), dtype=work_dtype(X))
    for s in row_chunks(len(X), n_models * n_classes):
        S = np.einsum("kmc,m->kc", _log(X3[s]), weights) + bias
        np.exp(S - S.max(axis=1, keepdims=True), out=S)
        out[s] = S / S.sum(axis=1, keepdims=True)
    return out


# --- candidate booster -------------------------------------------------------------------------------------


def candidates(X: np.ndarray, n_models: int, n_classes: int, k: int) -> np.ndarray:
    """(n, k): each row's k classes of highest mean probability, best first (ties: the lower class index)."""
    X3 = _by_model(X, n_models, n_classes)
    out = np.empty((len(X), k), dtype=np.int64)
    for s in row_chunks(len(X), n_models * n_classes):
        neg = -X3[s].mean(axis=1, dtype=np.float64)
        top = np.argpartition(neg, k - 1, axis=1)[:, :k] if k < n_classes else np.broadcast_to(
            np.arange(n_classes), neg.shape)
        order = np.lexsort((top, np.take_along_axis(neg, top, axis=1)), axis=1)
        out[s] = np.take_along_axis(top, order, axis=1)
    return out


def candidate_features(X: np.ndarray, cand: np.ndarray, n_models: int, n_classes: int) -> np.ndarray:
    """(n*k, 2M+2) float32 features of every (row, candidate) pair, row-major: each model's probability,
    the same over that model's top probability in the row, the mean probability, the candidate's rank."""
    X3 = _by_model(X, n_models, n_classes)
    n, k = cand.shape
    p = np.take_along_axis(X3, cand[:, None, :], axis=2).astype(np.float32)  # (n, M, k)
    top = np.empty((n, n_models), dtype=np.float32)
    for s in row_chunks(n, n_models * n_classes):
        top[s] = X3[s].max(axis=2)
    rel = p / np.maximum(top, np.float32(LOG_EPS))[:, :, None]
    rank = np.broadcast_to(np.arange(k, dtype=np.float32), (n, 1, k))
    feats = np.concatenate([p, rel, p.mean(axis=1, keepdims=True), rank], axis=1)  # (n, 2M+2, k)
    return np.ascontiguousarray(feats.transpose(0, 2, 1)).reshape(n * k, 2 * n_models + 2)


def candidate_labels(task: str, y: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """1 where a (row, candidate) pair holds the row's class (multilabel: one of its labels)."""
    if task == "multilabel":
        return np.take_along_axis(np.asarray(y), cand, axis=1).ravel().astype(int)
    return (cand == np.asarray(y, dtype=int)[:, None]).ravel().astype(int)


def candidate_output(task: str, X: np.ndarray, cand: np.ndarray, q: np.ndarray, n_models: int,
                     n_classes: int) -> np.ndarray:
    """(n, C): the candidates' probabilities q (n, k) put in place of the models' mean probability; single-label
    rows give the other classes what is left (1 - sum q, at least 0) in proportion to their mean probability."""
    X3 = _by_model(X, n_models, n_classes)
    out = np.empty((len(X), n_classes), dtype=work_dtype(X))
    for s in row_chunks(len(X), n_models * n_classes):
        mean = X3[s].mean(axis=1, dtype=np.float64)
        c, qs = cand[s], q[s]
        if task != "multilabel":
            rest = mean.sum(axis=1) - np.take_along_axis(mean, c, axis=1).sum(axis=1)
            left = np.clip(1.0 - qs.sum(axis=1), 0.0, None)
            mean *= (left / np.where(rest > 0, rest, 1.0))[:, None]
        np.put_along_axis(mean, c, qs, axis=1)
        out[s] = mean if task == "multilabel" else normalise_rows(mean)
    return out
