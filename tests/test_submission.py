"""The submission: format read off the sample, every refusal, shuffled rows, atomic write, history."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import Competition, ConfigError
from pipeline.core.data import DataError
from pipeline.blend.submission import (
    SubmissionError,
    archive_submission,
    check_submission,
    infer_format,
    make_submission,
    validate_file,
    write_submission,
)
from tests.conftest import make_competition

IDS = ["a1", "007", "b3", "c4"]
CLASSES = ["cat", "dog", "fox"]


def _comp(task="multiclass", target="label", fmt="auto", **kw) -> Competition:
    return Competition(data_dir=Path("nowhere"), target=target, task=task, submission_format=fmt, id_col="id", **kw)


def _proba(n=4, c=3, seed=0):
    return np.random.default_rng(seed).dirichlet(np.ones(c), size=n)


LABEL_SAMPLE = pd.DataFrame({"id": IDS, "label": "cat"})
PROBA_SAMPLE = pd.DataFrame({"id": IDS, "fox": 0.0, "cat": 0.0, "dog": 0.0})  # class columns in another order


def _labels_case():
    fmt = infer_format(_comp(), LABEL_SAMPLE, CLASSES)
    return fmt, make_submission(fmt, LABEL_SAMPLE, CLASSES, IDS, _proba())


def _proba_case():
    fmt = infer_format(_comp(), PROBA_SAMPLE, CLASSES)
    return fmt, make_submission(fmt, PROBA_SAMPLE, CLASSES, IDS, _proba())


# --- the format -----------------------------------------------------------------------------------


def test_format_is_read_off_the_sample():
    assert infer_format(_comp(), LABEL_SAMPLE, CLASSES).kind == "labels"
    fmt = infer_format(_comp(), PROBA_SAMPLE, CLASSES)
    assert fmt.kind == "class_probabilities" and fmt.value_classes == (2, 0, 1)
    floats = pd.DataFrame({"id": IDS, "label": 0.5})
    ints = pd.DataFrame({"id": IDS, "label": 0})
    assert infer_format(_comp("binary"), floats, ["0", "1"]).kind == "positive_probability"
    assert infer_format(_comp("binary"), ints, ["0", "1"]).kind == "labels"
    assert infer_format(_comp("multiclass"), floats, CLASSES).kind == "labels"  # one column holds no 3 probabilities
    ml = pd.DataFrame({"id": IDS, "b": 0, "a": 0})
    assert infer_format(_comp("multilabel", ["a", "b"]), ml, ["a", "b"]).kind == "multilabel_probabilities"
    assert infer_format(_comp("multilabel", ["a", "b"], "labels"), ml, ["a", "b"]).kind == "multilabel_labels"
    assert infer_format(_comp("binary", fmt="probabilities"), ints, ["0", "1"]).kind == "positive_probability"


def test_format_refuses_what_cannot_be_mapped():
    with pytest.raises(DataError, match="does not match the classes"):
        infer_format(_comp(), pd.DataFrame({"id": IDS, "cat": 0.0, "cow": 0.0, "dog": 0.0}), CLASSES)
    with pytest.raises(DataError, match="first column must be the id column"):
        infer_format(_comp(), pd.DataFrame({"image": IDS, "label": "cat"}), CLASSES)
    with pytest.raises(ConfigError, match="submission_format"):
        infer_format(_comp(fmt="labels"), PROBA_SAMPLE, CLASSES)
    with pytest.raises(ConfigError, match="only for binary"):
        infer_format(_comp(fmt="probabilities"), LABEL_SAMPLE, CLASSES)


def test_make_submission_values():
    p = np.array([[0.1, 0.7, 0.2], [0.8, 0.1, 0.1], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]])
    fmt = infer_format(_comp(), LABEL_SAMPLE, CLASSES)
    out = make_submission(fmt, LABEL_SAMPLE, CLASSES, IDS[::-1], p[::-1])  # predictions in another order
    assert out.columns.tolist() == ["id", "label"] and out["id"].tolist() == IDS
    assert out["label"].tolist() == ["dog", "cat", "fox", "fox"]
    fmt = infer_format(_comp(), PROBA_SAMPLE, CLASSES)
    out = make_submission(fmt, PROBA_SAMPLE, CLASSES, IDS, p)
    assert np.allclose(out[["cat", "dog", "fox"]].to_numpy(), p)
    binary = pd.DataFrame({"id": IDS, "label": 0.5})
    fmt = infer_format(_comp("binary"), binary, ["neg", "pos"])
    out = make_submission(fmt, binary, ["neg", "pos"], IDS, p[:, :2] / p[:, :2].sum(1, keepdims=True))
    assert np.allclose(out["label"], p[:, 1] / p[:, :2].sum(1))
    with pytest.raises(SubmissionError, match="no prediction"):
        make_submission(fmt, binary, ["neg", "pos"], IDS[:3], p[:3, :2])


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [_labels_case, _proba_case])
def test_valid_and_shuffled_rows_are_accepted_and_written_in_sample_order(case, tmp_path):
    fmt, df = case()
    sample = LABEL_SAMPLE if fmt.kind == "labels" else PROBA_SAMPLE
    assert check_submission(df, fmt, sample, CLASSES, "multiclass") == []
    shuffled = df.sample(frac=1.0, random_state=3)
    assert shuffled["id"].tolist() != IDS
    assert check_submission(shuffled, fmt, sample, CLASSES, "multiclass") == []
    path = write_submission(tmp_path / "sub.csv", shuffled, fmt, sample, CLASSES, "multiclass")
    written = pd.read_csv(path, dtype={"id": str})
    assert written["id"].tolist() == IDS and written.columns.tolist() == list(fmt.columns)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temporary file


def _reasons(df, case=_proba_case):
    fmt, _ = case()
    sample = LABEL_SAMPLE if fmt.kind == "labels" else PROBA_SAMPLE
    return " | ".join(check_submission(df, fmt, sample, CLASSES, "multiclass"))


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda df: df.rename(columns={"fox": "wolf"}), "wrong header"),
        (lambda df: df[["id", "cat", "dog", "fox"]], "wrong header"),
        (lambda df: df.iloc[1:], "missing"),
        (lambda df: df.assign(id=df["id"].replace({"b3": "zz"})), "not in the sample"),
        (lambda df: pd.concat([df, df.iloc[:1]]), "duplicated id"),
        (lambda df: df.iloc[:3], "wrong row count"),
        (lambda df: df.assign(cat=[np.nan, *df["cat"].iloc[1:]]), "NaN"),
        (lambda df: df.assign(cat=["", *df["cat"].iloc[1:]]), "NaN, empty"),
        (lambda df: df.assign(dog=[np.inf, *df["dog"].iloc[1:]]), "infinite"),
        (lambda df: df.assign(fox=[1.5, *df["fox"].iloc[1:]]), "outside [0, 1]"),
        (lambda df: df.assign(fox=[-0.2, *df["fox"].iloc[1:]]), "outside [0, 1]"),
        (lambda df: df.assign(fox=df["fox"] + 0.01), "do not sum to 1"),
    ],
)
def test_bad_probability_submissions_are_refused(edit, expected):
    fmt, df = _proba_case()
    assert _reasons(df) == ""
    assert expected in _reasons(edit(df.copy()))


def test_small_rounding_in_row_sums_is_tolerated():
    fmt, df = _proba_case()
    assert _reasons(df.assign(fox=df["fox"] + 4e-4)) == ""


def test_unknown_label_is_refused_and_nothing_is_written(tmp_path):
    fmt, df = _labels_case()
    bad = df.assign(label=["cat", "dog", "cow", "fox"])
    assert "not a known class" in _reasons(bad, _labels_case) and "cow" in _reasons(bad, _labels_case)
    with pytest.raises(SubmissionError, match="refusing to write"):
        write_submission(tmp_path / "sub.csv", bad, fmt, LABEL_SAMPLE, CLASSES, "multiclass")
    assert not (tmp_path / "sub.csv").exists()


def test_multilabel_rows_need_not_sum_to_one():
    ml = pd.DataFrame({"id": IDS, "a": 0.0, "b": 0.0})
    fmt = infer_format(_comp("multilabel", ["a", "b"]), ml, ["a", "b"])
    df = make_submission(fmt, ml, ["a", "b"], IDS, np.full((4, 2), 0.9))
    assert check_submission(df, fmt, ml, ["a", "b"], "multilabel") == []
    fmt01 = infer_format(_comp("multilabel", ["a", "b"], "labels"), ml, ["a", "b"])
    df01 = make_submission(fmt01, ml, ["a", "b"], IDS, np.full((4, 2), 0.9))
    assert df01["a"].tolist() == [1, 1, 1, 1]
    assert "not 0 or 1" in " ".join(check_submission(df01.assign(a=2), fmt01, ml, ["a", "b"], "multilabel"))


# --- history and the file validator -------------------------------------------------------------------


def test_archive_names_say_method_and_cv_and_never_overwrite(tmp_path):
    sub = tmp_path / "submission.csv"
    sub.write_text("id,label\n1,cat\n")
    now = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    a = archive_submission(sub, tmp_path / "history", "mean+thr", 0.9123, now=now)
    b = archive_submission(sub, tmp_path / "history", "mean+thr", 0.9123, now=now)
    assert a.name == "20240506T070809Z_mean-thr_cv0.91230.csv"
    assert b != a and b.exists() and a.read_text() == sub.read_text()
    assert archive_submission(sub, tmp_path / "history", "lgbm", float("nan"), now=now).name.endswith("_lgbm_cvnan.csv")


def test_validate_file_on_a_competition(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_competition(tmp_path, n_train=30, n_test=6)
    from pipeline.core.config import load_competition

    comp = load_competition("competition.yaml")
    sample = pd.read_csv(comp.sample_submission_path, dtype=str)
    sample.sample(frac=1.0, random_state=1).assign(label="c2").to_csv("ok.csv", index=False)
    assert validate_file("ok.csv", comp).kind == "labels"
    sample.assign(label="c7").to_csv("bad.csv", index=False)
    with pytest.raises(SubmissionError, match="not a known class"):
        validate_file("bad.csv", comp)
    with pytest.raises(SubmissionError, match="not found"):
        validate_file("missing.csv", comp)
