"""pipeline.core.metrics: every built-in against a hand computation or scikit-learn, directions, map@k, errors,
a metric from a file, per-label thresholds and ordinal cut points (pipeline.core.thresholds), log loss per row
and quadratic kappa."""

from __future__ import annotations

import copy
import math
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score, fbeta_score, matthews_corrcoef

from pipeline.core import metrics as M
from pipeline.core import thresholds as T
from pipeline.core.errors import ConfigError
from pipeline.core.metrics import (
    EPS,
    METRIC_NAMES,
    Metric,
    MetricError,
    get_metric,
    logloss,
    metric_tasks,
    quadratic_kappa,
    row_logloss,
)
from pipeline.core.thresholds import apply_thresholds, fit_label_thresholds, fit_thresholds

REPO = Path(__file__).resolve().parents[1]

# multiclass: argmax = [0, 1, 0, 2]
Y3 = np.array([0, 1, 2, 1])
P3 = np.array([[0.7, 0.2, 0.1], [0.2, 0.6, 0.2], [0.5, 0.3, 0.2], [0.1, 0.3, 0.6]])

# binary: decisions [0, 1, 0, 1, 1, 1] -> tp 2, fp 2, fn 1, tn 1
YB = np.array([0, 1, 1, 0, 1, 0])
P1 = np.array([0.2, 0.8, 0.4, 0.6, 0.9, 0.7])
PB = np.column_stack([1 - P1, P1])

# multilabel: decisions at 0.5 = [[1,0,1],[0,1,0],[1,0,0],[0,1,0]]
YM = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
PM = np.array([[0.9, 0.2, 0.6], [0.4, 0.7, 0.1], [0.6, 0.3, 0.2], [0.1, 0.6, 0.4]])

# regression: errors col0 [0, -1, 0], col1 [1, 0, 2]
YR = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
PR = np.array([[1.0, 3.0], [2.0, 4.0], [5.0, 8.0]])


def s(name, task, y, p, **kw):
    thresholds = kw.pop("thresholds", None)
    return get_metric(name, task, **kw).score(y, p, thresholds)


def s_better(name, task, new, old):
    return get_metric(name, task).is_better(new, old)


# --- import floor -----------------------------------------------------------------------------------


def test_import_is_light():
    code = ("import sys, pipeline.core.metrics, pipeline.core.thresholds; bad = [m for m in ('sklearn', 'torch', 'pandas') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --- built-ins, by hand ------------------------------------------------------------------------------


def test_multiclass_builtins_by_hand():
    t = "multiclass"
    assert s("accuracy", t, Y3, P3) == pytest.approx(2 / 4)
    assert s("balanced_accuracy", t, Y3, P3) == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert s("logloss", t, Y3, P3) == pytest.approx(-np.mean(np.log([0.7, 0.6, 0.2, 0.3])))
    # one-vs-rest AUCs: class 0: 1; class 1: 3.5/4 (one tie); class 2: 1.5/3
    assert s("auc", t, Y3, P3) == pytest.approx((1 + 0.875 + 0.5) / 3)
    # APs: class 0: 1; class 1: .5 * 1 + .5 * 2/3; class 2: 1/3
    assert s("average_precision", t, Y3, P3) == pytest.approx((1 + 5 / 6 + 1 / 3) / 3)
    assert s("f1_macro", t, Y3, P3) == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert s("f1_micro", t, Y3, P3) == pytest.approx(0.5)
    assert s("fbeta", t, Y3, P3) == pytest.approx((5 / 6 + 5 / 9 + 0) / 3)  # F2, macro
    assert s("fbeta", t, Y3, P3, beta=1.0) == pytest.approx(s("f1_macro", t, Y3, P3))
    assert s("mcc", t, Y3, P3) == pytest.approx(0.3)
    assert s("mcc", t, Y3, P3) == pytest.approx(matthews_corrcoef(Y3, P3.argmax(1)))
    assert s("map@k", t, Y3, P3) == pytest.approx((1 + 1 + 1 / 3 + 1 / 2) / 4)  # k = 5 > C
    assert s("map@2", t, Y3, P3) == pytest.approx((1 + 1 + 0 + 1 / 2) / 4)
    assert s("map@1", t, Y3, P3) == pytest.approx(0.5)


def test_binary_builtins_by_hand():
    t = "binary"
    assert s("accuracy", t, YB, PB) == pytest.approx(3 / 6)
    assert s("balanced_accuracy", t, YB, PB) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert s("logloss", t, YB, PB) == pytest.approx(-np.mean(np.log([0.8, 0.8, 0.4, 0.4, 0.9, 0.3])))
    assert s("auc", t, YB, PB) == pytest.approx(7 / 9)
    assert s("average_precision", t, YB, PB) == pytest.approx((1 + 1 + 3 / 5) / 3)
    assert s("f1", t, YB, PB) == pytest.approx(4 / 7)
    assert s("fbeta", t, YB, PB) == pytest.approx(10 / 16)
    assert s("fbeta", t, YB, PB, beta=0.5) == pytest.approx(1.25 * 2 / (1.25 * 2 + 0.25 * 1 + 2))
    assert s("f1_macro", t, YB, PB) == pytest.approx((4 / 7 + 2 / 5) / 2)  # negative class: tp 1, fp 1, fn 2
    assert s("mcc", t, YB, PB) == pytest.approx((2 * 1 - 2 * 1) / math.sqrt(4 * 3 * 3 * 2))
    assert s("map@k", t, YB, PB) == pytest.approx((3 + 3 * 0.5) / 6)
    # a (n,) prediction is the positive column
    assert s("auc", t, YB, P1) == s("auc", t, YB, PB)
    assert s("f1", t, YB, P1) == s("f1", t, YB, PB)


def test_ordinal_qwk_by_hand():
    p = np.eye(3)[[0, 2, 2]] * 0.8 + 0.1  # argmax [0, 2, 2]
    assert s("qwk", "ordinal", np.array([0, 1, 2]), p) == pytest.approx(0.8)
    # over the full class range: class 3 is absent from both, yet counts in the distances
    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
    p4 = np.eye(4)[pred]
    expected = cohen_kappa_score(y, pred, weights="quadratic", labels=np.arange(4))
    assert s("qwk", "ordinal", y, p4) == pytest.approx(expected)
    assert s("mcc", "ordinal", y, p4) == pytest.approx(matthews_corrcoef(y, pred))


def test_multilabel_builtins_by_hand():
    t = "multilabel"
    assert s("accuracy", t, YM, PM) == pytest.approx(10 / 12)
    assert s("f1", t, YM, PM) == pytest.approx(8 / 10)  # micro: tp 4, fp 1, fn 1
    assert s("f1_micro", t, YM, PM) == pytest.approx(8 / 10)
    assert s("f1_macro", t, YM, PM) == pytest.approx((1 + 0.5 + 1) / 3)
    assert s("f1_samples", t, YM, PM) == pytest.approx((1 + 1 + 2 / 3 + 0) / 4)
    assert s("fbeta", t, YM, PM) == pytest.approx((1 + 1 + 5 / 9 + 0) / 4)
    lp = -(YM * np.log(PM) + (1 - YM) * np.log(1 - PM)).mean()
    assert s("logloss", t, YM, PM) == pytest.approx(lp)
    assert s("auc", t, YM, PM) == pytest.approx((1 + 0.75 + 1) / 3)
    assert s("average_precision", t, YM, PM) == pytest.approx((1 + (1 + 2 / 3) / 2 + 1) / 3)
    # thresholds: label 1 at 0.25 predicts rows 1, 2, 3 -> row 2 exact, row 3 still wrong
    thr = np.array([0.5, 0.25, 0.5])
    assert s("f1_samples", t, YM, PM, thresholds=thr) == pytest.approx((1 + 1 + 1 + 0) / 4)
    assert s("accuracy", t, YM, PM, thresholds=thr) == pytest.approx(11 / 12)
    assert s("f1_samples", t, YM, PM, thresholds=0.5) == s("f1_samples", t, YM, PM)
    assert s("auc", t, YM, PM, thresholds=thr) == s("auc", t, YM, PM)  # not thresholded: ignored
    with pytest.raises(ValueError, match="one per label"):
        s("f1_samples", t, YM, PM, thresholds=[0.5, 0.5])


def test_multilabel_fbeta_is_sklearn_samples_average():
    rng = np.random.default_rng(1)
    y = (rng.random((60, 5)) < 0.3).astype(int)
    p = np.clip(0.6 * y + rng.random((60, 5)) * 0.6, 0, 1)
    d = (p >= 0.5).astype(int)
    y[0], p[0] = 0, 0.1  # a row with no true and no predicted label: sklearn's default counts it 0
    d = (p >= 0.5).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = fbeta_score(y, d, beta=2, average="samples")
    assert s("fbeta", "multilabel", y, p) == pytest.approx(expected)
    assert s("fbeta", "multilabel", y, p, beta=0.5) == pytest.approx(
        fbeta_score(y, d, beta=0.5, average="samples", zero_division=0))
    assert s("f1_samples", "multilabel", y, p) == pytest.approx(f1_score(y, d, average="samples", zero_division=0))
    assert s("f1_macro", "multilabel", y, p) == pytest.approx(f1_score(y, d, average="macro", zero_division=0))


def test_regression_builtins_by_hand():
    t = "regression"
    assert s("rmse", t, YR, PR) == pytest.approx((math.sqrt(1 / 3) + math.sqrt(5 / 3)) / 2)
    assert s("mae", t, YR, PR) == pytest.approx((1 / 3 + 1) / 2)
    assert s("r2", t, YR, PR) == pytest.approx((1 - 1 / 8 + 1 - 5 / 8) / 2)
    # one target as (n,) or (n, 1)
    assert s("rmse", t, YR[:, 1], PR[:, 1]) == pytest.approx(math.sqrt(5 / 3))
    assert s("rmse", t, YR[:, 1:], PR[:, 1]) == pytest.approx(math.sqrt(5 / 3))
    with pytest.raises(ValueError, match="regression"):
        s("rmse", t, YR, PR[:, 0])


def test_auc_renormalises_rows_and_reads_an_all_zero_row_as_uniform():
    p = np.array([[0.6, 0.2, 0.2], [0.0, 0.0, 0.0], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]])
    y = np.array([0, 1, 2, 1])
    uniform = p.copy()
    uniform[1] = 1 / 3
    assert s("auc", "multiclass", y, p) == pytest.approx(s("auc", "multiclass", y, uniform))
    assert s("auc", "multiclass", y, p * 0.5) == pytest.approx(s("auc", "multiclass", y, uniform))


def test_undefined_is_nan():
    assert math.isnan(s("auc", "binary", np.array([1, 1]), np.array([[0.3, 0.7], [0.6, 0.4]])))
    assert math.isnan(s("average_precision", "binary", np.array([0, 0]), np.array([[0.3, 0.7], [0.6, 0.4]])))
    assert math.isnan(s("auc", "multiclass", np.array([0, 1, 1]), P3[:3]))  # class 2 absent
    assert math.isnan(s("auc", "multilabel", np.ones((3, 2), int), np.full((3, 2), 0.5)))
    assert math.isnan(s("accuracy", "multiclass", np.zeros(0, int), np.zeros((0, 3))))


def test_input_checks():
    with pytest.raises(ValueError, match="class indices"):
        s("accuracy", "multiclass", np.array([0, 3, 1, 1]), P3)
    with pytest.raises(ValueError, match="0/1"):
        s("f1_samples", "multilabel", YM * 2, PM)
    with pytest.raises(ValueError, match="2 columns"):
        s("accuracy", "binary", Y3, P3)


# --- map@k -------------------------------------------------------------------------------------------


def test_map_at_k_by_hand_with_ties_and_large_k():
    p = np.array([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
    y = np.array([0, 1, 0, 1])
    # ties rank by class order: row 0 -> rank 1, row 1 -> rank 2; row 2 -> rank 3; row 3 -> rank 3 (0 before 1)
    assert M.map_at_k(y, p, 3) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 3) / 4)
    assert M.map_at_k(y, p, 2) == pytest.approx((1 + 1 / 2 + 0 + 0) / 4)
    assert M.map_at_k(y, p, 100) == M.map_at_k(y, p, 3)  # k larger than C: every class is ranked
    m = get_metric("map@k", "multiclass", k=2)
    assert (m.k, m.name, m.greater_is_better) == (2, "map@k", True)
    assert m.score(y, p) == pytest.approx(0.375)
    m5 = get_metric("map@1", "multiclass", k=3)  # the number wins
    assert m5.k == 1 and m5.name == "map@1"
    assert m5.score(y, p) == pytest.approx(1 / 4)
    for bad in ("map@0",):
        with pytest.raises(ConfigError, match="k must be"):
            get_metric(bad, "multiclass")
    with pytest.raises(ConfigError, match="k must be"):
        get_metric("map@k", "multiclass", k=0)
    with pytest.raises(ConfigError, match="unknown metric 'map@x'"):
        get_metric("map@x", "multiclass")


# --- registry: names, tasks, directions, errors ----------------------------------------------------------


def test_names_tasks_and_directions():
    assert set(METRIC_NAMES) == {"accuracy", "balanced_accuracy", "logloss", "auc", "average_precision", "f1",
                                 "f1_macro", "f1_micro", "f1_samples", "fbeta", "mcc", "qwk", "map@k", "rmse",
                                 "mae", "r2"}
    lower = {"logloss", "rmse", "mae"}
    for name in METRIC_NAMES:
        for task in metric_tasks(name):
            m = get_metric(name, task)
            assert m.greater_is_better == (name not in lower) and m.task == task and m.name == name
    assert metric_tasks("qwk") == ("ordinal",)
    assert metric_tasks("f1_samples") == ("multilabel",)
    assert metric_tasks("map@3") == ("binary", "multiclass", "ordinal")
    assert set(metric_tasks("r2")) == {"regression"}
    assert "multilabel" not in metric_tasks("mcc") and "multiclass" not in metric_tasks("f1")
    assert metric_tasks("my.py:f") == M.TASKS
    thresholded = {n for n in METRIC_NAMES
                   if "multilabel" in metric_tasks(n) and get_metric(n, "multilabel").thresholded}
    assert thresholded == {"accuracy", "f1", "f1_macro", "f1_micro", "f1_samples", "fbeta"}
    assert not get_metric("f1_macro", "multiclass").thresholded


def test_is_better():
    up, down = get_metric("auc", "binary"), get_metric("logloss", "binary")
    assert up.is_better(0.8, 0.7) and not up.is_better(0.7, 0.8) and not up.is_better(0.7, 0.7)
    assert down.is_better(0.3, 0.4) and not down.is_better(0.4, 0.3)
    for m in (up, down):
        assert m.is_better(0.5, None) and m.is_better(0.5, float("nan"))
        assert not m.is_better(float("nan"), None) and not m.is_better(float("nan"), 0.5)
    assert s_better("logloss", "binary", 0.3, 0.4) and s_better("accuracy", "multiclass", 0.9, 0.8)
    assert s_better("map@5", "multiclass", 0.5, 0.4) and s_better("qwk", "ordinal", 0.1, None)
    assert not s_better("rmse", "regression", 2.0, 1.0)


def test_unknown_and_mismatched_names():
    with pytest.raises(ConfigError) as e:
        get_metric("f1_sample", "multilabel")
    msg = str(e.value)
    assert "unknown metric 'f1_sample'" in msg and "did you mean 'f1_samples'" in msg
    assert "f1_samples" in msg and "fbeta" in msg and "rmse" not in msg and "qwk" not in msg
    assert "path/to/file.py:function" in msg
    with pytest.raises(ConfigError, match="did you mean 'auc'"):
        get_metric("AUC", "binary")
    with pytest.raises(ConfigError) as e:
        get_metric("qwk", "multiclass")
    assert "'qwk' does not apply to task multiclass" in str(e.value) and "applies to ordinal" in str(e.value)
    with pytest.raises(ConfigError, match="applies to multilabel"):
        get_metric("f1_samples", "binary")
    with pytest.raises(ConfigError, match="applies to regression"):
        get_metric("rmse", "multiclass")
    with pytest.raises(ConfigError, match="applies to binary, multiclass, ordinal"):
        get_metric("map@5", "multilabel")
    with pytest.raises(ConfigError, match="contradicts"):
        get_metric("auc", "binary", greater_is_better=False)
    assert get_metric("auc", "binary", greater_is_better=True).greater_is_better
    with pytest.raises(ConfigError, match="beta"):
        get_metric("fbeta", "binary", beta=0)
    with pytest.raises(ConfigError, match="unknown task"):
        get_metric("auc", "segmentation")


# --- a metric from a file -------------------------------------------------------------------------------


METRIC_FILE = '''
import numpy as np

SEEN = {}
VALUE = 3

def neg_mse(y_true, y_pred):
    SEEN["shapes"] = (y_true.shape, y_true.dtype.kind, y_pred.shape, y_pred.dtype.kind)
    y_true += 100  # a copy: the caller's array is untouched
    return float(((y_true - 100 - y_pred) ** 2).mean())

def top1(y_true, y_pred):
    SEEN["shapes"] = (y_true.shape, y_true.dtype.kind, y_pred.shape, y_pred.dtype.kind)
    return np.float32((y_pred.argmax(axis=1) == y_true).mean())

def boom(y_true, y_pred):
    raise RuntimeError("kaput")

def nan(y_true, y_pred):
    return float("nan")

def text(y_true, y_pred):
    return "0.5"

def one_arg(y_true):
    return 0.0
'''


@pytest.fixture
def metric_file(tmp_path):
    (tmp_path / "metrics_dir").mkdir()
    path = tmp_path / "metrics_dir" / "my_metric.py"
    path.write_text(METRIC_FILE)
    return path


def test_custom_metric_works(metric_file, tmp_path):
    m = get_metric("metrics_dir/my_metric.py:neg_mse", "regression", greater_is_better=False, base_dir=tmp_path)
    assert (m.name, m.task, m.greater_is_better, m.thresholded) == ("metrics_dir/my_metric.py:neg_mse",
                                                                  "regression", False, False)
    y = YR.copy()
    assert m.score(y, PR) == pytest.approx((1 + 0 + 0 + 1 + 0 + 4) / 6)
    assert np.array_equal(y, YR)
    assert m.is_better(0.1, 0.2) and not m.is_better(0.2, 0.1)
    module = sys.modules[m._fn.__module__]
    assert module.SEEN["shapes"] == ((3, 2), "f", (3, 2), "f")

    top1 = get_metric(f"{metric_file}:top1", "multiclass", greater_is_better=True)  # absolute path
    value = top1.score(Y3, P3)
    assert type(value) is float and value == pytest.approx(0.5)
    assert sys.modules[top1._fn.__module__].SEEN["shapes"] == ((4,), "i", (4, 3), "f")
    assert metric_file.name in top1.source and top1.source.endswith(":top1")
    # immutable: copies are itself; pickling rebuilds it from the file
    assert copy.deepcopy(top1) is top1
    again = pickle.loads(pickle.dumps(top1))
    assert again == top1 and again.score(Y3, P3) == value


def test_custom_metric_needs_a_direction(metric_file):
    with pytest.raises(ConfigError) as e:
        get_metric(f"{metric_file}:neg_mse", "regression")
    assert "greater_is_better" in str(e.value) and "my_metric.py:neg_mse" in str(e.value)


def test_custom_metric_load_errors(metric_file, tmp_path):
    with pytest.raises(ConfigError) as e:
        get_metric("nowhere/missing.py:score", "binary", greater_is_better=True, base_dir=tmp_path)
    assert "missing.py" in str(e.value) and "not found" in str(e.value) and "'score'" in str(e.value)

    with pytest.raises(ConfigError) as e:
        get_metric(f"{metric_file}:neg_mse2", "regression", greater_is_better=False)
    msg = str(e.value)
    assert "no function 'neg_mse2'" in msg and str(metric_file) in msg
    assert "did you mean 'neg_mse'" in msg and "boom, nan, neg_mse, one_arg, text, top1" in msg

    with pytest.raises(ConfigError, match="must take two arguments"):
        get_metric(f"{metric_file}:one_arg", "regression", greater_is_better=False)
    # what only running the file tells comes at the first score, never at config load
    value = get_metric(f"{metric_file}:VALUE", "regression", greater_is_better=False)
    with pytest.raises(ConfigError, match="VALUE is a int, not a function"):
        value.score(YR, PR)

    broken = tmp_path / "broken.py"
    broken.write_text("import numpy as np\nraise RuntimeError('no data here')\ndef f(y_true, y_pred):\n    return 1\n")
    m = get_metric(f"{broken}:f", "binary", greater_is_better=True)
    with pytest.raises(ConfigError) as e:
        m.score(np.array([0, 1]), np.array([[0.4, 0.6], [0.3, 0.7]]))
    assert "cannot import" in str(e.value) and "RuntimeError: no data here" in str(e.value)
    assert "broken.py" in str(e.value) and "'f'" in str(e.value)

    syntax = tmp_path / "syntax.py"
    syntax.write_text("def f(y_true, y_pred)\n    return 1\n")
    with pytest.raises(ConfigError, match="SyntaxError"):
        get_metric(f"{syntax}:f", "binary", greater_is_better=True)


MARKED_METRIC = """
from pathlib import Path
Path("imported.marker").write_text("top-level code ran")

def text(y_true, y_pred):
    return "0.5"
"""


@pytest.mark.slow
def test_metric_file_runs_only_where_it_scores_and_a_string_stops_training_before_epoch_one(tmp_path):
    """`check`, `folds` and `plan` read the metric file without running it; training imports it and tries
    it once on a few validation rows before the first epoch, so a function returning a string is named
    then, not after an epoch of training."""
    from tests.conftest import TINY_MODEL, make_competition, run_cli, write_yaml

    make_competition(tmp_path, n_train=30, models_dir="models", metric="my_metric.py:text", greater_is_better=True)
    write_yaml(tmp_path / "models" / "tiny.yaml", {**TINY_MODEL, "epochs": 1})
    (tmp_path / "my_metric.py").write_text(MARKED_METRIC)
    for command in (["check"], ["folds"], ["plan", "--models", "tiny"]):
        proc = run_cli(command[0], "-c", "competition.yaml", *command[1:], cwd=tmp_path, check=False)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / "imported.marker").exists(), command
    proc = run_cli("train", "-c", "competition.yaml", "--model", "tiny", "--fold", "0", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "my_metric.py:text returned '0.5' (str) on a tiny input" in proc.stderr
    assert "a metric must return a real number" in proc.stderr
    assert "epoch 1/1" not in proc.stdout and (tmp_path / "imported.marker").exists()


def test_custom_metric_score_errors(metric_file):
    for function, pattern in (("boom", "raised RuntimeError: kaput"), ("nan", "returned nan"),
                              ("text", "returned '0.5'")):
        m = get_metric(f"{metric_file}:{function}", "multiclass", greater_is_better=True)
        with pytest.raises(MetricError) as e:
            m.score(Y3, P3)
        assert pattern in str(e.value) and f"my_metric.py:{function}" in str(e.value)
        assert isinstance(e.value, ConfigError)


# --- per-label thresholds --------------------------------------------------------------------------------


def skewed(seed: int, n: int = 300, C: int = 5):
    """Rare labels whose probabilities run low: 0.5 misses most positives."""
    rng = np.random.default_rng(seed)
    rates = np.linspace(0.05, 0.5, C)
    y = (rng.random((n, C)) < rates).astype(int)
    p = np.clip(0.25 * y + 0.35 * rng.random((n, C)) * (0.5 + rates), 0, 1)
    return y, p


def test_thresholds_improve_f1_samples():
    y, p = skewed(0)
    m = get_metric("f1_samples", "multilabel")
    t = fit_label_thresholds(m, y, p)
    assert t.shape == (5,) and t.dtype == np.float64
    assert m.score(y, p, t) > m.score(y, p) + 0.2
    assert np.array_equal(t, fit_label_thresholds(m, y, p))  # deterministic


@pytest.mark.parametrize("name", ["f1_samples", "fbeta", "f1", "f1_micro", "f1_macro", "accuracy"])
def test_thresholds_never_worse_than_half(name):
    m = get_metric(name, "multilabel")
    for seed in range(4):
        rng = np.random.default_rng(seed)
        y = (rng.random((80, 4)) < 0.3).astype(int)
        p = rng.random((80, 4))
        t = fit_label_thresholds(m, y, p, grid=11, passes=2)
        assert m.score(y, p, t) >= m.score(y, p) - 1e-12
    y, p = skewed(1)
    assert m.score(y, p, fit_label_thresholds(m, y, p)) >= m.score(y, p)


@pytest.mark.parametrize("name", ["f1_samples", "fbeta", "f1", "f1_macro", "accuracy"])
def test_threshold_search_counts_agree_with_score(name):
    m = get_metric(name, "multilabel", beta=2.0)
    rng = np.random.default_rng(3)
    y = (rng.random((50, 4)) < 0.3).astype(int)
    y[0] = 0  # a row with no labels
    p = rng.random((50, 4))
    t = rng.uniform(0.2, 0.8, 4)
    counts, fast = T._Counts(y, p >= t), T._FAST[name]
    assert fast(m, counts, None, None) == pytest.approx(m.score(y, p, t))
    cand = np.array([0.0, 0.1, 0.5, p[7, 2], p[8, 0], 0.9, 1.1])  # two at a probability: >=
    for c in (2, 0):
        got = fast(m, counts, c, p[:, c], cand)
        want = [m.score(y, p, np.where(np.arange(4) == c, v, t)) for v in cand]
        assert np.allclose(got, want)
        t[c] = 0.3  # the counts follow a moved label
        counts.set(c, p[:, c] >= t[c])
        assert fast(m, counts, None, None) == pytest.approx(m.score(y, p, t))


def test_thresholds_other_metrics_and_tasks():
    y, p = skewed(2)
    assert np.array_equal(fit_label_thresholds(get_metric("auc", "multilabel"), y, p), np.full(5, 0.5))
    with pytest.raises(ValueError, match="multilabel"):
        fit_label_thresholds(get_metric("f1_macro", "multiclass"), Y3, P3)


# --- scores through get_metric, log loss per row, kappa, ordinal cut points -----------------------------------


def test_score_values():
    assert s("accuracy", "multiclass", Y3, P3) == pytest.approx(0.5)
    assert s("logloss", "multiclass", Y3, P3) == pytest.approx(-np.mean(np.log([0.7, 0.6, 0.2, 0.3])))
    assert s("f1_macro", "multiclass", Y3, P3) == pytest.approx(4 / 9)
    assert s("auc", "multiclass", Y3, P3) == pytest.approx(2.375 / 3)
    assert s("auc", "binary", YB, PB) == pytest.approx(7 / 9)
    assert s("accuracy", "multilabel", YM, PM) == pytest.approx(10 / 12)
    assert s("f1_macro", "multilabel", YM, PM) == pytest.approx(2.5 / 3)
    assert s("logloss", "multilabel", YM, PM) == pytest.approx(
        -(YM * np.log(PM) + (1 - YM) * np.log(1 - PM)).mean())
    assert s("qwk", "ordinal", np.array([0, 1, 2]), np.eye(3)[[0, 2, 2]]) == pytest.approx(0.8)
    # unnormalised rows: logloss renormalises after clipping, auc renormalises
    raw = P3 * np.array([[0.5], [1.0], [0.25], [0.5]])  # exact in binary: ties stay ties
    assert s("logloss", "multiclass", Y3, raw) == pytest.approx(s("logloss", "multiclass", Y3, P3))
    assert s("auc", "multiclass", Y3, raw) == pytest.approx(s("auc", "multiclass", Y3, P3))


def test_logloss_kappa_and_ordinal_cuts():
    p = np.array([[1.0, 0.0], [0.25, 0.75]])
    rows = row_logloss("binary", np.array([1, 1]), p)
    assert rows[0] == pytest.approx(-np.log(EPS / (1.0)), rel=1e-6)  # clipped to EPS, renormalised
    assert rows[1] == pytest.approx(-np.log(0.75))
    assert logloss("binary", np.array([1, 1]), p) == pytest.approx(rows.mean())
    assert quadratic_kappa(np.array([0, 1, 2]), np.array([0, 2, 2]), 3) == pytest.approx(0.8)
    assert quadratic_kappa(np.array([1, 1]), np.array([1, 1]), 3) == 0.0  # undefined
    assert list(apply_thresholds(np.array([0.2, 0.5, 1.7, 3.0]), np.array([1.5, 0.5]))) == [0, 1, 2, 2]
    y = np.array([0, 0, 1, 1, 2, 2])
    values = np.array([0.1, 0.9, 1.0, 1.2, 1.3, 2.4])
    t = fit_thresholds(y, values, 3)
    assert quadratic_kappa(y, apply_thresholds(values, t), 3) == pytest.approx(1.0)


def test_metric_is_a_value():
    a, b = get_metric("fbeta", "multilabel", beta=2), get_metric("fbeta", "multilabel", beta=2)
    assert a == b and hash(a) == hash(b) and isinstance(a, Metric)
    assert a != get_metric("fbeta", "multilabel", beta=1)
    assert pickle.loads(pickle.dumps(a)) == a
    assert pickle.loads(pickle.dumps(get_metric("map@3", "binary"))).k == 3
    from sklearn.base import BaseEstimator, clone

    class Holder(BaseEstimator):
        def __init__(self, metric=None):
            self.metric = metric

    assert clone(Holder(a)).metric is a
