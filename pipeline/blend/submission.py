"""The submission: shaped exactly like sample_submission.csv, checked before it is written.

The format is read off the sample (or forced by the competition key `submission_format`):

- sample columns `[id, target]`: one class-name label per row (`labels`); for a binary task whose
  sample holds float numbers, the probability of the positive class, the second class in class order
  (`positive_probability`);
- sample columns `[id, *classes]` (any order): one probability per class (`class_probabilities`);
  rows must sum to 1 unless the task is multilabel;
- multilabel: one column per target label with its probability; `submission_format: labels`
  writes 0/1 instead (cut at 0.5). A sample holding integer placeholders is not taken as a request
  for 0/1, since Kaggle samples often hold 0 where probabilities are scored.
- multilabel tags (`target` one column, labels separated by `label_sep`): sample `[id, target]`
  gets the labels at or above 0.5, in class order (`tags`). A blend with tuned thresholds has moved
  each label's threshold to 0.5, so the file holds exactly what the CV scored.
- `submission_format: topk`: sample `[id, target]` gets the k most likely classes, best first (`topk`,
  MAP@k competitions).
- regression: one number column per target (`values`).

`check_submission` returns every reason a table is not a valid submission (empty list: valid); rows
may come in any order. `write_submission` writes the sample's ids in the sample's order, atomically,
and refuses an invalid table. `archive_submission` keeps a copy under
`history/<UTC time>_<method>_cv<score>.csv`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Competition
from pipeline.core.data import examples, numbers, read_csv_text
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.io import write_csv, write_text
from pipeline.artifacts.tables import ROW_SUM_TOLERANCE

KINDS = ("labels", "positive_probability", "class_probabilities", "multilabel_probabilities", "multilabel_labels",
         "tags", "topk", "values")


class SubmissionError(DataError):
    """A submission that must not be uploaded; the message lists every reason."""


@dataclass(frozen=True)
class SubmissionFormat:
    kind: str  # one of KINDS
    id_col: str
    columns: tuple[str, ...]  # the sample's full header
    value_classes: tuple[int, ...]  # class index written in each value column (label kinds: unused)
    sep: str = " "  # tags and topk: the separator between labels in a cell
    k: int = 0  # topk: how many labels a row holds

    @property
    def value_cols(self) -> list[str]:
        return list(self.columns[1:])

    @property
    def is_probability(self) -> bool:
        return self.kind in ("positive_probability", "class_probabilities", "multilabel_probabilities")


def infer_format(comp: Competition, sample: pd.DataFrame, classes: list[str]) -> SubmissionFormat:
    """How predictions map onto the sample's header; ConfigError/DataError when they cannot."""
    path = comp.sample_submission_path
    columns = [str(c) for c in sample.columns]
    if not columns or columns[0] != comp.id_col:
        raise DataError(f"{path}: the first column must be the id column '{comp.id_col}', header is {columns}")
    values = columns[1:]
    wanted = comp.submission_format
    if comp.task == "regression":
        if sorted(values) != sorted(classes):
            raise DataError(f"{path}: header {columns} does not match the regression targets: expected "
                            f"[{comp.id_col}, {', '.join(classes)}] in any order")
        return SubmissionFormat("values", comp.id_col, tuple(columns), tuple(classes.index(c) for c in values))
    if len(values) == 1 and (wanted == "topk" or (comp.is_tags and values[0] not in classes)):
        if comp.is_tags and wanted in ("auto", "labels"):
            return SubmissionFormat("tags", comp.id_col, tuple(columns), (), sep=comp.label_sep)
        if wanted == "topk":
            return SubmissionFormat("topk", comp.id_col, tuple(columns), (), sep=comp.label_sep,
                                    k=min(comp.k, len(classes)))
    if comp.task == "multilabel" or len(values) > 1:
        if set(values) != set(classes) or len(values) != len(classes):
            raise DataError(
                f"{path}: header {columns} does not match the classes {classes}: expected [{comp.id_col}, "
                f"{', '.join(classes)}] in any order, or [{comp.id_col}, <target>] for one label per row"
            )
        index = tuple(classes.index(c) for c in values)
        if comp.task == "multilabel":
            kind = "multilabel_labels" if wanted == "labels" else "multilabel_probabilities"
        else:
            if wanted == "labels":
                raise ConfigError(
                    f"competition key 'submission_format' is labels, but {path} has one column per class "
                    f"({values}); use probabilities or auto"
                )
            kind = "class_probabilities"
        return SubmissionFormat(kind, comp.id_col, tuple(columns), index)
    if len(values) != 1:
        raise DataError(f"{path}: header {columns} has no value column besides the id column '{comp.id_col}'")
    numeric_floats = holds_floats(sample[values[0]])
    if wanted == "probabilities" or (wanted == "auto" and comp.task == "binary" and numeric_floats):
        if comp.task != "binary" or len(classes) != 2:
            raise ConfigError(
                f"competition key 'submission_format' is probabilities, but {path} has a single value column "
                f"'{values[0]}' and task {comp.task} has {len(classes)} classes; one column holds one probability "
                "only for binary tasks"
            )
        return SubmissionFormat("positive_probability", comp.id_col, tuple(columns), (1,))
    return SubmissionFormat("labels", comp.id_col, tuple(columns), ())


def holds_floats(column: pd.Series) -> bool:
    """A sample column (as text) holds probabilities: every cell is a number or empty, and some cell is
    written as a float (a '.', an exponent) or is empty; whole numbers alone are label placeholders."""
    text = column.astype(str).str.strip()
    written_empty = (text == "").to_numpy()
    if (np.isnan(numbers(text.to_frame())[:, 0]) & ~written_empty).any():
        return False
    return bool((text.str.contains(r"[.eE]") | written_empty).any())


def make_submission(
    fmt: SubmissionFormat, sample: pd.DataFrame, classes: list[str], ids, proba: np.ndarray
) -> pd.DataFrame:
    """Predictions (rows for `ids`, columns in class order) as a table in the sample's format and row order."""
    proba = np.asarray(proba, dtype=np.float64)
    ids = [str(i) for i in ids]
    if proba.shape != (len(ids), len(classes)):
        raise ValueError(f"proba shape {proba.shape} does not match {len(ids)} ids x {len(classes)} classes")
    frame = pd.DataFrame(proba, index=pd.Index(ids))
    order = sample[fmt.id_col].astype(str).tolist()
    missing = [i for i in order if i not in frame.index]
    if missing:
        raise SubmissionError(f"no prediction for {len(missing)} sample id(s): {examples(missing)}")
    p = frame.loc[order].to_numpy()
    out = pd.DataFrame({fmt.id_col: order})
    names = np.asarray(classes, dtype=object)
    if fmt.kind == "labels":
        out[fmt.value_cols[0]] = names[p.argmax(axis=1)]
    elif fmt.kind == "values":
        for col, c in zip(fmt.value_cols, fmt.value_classes):
            out[col] = p[:, c]
    elif fmt.kind == "tags":  # the labels at or above 0.5 (a tuned blend has moved each label's threshold there)
        out[fmt.value_cols[0]] = [fmt.sep.join(names[row >= 0.5]) for row in p]
    elif fmt.kind == "topk":  # the k most likely classes, best first; ties keep class order
        best = np.argsort(-p, axis=1, kind="stable")[:, : fmt.k]
        out[fmt.value_cols[0]] = [fmt.sep.join(names[row]) for row in best]
    elif fmt.kind == "positive_probability":
        out[fmt.value_cols[0]] = np.clip(p[:, 1], 0.0, 1.0)
    else:
        p = np.clip(p, 0.0, 1.0)
        if fmt.kind == "class_probabilities":
            p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
        for col, c in zip(fmt.value_cols, fmt.value_classes):
            out[col] = (p[:, c] >= 0.5).astype(int) if fmt.kind == "multilabel_labels" else p[:, c]
    return out


def _as_text(df: pd.DataFrame) -> pd.DataFrame:
    """Every cell as a string, as a CSV would hold it (so a table and a file are checked alike)."""
    return df.astype(str)


def check_submission(
    df: pd.DataFrame, fmt: SubmissionFormat, sample: pd.DataFrame, classes: list[str], task: str
) -> list[str]:
    """Every reason `df` is not a valid submission for this sample; an empty list means valid."""
    reasons: list[str] = []
    header = [str(c) for c in df.columns]
    if header != list(fmt.columns):
        reasons.append(f"wrong header: expected {list(fmt.columns)}, got {header}")
    if fmt.id_col not in header:
        return reasons + [f"id column '{fmt.id_col}' missing"]
    text = _as_text(df)
    ids = text[fmt.id_col]
    expected = pd.Index(sample[fmt.id_col].astype(str))
    if len(df) != len(expected):
        reasons.append(f"wrong row count: {len(df)} rows, the sample has {len(expected)}")
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        reasons.append(f"{len(dup)} duplicated id(s): {examples(dup)}")
    missing = expected.difference(pd.Index(ids))
    if len(missing):
        reasons.append(f"{len(missing)} id(s) of the sample missing: {examples(missing)}")
    extra = pd.Index(ids.unique()).difference(expected)
    if len(extra):
        reasons.append(f"{len(extra)} id(s) not in the sample: {examples(extra)}")

    value_cols = [c for c in fmt.value_cols if c in text.columns]
    if fmt.kind == "labels":
        for col in value_cols:
            bad = ~text[col].isin(classes)
            if bad.any():
                reasons.append(
                    f"column '{col}': {bad.sum()} value(s) not a known class ({examples(text[col][bad].unique())}); "
                    f"classes are {examples(classes, 12)}"
                )
        return reasons
    if fmt.kind in ("tags", "topk"):
        return reasons + check_label_lists(text, value_cols, fmt, classes)
    if fmt.kind == "multilabel_labels":
        for col in value_cols:
            bad = ~text[col].isin(["0", "1"])
            if bad.any():
                reasons.append(f"column '{col}': {bad.sum()} value(s) not 0 or 1 ({examples(text[col][bad].unique())})")
        return reasons
    values = numbers(text[value_cols])
    for j, col in enumerate(value_cols):
        v = values[:, j]
        nan, inf = np.isnan(v), np.isinf(v)
        if nan.any():
            reasons.append(f"column '{col}': {nan.sum()} NaN, empty or non-numeric value(s), ids {examples(ids[nan])}")
        if inf.any():
            reasons.append(f"column '{col}': {inf.sum()} infinite value(s), ids {examples(ids[inf])}")
        out = np.isfinite(v) & ((v < 0) | (v > 1)) & (fmt.kind != "values")
        if out.any():
            reasons.append(f"column '{col}': {out.sum()} probability(ies) outside [0, 1], ids {examples(ids[out])}")
    if fmt.kind == "class_probabilities" and task != "multilabel" and len(value_cols) == len(fmt.value_cols):
        sums = values.sum(axis=1)
        off = np.isfinite(sums) & (np.abs(sums - 1.0) > ROW_SUM_TOLERANCE)
        if off.any():
            reasons.append(
                f"{off.sum()} row(s) whose class probabilities do not sum to 1 (tolerance {ROW_SUM_TOLERANCE}), "
                f"ids {examples(ids[off])}"
            )
    return reasons


def check_label_lists(text: pd.DataFrame, value_cols: list[str], fmt: SubmissionFormat, classes: list[str]) -> list[str]:
    """Cells holding labels separated by fmt.sep: every label a class, none twice; topk: 1 to k labels."""
    reasons, known = [], set(classes)
    for col in value_cols:
        cells = [[t for t in cell.split(fmt.sep) if t] for cell in text[col]]
        unknown = sorted({t for cell in cells for t in cell} - known)
        if unknown:
            reasons.append(f"column '{col}': label(s) not a known class ({examples(unknown)}); classes are "
                           f"{examples(classes, 12)}")
        repeated = [i for i, cell in enumerate(cells) if len(set(cell)) < len(cell)]
        if repeated:
            reasons.append(f"column '{col}': a label repeated within a row in {len(repeated)} row(s)")
        if fmt.kind == "topk":
            wrong = [i for i, cell in enumerate(cells) if not 1 <= len(cell) <= fmt.k]
            if wrong:
                reasons.append(f"column '{col}': {len(wrong)} row(s) without 1 to k={fmt.k} labels")
    return reasons


def read_candidate(path: str | Path) -> pd.DataFrame:
    """A CSV to check, every cell as text (the pipeline's one CSV reader: nothing converted, so nothing is
    hidden); SubmissionError naming the file when it is missing or not a CSV."""
    try:
        return read_csv_text(path, " (the submission to check)")
    except DataError as e:
        raise SubmissionError(str(e)) from None


def validate_file(path: str | Path, comp: Competition) -> SubmissionFormat:
    """Check a CSV file against the competition's sample; SubmissionError lists the reasons."""
    from pipeline.core.data import class_names, read_sample, read_train

    classes = class_names(comp, read_train(comp))
    sample = read_sample(comp)
    fmt = infer_format(comp, sample, classes)
    reasons = check_submission(read_candidate(path), fmt, sample, classes, comp.task)
    if reasons:
        raise SubmissionError(f"{path}: not a valid submission ({fmt.kind}):\n  - " + "\n  - ".join(reasons))
    return fmt


def write_submission(
    path: str | Path, df: pd.DataFrame, fmt: SubmissionFormat, sample: pd.DataFrame, classes: list[str], task: str
) -> Path:
    """Validate `df`, then write it atomically in the sample's row order; SubmissionError if invalid."""
    path = Path(path)
    reasons = check_submission(df, fmt, sample, classes, task)
    if reasons:
        raise SubmissionError(f"{path}: refusing to write an invalid submission:\n  - " + "\n  - ".join(reasons))
    order = sample[fmt.id_col].astype(str)
    df = df.assign(**{fmt.id_col: df[fmt.id_col].astype(str)}).set_index(fmt.id_col).loc[order].reset_index()
    write_csv(path, df[list(fmt.columns)], float_format="%.7g")
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "blend"


def archive_submission(
    path: str | Path, history_dir: str | Path, method: str, cv: float | None, now: datetime | None = None
) -> Path:
    """Copy a written submission to history_dir/<UTC time>_<method>_cv<score>.csv (never overwrites)."""
    path, history_dir = Path(path), Path(history_dir)
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    score = "nan" if cv is None or not np.isfinite(cv) else f"{cv:.5f}"
    base = f"{stamp}_{_slug(method)}_cv{score}"
    target = history_dir / f"{base}.csv"
    n = 2
    while target.exists():
        target = history_dir / f"{base}_{n}.csv"
        n += 1
    write_text(target, path.read_text())
    return target
