"""The one blend registry: the CLI's --method help, make_blend and import_blend_state read it; regression blends
are regressors, classification blends classifiers, and both round-trip through their JSON export."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sklearn.base import RegressorMixin, is_classifier, is_regressor

from pipeline.blend import blends
from pipeline.blend.registry import BLENDS, CLASS_TASKS, get_blend
from pipeline.core.errors import ConfigError
from pipeline.core.metrics import get_metric
from tests.conftest import REPO, run_cli

ALL = ["vote", "mean", "median", "gmean", "rank", "weights", "weights_scipy", "lgbm", "logreg", "catboost", "ridge"]
REGRESSION = ["mean", "median", "weights", "weights_scipy", "lgbm", "ridge"]


def _regression_data(n: int = 160, targets: int = 2):
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 10, (n, targets))
    good, noisy = y + rng.normal(0, 0.5, y.shape), y + rng.normal(0, 3, y.shape)
    return blends.stack(np.stack([good, noisy])), y


def test_ensemble_help_lists_exactly_the_registry():
    assert list(BLENDS) == ALL
    help_text = " ".join(run_cli("ensemble", "--help", cwd=REPO).stdout.split())
    method = help_text[help_text.rindex("--method METHOD"):help_text.rindex("--stacking")]  # past the usage line
    assert re.findall(r"(\w+): ", method) == ["auto", *ALL]
    assert "weights_scipy: weighted mean" in method and "ridge: ridge regression stacker per target [regression]" in method


def test_tasks_and_kinds_come_from_the_registry():
    assert blends.task_blends("regression") == tuple(REGRESSION)
    for task in CLASS_TASKS:
        assert blends.task_blends(task) == ("vote", "mean", "gmean", "rank", "weights", "weights_scipy", "lgbm", "logreg",
                                            "catboost")
    for name, entry in BLENDS.items():
        for task in entry.tasks:
            est = blends.make_blend(name, task, 3, None)
            assert is_regressor(est) == (task == "regression") and is_classifier(est) == (task != "regression"), name
    assert blends.make_blend("weights_scipy", "regression", 1, None).optimizer == "scipy"


def test_unknown_method_names_the_tasks_blends():
    with pytest.raises(ConfigError, match=r"'ridge' for task binary; choose one of auto, vote, mean, gmean, rank, "
                                          r"weights, weights_scipy, lgbm, logreg, catboost \(any of them \+ '\+thr'"):
        get_blend("ridge", "binary")
    with pytest.raises(ConfigError, match=r"'mean\+thr' for task regression; choose one of auto, mean, median, "
                                          r"weights, weights_scipy, lgbm, ridge$"):
        blends.make_blend("mean+thr", "regression", 1, None)
    with pytest.raises(ConfigError, match="'vote' for task regression"):
        blends.candidate_names("vote", get_metric("rmse", "regression"))


@pytest.mark.parametrize("name", REGRESSION)
def test_regression_blends_are_regressors_that_round_trip(name):
    X, y = _regression_data()
    est = blends.make_blend(name, "regression", 2, None, seed=0)
    assert isinstance(est, RegressorMixin) and is_regressor(est) and not hasattr(est, "predict_proba")
    assert est.fit(X[:120], y[:120]) is est
    pred = est.predict(X[120:])
    assert pred.shape == (40, 2) and np.array_equal(blends.blend_output(est, X[120:]), pred)
    assert est.score(X[120:], y[120:]) > 0.5  # R^2: it predicts the values, not noise
    again = blends.import_blend_state(json.loads(json.dumps(est.export_state())))
    assert type(again) is type(est) and np.array_equal(again.predict(X[120:]), pred)
    fitted = blends.FittedBlend(name, True, [est, again])  # fold-wise learners: their mean
    loaded = blends.FittedBlend.from_export(json.loads(json.dumps(fitted.export())))
    assert np.array_equal(loaded.predict_proba(X[120:], "regression"), pred)


@pytest.mark.parametrize("old, new", [("MeanBlend", "MeanRegressor"), ("MedianBlend", "MedianRegressor"),
                                      ("WeightsBlend", "WeightsRegressor"), ("LGBMStacker", "LGBMRegressionStacker")])
def test_blend_json_from_before_the_regressors_still_loads(old, new):
    """A saved regression blend names the classifier's class with task=regression; it loads as the regressor."""
    X, y = _regression_data(targets=1)
    name = {"MeanBlend": "mean", "MedianBlend": "median", "WeightsBlend": "weights", "LGBMStacker": "lgbm"}[old]
    est = blends.make_blend(name, "regression", 1, None).fit(X, y)
    state = {**json.loads(json.dumps(est.export_state())), "class": old}
    again = blends.import_blend_state(state)
    assert type(again).__name__ == new and np.array_equal(again.predict(X), est.predict(X))
    with pytest.raises(ConfigError, match="unknown blend class 'Nope' in exported blend state; known: .*RidgeStacker"):
        blends.import_blend_state({**state, "class": "Nope"})
