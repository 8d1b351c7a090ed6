"""`catboost`: a CatBoost stacker on the models' predictions, beside `lgbm` and `logreg` (pipeline.blend.stackers).

The same features and the same rules as `lgbm`: the concatenated probabilities (binary: one model; multilabel: a
binary model per label, each on all columns; multiclass and ordinal: one MultiClass model of every class),
early stopping on an inner split of its own training rows (`inner_valid`, stratified where it can be), the best
iteration kept. At many classes (formulation "auto" and one joint fit estimated over base.FIT_BUDGET_S) it is
one binary model over each row's candidate classes, the candidate booster of pipeline.blend.perclass.

Deterministic: a fixed `random_seed` (the blend's seed), `thread_count` threads (1 by default), no files
written (`allow_writing_files=False`).

State: every fitted model as CatBoost's own JSON (`save_model(format="json")`), kept as text in blend.json,
as `lgbm` keeps LightGBM's model text. Right after fitting, each model is reloaded from that JSON, so the
predictions `ensemble` writes (blend.test.parquet, the submission) come from the very model `package` ships
and the Kaggle kernel loads with catboost (on Kaggle's image, as lightgbm is). Probabilities are computed
here from CatBoost's raw values (sigmoid; softmax over the classes), so they do not depend on which loss the
JSON records.

Cost (`catboost_seconds`): CatBoost grows one symmetric tree per iteration; per iteration it builds
histograms over rows x features and scores every candidate split of every feature for every output
dimension in every leaf. MultiClass has C output dimensions on C x M features, so a joint fit costs
~ C² x M x 2^depth an iteration, as `lgbm`'s does (C² x M), and at 12k rows and 3 models it passes
FIT_BUDGET_S at about 40 classes; the candidate formulation costs ~ rows x K x (2M + 2). The constants are
CPU seconds of one thread measured on this project's 2-core machine (catboost 1.2.10, depth 4, all 200
iterations grown), December 2026: MultiClass at 2.4k-4.8k rows, C 10-30, M 2-3 (2.5-25 s a fit; ~48 us a
(feature, class) an iteration); Logloss on 20k-80k candidate rows of 8 features (0.8-2.5 s; ~18 ns a
(row, feature)). The estimates came within 20% of those fits; like perclass's, they are upper-end (early
stopping only shortens a fit) and meant to be right within a factor of about 2.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from pipeline.blend.base import FIT_BUDGET_S, Blend, assemble, targets
from pipeline.blend.meta import with_meta
from pipeline.blend.perclass import (CANDIDATE_CELL_S, candidate_features, candidate_labels, candidate_output,
                                     candidates)
from pipeline.core.errors import ConfigError

FORMULATIONS = ("auto", "joint", "per_class")
# CPU seconds of one thread, calibrated as the module says
CATBOOST_START_S = 0.05  # one fit's fixed cost (set-up, the JSON round trip)
CATBOOST_CELL_S = 1.8e-8  # one (row, feature) cell in one iteration (quantised histograms)
CATBOOST_ROW_S = 5e-9  # one (row, output dimension) in one iteration (gradients, leaf values)
CATBOOST_SPLIT_S = 3e-6  # one (feature, output dimension, leaf) in one iteration (scoring the candidate splits)


def catboost_seconds(formulation: str, task: str, n: int, C: int, M: int, iterations: int, candidates: int,
                     depth: int = 4) -> float:
    """Estimated seconds of one CatBoost stacker fit and its prediction (every iteration grown)."""
    if formulation == "per_class":
        rows, features, dims, models = n * min(candidates, C), 2 * M + 2, 1, 1
        extra = 2 * n * C * M * CANDIDATE_CELL_S  # candidates and their features, at fit and at predict
    else:  # binary: one model, one output; multiclass: one model, C outputs; multilabel: a model per label
        rows, features, extra = n, C * M, 0.0
        dims, models = (C, 1) if task in ("multiclass", "ordinal") and C > 2 else (1, C if task == "multilabel" else 1)
    per_iteration = (rows * features * CATBOOST_CELL_S + rows * dims * CATBOOST_ROW_S
                     + features * dims * 2 ** depth * CATBOOST_SPLIT_S)
    return models * (CATBOOST_START_S + iterations * per_iteration) + extra


def softmax(raw: np.ndarray) -> np.ndarray:
    z = np.exp(raw - raw.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def sigmoid(raw: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-raw))


UNSTABLE_INFO = ("train_finish_time", "model_guid", "training")  # a clock, a random id, the metric history


def model_json(model, pool=None) -> str:
    """A fitted CatBoost model as CatBoost's JSON, less UNSTABLE_INFO (so a rerun writes the same text) and
    its indentation (numbers written back in Python's shortest exact form: the same doubles); as CatBoost
    wrote it when it holds NaN or Inf."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.json")
        model.save_model(path, format="json", pool=pool)  # a model with cat_features needs its pool
        with open(path) as f:
            text = f.read()
    data = json.loads(text)
    for key in UNSTABLE_INFO:
        data.get("model_info", {}).pop(key, None)
    try:
        return json.dumps(data, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return text


def catboost_module():
    """The catboost package, or a ConfigError saying how to get it."""
    try:
        import catboost
    except ImportError as e:
        raise ConfigError(f"the catboost blend needs the catboost package ({e}): `pip install catboost` (Kaggle's "
                          "image has it), or choose another blend with `make ensemble METHOD=...`") from None
    return catboost


def load_json_model(text: str, which: str = "model", n_features: int | None = None):
    """The CatBoost model of `model_json` text (catboost reads JSON only from a file). ConfigError naming
    `which` model when the text is not a CatBoost model with trees (catboost itself loads `{}` as an empty
    model) or, given `n_features`, reads another number of features."""
    catboost = catboost_module()

    def refuse(why: str):
        return ConfigError(f"catboost blend state: {which} is not a CatBoost JSON model ({why}); rerun "
                           "`make ensemble` to write blend.json again")

    try:
        trees = json.loads(text).get("oblivious_trees")
    except (ValueError, AttributeError) as e:
        raise refuse(f"not a JSON object: {e}") from None
    if not isinstance(trees, list) or not trees:
        raise refuse("no 'oblivious_trees' list")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.json")
        with open(path, "w") as f:
            f.write(text)
        try:
            model = catboost.CatBoost().load_model(path, format="json")
        except catboost.CatBoostError as e:
            raise refuse(str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__) from None
    if not model.tree_count_:
        raise refuse("no trees")
    if n_features is not None and len(model.feature_names_) != n_features:
        raise refuse(f"{len(model.feature_names_)} features, the blend gives it {n_features}")
    return model


class CatBoostStacker(Blend):
    """CatBoost on the concatenated probabilities; early stopping on an inner split of the training rows.

    Multilabel: one binary model per label, each on all columns. A target with one value (a label never on)
    gets its class frequencies. At many classes: one binary model over each row's candidate classes.
    """

    learned = True

    def __init__(self, task="multiclass", n_classes=None, metric=None, seed=0, iterations: int = 200,
                 learning_rate: float = 0.1, depth: int = 4, l2_leaf_reg: float = 3.0,
                 early_stopping_rounds: int = 30, inner_valid: float = 0.2, thread_count: int = 1,
                 formulation: str = "auto", candidates: int = 10, meta_kinds: tuple = ()):
        super().__init__(task, n_classes, metric, seed)
        self.iterations = iterations
        self.learning_rate = learning_rate
        self.depth = depth
        self.l2_leaf_reg = l2_leaf_reg
        self.early_stopping_rounds = early_stopping_rounds
        self.inner_valid = inner_valid
        self.thread_count = thread_count
        self.formulation = formulation
        self.candidates = candidates
        self.meta_kinds = meta_kinds

    def _with_meta(self, F, repeat: int = 1):
        """(features and the rows' metadata columns after them, the categorical ones' indexes) (pipeline.blend.meta)."""
        return with_meta(F, getattr(self, "_meta_rows", None), self.meta_kinds, repeat, none=[])

    @staticmethod
    def _data(F, cats: list):
        """What CatBoost reads: the array, or with cat_features a frame whose categorical codes are integers
        (-1: missing)."""
        if not cats:
            return F
        import pandas as pd

        df = pd.DataFrame(np.asarray(F, dtype=np.float64), columns=[str(i) for i in range(F.shape[1])])
        for c in cats:
            df[str(c)] = np.where(np.isnan(F[:, c]), -1, F[:, c]).astype(np.int64)
        return df

    # --- formulation and cost ---

    def formulation_for(self, n_rows: int, n_classes: int, n_models: int) -> str:
        """As given, else joint while one joint fit is estimated within FIT_BUDGET_S (see the module)."""
        if self.formulation not in FORMULATIONS:
            raise ValueError(f"formulation must be one of {FORMULATIONS}, got {self.formulation!r}")
        if self.formulation != "auto":
            return self.formulation
        joint = catboost_seconds("joint", self.task, n_rows, n_classes, n_models, self.iterations, self.candidates,
                                 self.depth)
        return "joint" if joint <= FIT_BUDGET_S else "per_class"

    def fit_seconds(self, n_rows: int, n_classes: int, n_models: int) -> float:
        form = self.formulation_for(n_rows, n_classes, n_models)
        return catboost_seconds(form, self.task, n_rows, n_classes, n_models, self.iterations, self.candidates,
                                self.depth)

    # --- fitting ---

    def _inner_split(self, n: int, strata):
        from sklearn.model_selection import train_test_split

        idx = np.arange(n)
        try:
            return train_test_split(idx, test_size=self.inner_valid, random_state=self.seed, stratify=strata)
        except ValueError:  # a class with one row: no stratified split
            return train_test_split(idx, test_size=self.inner_valid, random_state=self.seed)

    def _train(self, n_cls: int, X_tr, t_tr, X_va, t_va, cats=()) -> tuple[str, int]:
        """(the fitted model as JSON text, its best iteration)."""
        CatBoost = catboost_module().CatBoost

        params = {"loss_function": "Logloss" if n_cls == 2 else "MultiClass", "iterations": self.iterations,
                  "learning_rate": self.learning_rate, "depth": self.depth, "l2_leaf_reg": self.l2_leaf_reg,
                  "random_seed": self.seed, "thread_count": self.thread_count, "od_type": "Iter",
                  "od_wait": self.early_stopping_rounds, "use_best_model": True, "allow_writing_files": False,
                  "logging_level": "Silent"}
        if n_cls > 2:
            params["classes_count"] = n_cls  # one output per class, also for a class absent from these rows
        Pool = catboost_module().Pool
        train = Pool(self._data(X_tr, cats), t_tr, cat_features=list(cats) or None)
        valid = Pool(self._data(X_va, cats), t_va, cat_features=list(cats) or None)
        model = CatBoost(params).fit(train, eval_set=valid)
        best = model.get_best_iteration()
        return model_json(model, train if cats else None), int(self.iterations - 1 if best is None else best)

    def _fit(self, P, X, y):
        self.formulation_ = self.formulation_for(len(X), self.n_classes_, self.n_models_)
        if self.formulation_ == "per_class":
            return self._fit_per_class(X, y)
        texts, self.best_iterations_ = [], []
        X, cats = self._with_meta(X)
        for t, n_cls in targets(self.task, y, self.n_classes_):
            if len(np.unique(t)) < 2:  # a constant target: its class frequencies
                texts.append(np.bincount(t, minlength=n_cls) / len(t))
                self.best_iterations_.append(0)
                continue
            tr, va = self._inner_split(len(t), t)
            if len(np.unique(t[tr])) < 2:  # a rare label whose few rows all fell in the inner split
                texts.append(np.bincount(t, minlength=n_cls) / len(t))
                self.best_iterations_.append(0)
                continue
            text, best = self._train(n_cls, X[tr], t[tr], X[va], t[va], cats)
            texts.append(text)
            self.best_iterations_.append(best)
        self._load(texts)

    def _fit_per_class(self, X, y):
        """One binary model over (row, candidate class) pairs (pipeline.blend.perclass)."""
        M, C = self.n_models_, self.n_classes_
        self.candidates_ = k = min(int(self.candidates), C)
        cand = candidates(X, M, C, k)
        labels = candidate_labels(self.task, y, cand)
        tr, va = self._inner_split(len(X), None if self.task == "multilabel" else y)
        pairs = lambda rows: (np.sort(rows)[:, None] * k + np.arange(k)).ravel()  # noqa: E731
        if len(np.unique(labels[pairs(tr)])) < 2:  # every pair a hit or every one a miss: that rate
            self.best_iterations_ = [0]
            return self._load([np.array([labels.mean()])])
        feats, cats = self._with_meta(candidate_features(X, cand, M, C), k)
        text, best = self._train(2, feats[pairs(tr)], labels[pairs(tr)], feats[pairs(va)], labels[pairs(va)], cats)
        self.best_iterations_ = [best]
        self._load([text])

    def _load(self, texts: list) -> None:
        """Keep each model as its JSON text and predict with the model read back from it (as the kernel does)."""
        self.model_texts_ = texts
        width = 2 * self.n_models_ + 2 + len(self.meta_kinds or ()) if self.formulation_ == "per_class" \
            else self.n_features_in_
        self.models_ = [t if isinstance(t, np.ndarray) else load_json_model(t, f"model {i}", width)
                        for i, t in enumerate(texts)]

    # --- prediction ---

    def _raw_proba(self, model, X, repeat: int = 1) -> np.ndarray:
        """(n, outputs) probabilities of one model from its raw values: (n, 2) for a binary model."""
        X = self._data(*self._with_meta(X, repeat))
        raw = np.asarray(model.predict(X, prediction_type="RawFormulaVal", thread_count=self.thread_count),
                         dtype=np.float64)
        if raw.ndim == 1:
            p = sigmoid(raw)
            return np.column_stack([1 - p, p])
        return softmax(raw)

    def _predict(self, P, X):
        if self.formulation_ == "per_class":
            M, C = self.n_models_, self.n_classes_
            cand = candidates(X, M, C, self.candidates_)
            model = self.models_[0]
            if isinstance(model, np.ndarray):
                q = np.full(cand.shape, float(model[0]))
            else:
                q = self._raw_proba(model, candidate_features(X, cand, M, C), self.candidates_)[:, 1]
                q = q.reshape(cand.shape)
            return candidate_output(self.task, X, cand, q, M, C)
        parts = []
        for model in self.models_:
            p = np.tile(model, (len(X), 1)) if isinstance(model, np.ndarray) else self._raw_proba(model, X)
            parts.append(p[:, 1] if self.task == "multilabel" else p)
        return assemble(self.task, parts, self.n_classes_)

    # --- state ---

    def _export_fitted(self) -> dict:
        models = [{"constant": [float(v) for v in t]} if isinstance(t, np.ndarray) else {"json": t}
                  for t in self.model_texts_]
        out = {"formulation": self.formulation_, "models": models,
               "best_iterations": [int(i) for i in self.best_iterations_]}
        return {**out, "candidates": int(self.candidates_)} if self.formulation_ == "per_class" else out

    def _import_fitted(self, state: dict) -> None:
        self.formulation_ = state["formulation"]
        if self.formulation_ == "per_class":
            self.candidates_ = int(state["candidates"])
        self.best_iterations_ = [int(i) for i in state["best_iterations"]]
        self._load([np.asarray(m["constant"], dtype=np.float64) if "constant" in m else m["json"]
                    for m in state["models"]])
