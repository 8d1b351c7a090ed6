"""Stackers: a second-level model learned on the models' predictions.

- `lgbm`: LightGBM on the concatenated probabilities (per label for multilabel; a regressor per target for
  regression), deterministic, early stopping on an inner split of its own training rows.
- `logreg`: logistic regression on log-probabilities (binary / multilabel: logits of the positive
  column, per label).
- `ridge` (regression): ridge regression per target column.

`lgbm` and `logreg` have two formulations (parameter `formulation`): "joint", the model above on every
column at once, and "per_class", one small model shared by the classes (pipeline.blend.perclass: a
candidate booster; a conditional logit), whose cost grows with C instead of C². "auto" (the default)
keeps the joint one while one fit of it is estimated within base.FIT_BUDGET_S, which small class counts
always are; `fit_seconds` is the estimate. The fitted formulation is `formulation_`, exported with the state.
"""

from __future__ import annotations

import numpy as np

from pipeline.blend.base import FIT_BUDGET_S, LOG_EPS, Blend, RegressionBlend, assemble, logit, stack, targets
from pipeline.blend.meta import MetaFeatures, with_meta
from pipeline.blend.perclass import (candidate_features, candidate_labels, candidate_output, candidates,
                                     fit_conditional_logit, lgbm_seconds, logreg_seconds,
                                     predict_conditional_logit)

FORMULATIONS = ("auto", "joint", "per_class")


def _choose(formulation: str, joint_only: bool, joint_seconds) -> str:
    """A stacker's formulation: as given, else joint while one joint fit is estimated within FIT_BUDGET_S."""
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation must be one of {FORMULATIONS}, got {formulation!r}")
    if formulation == "per_class" and joint_only:
        raise ValueError("formulation 'per_class' needs classes or labels, not regression values")
    if formulation != "auto":
        return formulation
    return "joint" if joint_only or joint_seconds() <= FIT_BUDGET_S else "per_class"


class _LGBMRule:
    """LightGBM on the concatenated probabilities; early stopping on an inner split of the training rows.

    Deterministic: fixed seed, `num_threads`, deterministic=True, force_row_wise=True. Multilabel: one
    binary booster per label, each on all columns; regression: one booster per target. A target with one
    value gets a constant prediction.
    """

    learned = True

    def _set_params(self, n_estimators, learning_rate, num_leaves, min_child_samples, early_stopping_rounds,
                    inner_valid, num_threads, formulation="joint", candidates=10, meta_kinds=()) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.early_stopping_rounds = early_stopping_rounds
        self.inner_valid = inner_valid
        self.num_threads = num_threads
        self.formulation = formulation
        self.candidates = candidates
        self.meta_kinds = meta_kinds

    def _with_meta(self, F, repeat: int = 1):
        """(features and the rows' metadata columns after them, the categorical ones' indexes) (pipeline.blend.meta)."""
        return with_meta(F, getattr(self, "_meta_rows", None), self.meta_kinds, repeat, none="auto")

    def formulation_for(self, n_rows: int, n_classes: int, n_models: int) -> str:
        """The formulation a fit on these sizes uses (see the module)."""
        return _choose(self.formulation, self.task == "regression", lambda: lgbm_seconds(
            "joint", self.task, n_rows, n_classes, n_models, self.n_estimators, self.candidates))

    def fit_seconds(self, n_rows: int, n_classes: int, n_models: int) -> float:
        form = self.formulation_for(n_rows, n_classes, n_models)
        return lgbm_seconds(form, self.task, n_rows, n_classes, n_models, self.n_estimators, self.candidates)

    def _inner_split(self, n: int, strata):
        from sklearn.model_selection import train_test_split

        idx = np.arange(n)
        try:
            return train_test_split(idx, test_size=self.inner_valid, random_state=self.seed, stratify=strata)
        except ValueError:
            return train_test_split(idx, test_size=self.inner_valid, random_state=self.seed)

    def _train(self, n_cls: int, X_tr, t_tr, X_va, t_va, cats="auto"):
        import lightgbm as lgb

        dtrain = lgb.Dataset(X_tr, t_tr, params={"verbose": -1}, categorical_feature=cats)
        dvalid = lgb.Dataset(X_va, t_va, reference=dtrain)
        booster = lgb.train(
            self._params(n_cls), dtrain, num_boost_round=self.n_estimators, valid_sets=[dvalid],
            callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
        )
        return booster, int(booster.best_iteration or self.n_estimators)

    def _params(self, n_cls: int) -> dict:
        params = {
            "objective": {0: "regression", 2: "binary"}.get(n_cls, "multiclass"),
            "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples, "seed": self.seed, "deterministic": True,
            "force_row_wise": True, "num_threads": self.num_threads, "verbose": -1, "feature_pre_filter": False,
        }
        if n_cls > 2:
            params["num_class"] = n_cls
        if self.meta_kinds:  # categorical metadata: groups as small as the leaves
            params.update(min_data_per_group=self.min_child_samples, cat_smooth=1.0)
        return params

    def _fit(self, P, X, y):
        self.formulation_ = self.formulation_for(len(X), self.n_classes_, self.n_models_)
        if self.formulation_ == "per_class":
            return self._fit_per_class(X, y)
        self.boosters_, self.best_iterations_ = [], []
        X, cats = self._with_meta(X)
        for t, n_cls in targets(self.task, y, self.n_classes_):
            if len(np.unique(t)) < 2:  # a constant target: its class frequencies (regression: its value)
                self.boosters_.append(np.bincount(t, minlength=n_cls) / len(t) if n_cls else t[:1].copy())
                self.best_iterations_.append(0)
                continue
            tr, va = self._inner_split(len(t), t if n_cls else None)
            booster, best = self._train(n_cls, X[tr], t[tr], X[va], t[va], cats)
            self.boosters_.append(booster)
            self.best_iterations_.append(best)

    def _fit_per_class(self, X, y):
        """One binary booster over (row, candidate class) pairs (pipeline.blend.perclass)."""
        M, C = self.n_models_, self.n_classes_
        self.candidates_ = k = min(int(self.candidates), C)
        cand = candidates(X, M, C, k)
        labels = candidate_labels(self.task, y, cand)
        if len(np.unique(labels)) < 2:  # every pair a hit or every one a miss: that rate
            self.boosters_, self.best_iterations_ = [np.array([labels.mean()])], [0]
            return
        feats, cats = self._with_meta(candidate_features(X, cand, M, C), k)
        tr, va = self._inner_split(len(X), None if self.task == "multilabel" else y)
        pairs = lambda rows: (np.sort(rows)[:, None] * k + np.arange(k)).ravel()  # noqa: E731
        booster, best = self._train(2, feats[pairs(tr)], labels[pairs(tr)], feats[pairs(va)], labels[pairs(va)],
                                    cats)
        self.boosters_, self.best_iterations_ = [booster], [best]

    def _predict_per_class(self, X):
        M, C = self.n_models_, self.n_classes_
        cand = candidates(X, M, C, self.candidates_)
        booster = self.boosters_[0]
        if isinstance(booster, np.ndarray):
            q = np.full(cand.shape, float(booster[0]))
        else:
            q = booster.predict(self._with_meta(candidate_features(X, cand, M, C), self.candidates_)[0],
                                num_iteration=self.best_iterations_[0])
        return candidate_output(self.task, X, cand, np.asarray(q, dtype=np.float64).reshape(cand.shape), M, C)

    def _predict(self, P, X):
        if self.formulation_ == "per_class":
            return self._predict_per_class(X)
        parts = []
        F = self._with_meta(X)[0]
        for booster, best in zip(self.boosters_, self.best_iterations_):
            if isinstance(booster, np.ndarray):  # a constant target: its class frequencies
                p = np.tile(booster, (len(X), 1))
            else:
                p = booster.predict(F, num_iteration=best)
                if self.task == "regression":
                    parts.append(p)
                    continue
                p = np.column_stack([1 - p, p]) if p.ndim == 1 else p
            if self.task == "regression":
                parts.append(p[:, 0])
                continue
            parts.append(p[:, 1] if self.task == "multilabel" else p)
        return assemble(self.task, parts, self.n_classes_)

    def _export_fitted(self) -> dict:
        boosters = [{"constant": [float(v) for v in b]} if isinstance(b, np.ndarray)
                    else {"model": b.model_to_string(num_iteration=-1)} for b in self.boosters_]
        out = {"formulation": self.formulation_, "boosters": boosters,
               "best_iterations": [int(i) for i in self.best_iterations_]}
        return {**out, "candidates": int(self.candidates_)} if self.formulation_ == "per_class" else out

    def _import_fitted(self, state: dict) -> None:
        import lightgbm as lgb

        self.formulation_ = state.get("formulation", "joint")  # blend.json from before formulations: joint
        if self.formulation_ == "per_class":
            self.candidates_ = int(state["candidates"])
        self.boosters_ = [np.asarray(b["constant"], dtype=np.float64) if "constant" in b
                          else lgb.Booster(model_str=b["model"]) for b in state["boosters"]]
        self.best_iterations_ = [int(i) for i in state["best_iterations"]]


class LGBMStacker(_LGBMRule, Blend):
    __doc__ = _LGBMRule.__doc__

    def __init__(self, task="multiclass", n_classes=None, metric=None, seed=0, n_estimators: int = 500,
                 learning_rate: float = 0.05, num_leaves: int = 8, min_child_samples: int = 10,
                 early_stopping_rounds: int = 30, inner_valid: float = 0.2, num_threads: int = 1,
                 formulation: str = "auto", candidates: int = 10, meta_kinds: tuple = ()):
        super().__init__(task, n_classes, metric, seed)
        self._set_params(n_estimators, learning_rate, num_leaves, min_child_samples, early_stopping_rounds,
                         inner_valid, num_threads, formulation, candidates, meta_kinds)


class LGBMRegressionStacker(_LGBMRule, RegressionBlend):
    __doc__ = _LGBMRule.__doc__

    def __init__(self, task="regression", n_classes=None, metric=None, seed=0, n_estimators: int = 500,
                 learning_rate: float = 0.05, num_leaves: int = 8, min_child_samples: int = 10,
                 early_stopping_rounds: int = 30, inner_valid: float = 0.2, num_threads: int = 1,
                 meta_kinds: tuple = ()):
        super().__init__(task, n_classes, metric, seed)
        self._set_params(n_estimators, learning_rate, num_leaves, min_child_samples, early_stopping_rounds,
                         inner_valid, num_threads, meta_kinds=meta_kinds)


class LogRegStacker(Blend):
    """Logistic regression on log-probabilities (multiclass) or logits of the positive column.

    Multilabel: one model per label on that label's logits from every model. Formulation "per_class"
    (multiclass, ordinal): a conditional logit, one weight per model and a bias per class (perclass).
    """

    learned = True

    def __init__(self, task="multiclass", n_classes=None, metric=None, seed=0, C: float = 1.0,
                 max_iter: int = 1000, formulation: str = "auto", meta_kinds: tuple = ()):
        super().__init__(task, n_classes, metric, seed)
        self.C = C
        self.max_iter = max_iter
        self.formulation = formulation
        self.meta_kinds = meta_kinds

    def formulation_for(self, n_rows: int, n_classes: int, n_models: int) -> str:
        """The formulation a fit on these sizes uses (binary and multilabel: joint, already linear in C)."""
        joint_only = self.task == "multilabel" or n_classes <= 2 or bool(self.meta_kinds)  # metadata: joint
        return _choose(self.formulation, joint_only, lambda: logreg_seconds(
            "joint", self.task, n_rows, n_classes, n_models, self.max_iter))

    def fit_seconds(self, n_rows: int, n_classes: int, n_models: int) -> float:
        form = self.formulation_for(n_rows, n_classes, n_models)
        return logreg_seconds(form, self.task, n_rows, n_classes, n_models, self.max_iter)

    def _features(self, P: np.ndarray, label: int | None = None) -> np.ndarray:
        if self.task == "multilabel":
            F = logit(P[:, :, label]).T
        elif self.n_classes_ == 2:
            F = logit(P[:, :, 1]).T
        else:
            F = stack(np.log(np.clip(P, LOG_EPS, 1.0)))
        M = getattr(self, "_meta_rows", None)
        return F if M is None else np.hstack([F, self.meta_features_.transform(M)])

    def _fit(self, P, X, y):
        from sklearn.linear_model import LogisticRegression

        self.formulation_ = self.formulation_for(len(X), self.n_classes_, self.n_models_)
        if self.formulation_ == "per_class":
            self.coef_, self.intercept_, self.n_iter_ = fit_conditional_logit(
                X, y, self.n_models_, self.n_classes_, self.C, self.max_iter)
            return
        self.estimators_ = []
        if self._meta_rows is not None:  # imputed and standardised on this training fold (pipeline.blend.meta)
            self.meta_features_ = MetaFeatures.fit(self.meta_kinds, self._meta_rows)
        for j, (t, n_cls) in enumerate(targets(self.task, y, self.n_classes_)):
            if len(np.unique(t)) < 2:
                self.estimators_.append(np.bincount(t, minlength=n_cls) / len(t))
                continue
            est = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)
            self.estimators_.append(est.fit(self._features(P, j), t))

    def _predict(self, P, X):
        if self.formulation_ == "per_class":
            return predict_conditional_logit(X, self.coef_, self.intercept_, self.n_models_)
        parts = []
        n_out = 2 if self.task == "multilabel" else self.n_classes_
        for j, est in enumerate(self.estimators_):
            if isinstance(est, np.ndarray):
                p = np.tile(est, (P.shape[1], 1))
            else:
                p = np.zeros((P.shape[1], n_out))
                p[:, est.classes_] = est.predict_proba(self._features(P, j))
            parts.append(p[:, 1] if self.task == "multilabel" else p)
        return assemble(self.task, parts, self.n_classes_)

    def _export_fitted(self) -> dict:
        if self.formulation_ == "per_class":
            return {"formulation": "per_class", "coef": [float(v) for v in self.coef_],
                    "intercept": [float(v) for v in self.intercept_], "n_iter": int(self.n_iter_)}
        out = []
        for est in self.estimators_:
            if isinstance(est, np.ndarray):
                out.append({"constant": [float(v) for v in est]})
            else:
                out.append({"params": est.get_params(), "coef": est.coef_.tolist(),
                            "intercept": est.intercept_.tolist(), "classes": est.classes_.tolist(),
                            "n_iter": np.asarray(est.n_iter_).tolist()})
        meta = {"meta_features": self.meta_features_.export()} if self.meta_kinds else {}
        return {"formulation": "joint", "estimators": out, **meta}

    def _import_fitted(self, state: dict) -> None:
        from sklearn.linear_model import LogisticRegression

        self.formulation_ = state.get("formulation", "joint")  # blend.json from before formulations: joint
        if self.formulation_ == "per_class":
            self.coef_ = np.asarray(state["coef"], dtype=np.float64)
            self.intercept_ = np.asarray(state["intercept"], dtype=np.float64)
            self.n_iter_ = int(state["n_iter"])
            return
        if "meta_features" in state:
            self.meta_features_ = MetaFeatures.from_export(state["meta_features"])
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


class RidgeStacker(RegressionBlend):
    """Regression: ridge regression per target column on every model's predictions of every target."""

    learned = True

    def __init__(self, task="regression", n_classes=None, metric=None, seed=0, alpha: float = 1.0):
        super().__init__(task, n_classes, metric, seed)
        self.alpha = alpha

    def _fit(self, P, X, y):
        from sklearn.linear_model import Ridge

        self.coef_, self.intercept_ = [], []
        for t, _ in targets(self.task, y, self.n_classes_):
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
