"""Reading a competition's tables: train.csv, sample_submission.csv, and the class list.

Ids are always strings. Every check names the file and the column or rows at fault.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Competition, ConfigError


class DataError(Exception):
    """The competition's files do not match its config; the message names the file and rows."""


def _read_csv(path: Path, key: str, id_col: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found (competition key '{key}')")
    try:
        df = pd.read_csv(path, dtype={id_col: str}, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read as CSV ({e})") from None
    if id_col not in df.columns:
        raise DataError(
            f"{path}: id column '{id_col}' (competition key 'id_col') not found; columns are {list(df.columns)}"
        )
    return df


def examples(values, n: int = 5) -> str:
    """The first n values, comma-separated, and how many more: for error messages."""
    values = list(values)
    more = f" and {len(values) - n} more" if len(values) > n else ""
    return ", ".join(map(str, values[:n])) + more


def check_data_dir(comp: Competition) -> None:
    if not comp.data_dir.is_dir():
        hint = " (run `make demo` to write the embedded demo)" if comp.generator else ""
        raise DataError(f"{comp.data_dir}: data folder not found (competition key 'data_dir'){hint}")


def read_train(comp: Competition) -> pd.DataFrame:
    """train.csv with the id column as str, checked for duplicate ids, missing columns and empty labels."""
    check_data_dir(comp)
    path = comp.train_csv_path
    df = _read_csv(path, "train_csv", comp.id_col)
    wanted = comp.target_cols + ([comp.group_col] if comp.group_col else [])
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        keys = ["target" if c in comp.target_cols else "group_col" for c in missing]
        raise DataError(
            f"{path}: column(s) {missing} (competition key {sorted(set(keys))}) not found; "
            f"columns are {list(df.columns)}"
        )
    if df.empty:
        raise DataError(f"{path}: has no rows")
    ids = df[comp.id_col]
    if ids.isna().any():
        rows = (np.flatnonzero(ids.isna()) + 2).tolist()  # +2: header line and 1-based lines
        raise DataError(f"{path}: empty id in line(s) {examples(rows)}")
    dup = ids[ids.duplicated(keep=False)].unique()
    if len(dup):
        raise DataError(f"{path}: {len(dup)} duplicate id(s) in column '{comp.id_col}': {examples(dup)}")
    for col in wanted:
        empty = df[col].isna()
        if empty.any():
            bad = ids[empty].tolist()
            raise DataError(f"{path}: empty value in column '{col}' for {empty.sum()} row(s), ids {examples(bad)}")
    if comp.task == "multilabel":
        for col in comp.target_cols:
            values = set(pd.unique(df[col]))
            if not values <= {0, 1}:
                raise DataError(f"{path}: multilabel column '{col}' must hold 0/1, found {sorted(map(str, values))}")
    if comp.task == "ordinal":
        numeric = pd.to_numeric(df[comp.target], errors="coerce")
        if numeric.isna().any():
            bad = ids[numeric.isna()].tolist()
            raise DataError(f"{path}: ordinal target '{comp.target}' must be numeric; ids {examples(bad)} are not")
    if comp.group_col:
        df[comp.group_col] = df[comp.group_col].astype(str)
    if comp.task in ("binary", "multiclass"):
        df[comp.target] = df[comp.target].astype(str)
    return df


def read_sample(comp: Competition) -> pd.DataFrame:
    check_data_dir(comp)
    path = comp.sample_submission_path
    df = _read_csv(path, "sample_submission", comp.id_col)
    dup = df[comp.id_col][df[comp.id_col].duplicated()].unique()
    if len(dup):
        raise DataError(f"{path}: {len(dup)} duplicate id(s): {examples(dup)}")
    return df


def labels_as_text(comp: Competition, values: pd.Series) -> pd.Series:
    """A single-label target column as the class names used everywhere: the text as written, except
    ordinal targets, whose numbers are written one canonical way (2, 2.0 and 02 are one class)."""
    if comp.task == "ordinal":
        return pd.Series([str(v) for v in pd.to_numeric(values)], index=values.index)
    return values.astype(str)


def class_names(comp: Competition, train: pd.DataFrame) -> list[str]:
    """The probability columns, in a stable order: config `classes`, else sorted labels (numeric for ordinal)."""
    if comp.task == "multilabel":
        return list(comp.target_cols)
    labels = labels_as_text(comp, train[comp.target])
    if comp.task == "ordinal":
        found = [str(v) for v in sorted(pd.unique(pd.to_numeric(train[comp.target])))]
    else:
        found = sorted(pd.unique(labels))
    if comp.classes is not None:
        unknown = sorted(set(found) - set(comp.classes))
        if unknown:
            raise ConfigError(
                f"competition key 'classes' lists {comp.classes} but {comp.train_csv_path} also holds {unknown}"
            )
        return list(comp.classes)
    if comp.task == "binary" and len(found) != 2:
        raise DataError(f"{comp.train_csv_path}: task binary expects 2 classes in '{comp.target}', found {found}")
    return found


def encode_targets(comp: Competition, table: pd.DataFrame, classes: list[str], source: str | Path | None = None
                   ) -> np.ndarray:
    """Integer class index per row (n,), or the 0/1 matrix (n, C) for multilabel. A label that is not one
    of `classes` is an error naming `source` (default: train.csv)."""
    if comp.task == "multilabel":
        return table[comp.target_cols].to_numpy(dtype=np.float32)
    labels = labels_as_text(comp, table[comp.target])
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise DataError(f"{source or comp.train_csv_path}: label(s) {examples(unknown)} are not classes "
                        f"{examples(classes, 12)}")
    index = {c: i for i, c in enumerate(classes)}
    return labels.map(index).to_numpy(dtype=np.int64)


def read_answers(comp: Competition, classes: list[str], test_ids: list[str]) -> np.ndarray | None:
    """True test labels from the competition key `answers` (id + target column(s)), encoded like the
    training targets, in test_ids order; None when the competition has no answers."""
    if comp.answers is None:
        return None
    path = Path(comp.answers)
    if not path.is_file():
        print(f"note: answers file {path} (competition key 'answers') not found; no test scores")
        return None
    df = pd.read_csv(path, dtype={comp.id_col: str}, keep_default_na=False)
    missing_cols = [c for c in [comp.id_col, *comp.target_cols] if c not in df.columns]
    if missing_cols:
        raise DataError(f"{path}: column(s) {missing_cols} missing (competition key 'answers')")
    df = df.drop_duplicates(comp.id_col).set_index(comp.id_col)
    lacking = pd.Index(test_ids).difference(df.index)
    if len(lacking):
        raise DataError(f"{path}: no answer for {len(lacking)} test id(s): {examples(lacking)}")
    return encode_targets(comp, df.loc[test_ids].reset_index(), classes, source=path)
