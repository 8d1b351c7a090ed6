"""Level-1 prediction tables: the contract between stages and with the outside world.

A table is a CSV with the id column and one probability column per class, named after the class (or
the target column for multilabel 0/1 columns), in the competition's class order; for regression, one
predicted value per target column (any finite number). Beside `<name>.csv` a sidecar
`<name>.json` records what made it (the folds hash above all). A table is refused when it misses ids,
repeats ids, holds NaN, Inf or a value outside [0, 1], has single-label rows that do not sum to 1, lacks
class columns or has unknown ones, or was made against another folds.csv.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Competition
from pipeline.core.data import (
    DataError,
    class_names,
    encode_targets,
    examples,
    lines,
    numbers,
    read_csv_text,
    read_sample,
    read_train,
)
from pipeline.artifacts.folds import check_same_competition, fold_of
from pipeline.core.io import file_md5, write_csv, write_json


PROBABILITY_TOLERANCE = 1e-6  # a probability may stray this far outside [0, 1] (float rounding)
ROW_SUM_TOLERANCE = 1e-3  # single-label rows must sum to 1 within this (tables and submissions alike)


class TableError(DataError):
    """A prediction table that must not be trusted."""


def sidecar(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name.removesuffix(".csv") + ".json")


def write_table(
    path: str | Path,
    ids,
    proba: np.ndarray,
    classes: list[str],
    id_col: str,
    meta: dict | None = None,
) -> Path:
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape != (len(ids), len(classes)):
        raise ValueError(f"proba shape {proba.shape} does not match {len(ids)} ids x {len(classes)} classes")
    df = pd.DataFrame(proba, columns=classes)
    df.insert(0, id_col, list(map(str, ids)))
    write_csv(path, df, float_format="%.7g")
    if meta is not None:  # the sidecar also records the table's own md5: a table changed afterwards is caught
        write_json(sidecar(path), {**meta, "md5": file_md5(path)})
    return Path(path)


def unchanged_since_written(path: str | Path) -> bool:
    """The table is the one its sidecar describes (same md5); True for a table without a recorded md5."""
    recorded = read_meta(path).get("md5")
    return recorded is None or (Path(path).is_file() and file_md5(path) == recorded)


def check_pair(oof_path: Path, test_path: Path) -> None:
    """A model's OOF and test tables must come from one predict run (the same stamp: checkpoints, folds,
    TTA) and be the files it wrote; otherwise a killed or partial predict, or a hand edit, shows here."""
    for path in (oof_path, test_path):
        if not unchanged_since_written(path):
            raise TableError(f"{path}: changed since it was written (its md5 is not the one in {sidecar(path)}); "
                             "rerun `make predict`, or remove its .json to take it as your own table")
    a, b = read_meta(oof_path).get("stamp"), read_meta(test_path).get("stamp")
    if (a is not None or b is not None) and a != b:
        raise TableError(f"{oof_path} and {test_path} come from different predict runs (other checkpoints, folds "
                         "or TTA: an interrupted predict?); rerun `make predict`")


def read_meta(path: str | Path) -> dict:
    import json

    p = sidecar(path)
    return json.loads(p.read_text()) if p.is_file() else {}


def read_table(
    path: str | Path,
    id_col: str,
    classes: list[str],
    expected_ids=None,
    folds_md5: str | None = None,
    task: str | None = None,
) -> pd.DataFrame:
    """Read and check a table; returns it indexed by id, columns in `classes` order, rows in expected order.

    Cells are read as text and converted on purpose. Refused, naming the file and rows: a missing or
    unknown column, an empty or repeated id, a value that is not a finite number in [0, 1] (regression: any
    finite number), and (single-label tasks, when `task` is given) a row whose probabilities do not sum to 1."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: not found")
    df = read_csv_text(path)
    if id_col not in df.columns:
        raise TableError(f"{path}: id column '{id_col}' missing; columns are {list(df.columns)}")
    missing_cols = [c for c in classes if c not in df.columns]
    if missing_cols:
        raise TableError(f"{path}: class column(s) {missing_cols} missing; expected {[id_col, *classes]}")
    unknown = [c for c in df.columns if c not in (id_col, *classes)]
    if unknown:
        raise TableError(f"{path}: unknown column(s) {unknown}; a table holds exactly {[id_col, *classes]}")
    ids = df[id_col]
    if (ids.str.strip() == "").any():
        raise TableError(f"{path}: empty id in line(s) {lines(ids.str.strip() == '')}")
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise TableError(f"{path}: {len(dup)} repeated id(s): {examples(dup)}")
    values = numbers(df[classes])
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise TableError(f"{path}: NaN, Inf or non-numeric values in {bad.sum()} row(s), ids {examples(ids[bad])}")
    outside = ((values < -PROBABILITY_TOLERANCE) | (values > 1 + PROBABILITY_TOLERANCE)).any(axis=1)
    if task != "regression" and outside.any():
        raise TableError(f"{path}: probabilities outside [0, 1] in {outside.sum()} row(s), ids {examples(ids[outside])}")
    if task is not None and task not in ("multilabel", "regression"):
        off = np.abs(values.sum(axis=1) - 1.0) > ROW_SUM_TOLERANCE
        if off.any():
            raise TableError(f"{path}: {off.sum()} row(s) whose class probabilities do not sum to 1 (tolerance "
                             f"{ROW_SUM_TOLERANCE}), ids {examples(ids[off])}")
    if expected_ids is not None:
        expected = pd.Index(list(map(str, expected_ids)))
        lacking = expected.difference(ids)
        extra = pd.Index(ids).difference(expected)
        if len(lacking) or len(extra):
            raise TableError(
                f"{path}: ids do not match: {len(lacking)} missing ({examples(lacking)}), "
                f"{len(extra)} unexpected ({examples(extra)})"
            )
    if folds_md5 is not None:
        made_with = read_meta(path).get("folds_md5")
        if made_with is not None and made_with != folds_md5:
            raise TableError(
                f"{path}: made against another folds.csv (hash {made_with[:8]}, now {folds_md5[:8]}); "
                "rerun its predictions or remove it"
            )
    out = pd.DataFrame(values, columns=classes, index=pd.Index(ids, name=id_col))
    if expected_ids is not None:
        out = out.loc[expected]
    return out


# --- level 1: every model's tables side by side --------------------------------------------------------


@dataclass
class Level1:
    models: list[str]
    classes: list[str]
    train_ids: list[str]
    test_ids: list[str]
    y: np.ndarray
    fold: np.ndarray
    oof: np.ndarray  # (n_models, n, C)
    test: np.ndarray  # (n_models, t, C)

    def select(self, names: list[str]) -> Level1:
        """The same tables for `names` only, in that order."""
        idx = [self.models.index(n) for n in names]
        return Level1(list(names), self.classes, self.train_ids, self.test_ids, self.y, self.fold,
                      self.oof[idx], self.test[idx])


def find_models(stacking: str | Path) -> tuple[list[str], list[str]]:
    """Names with both <name>.oof.csv and <name>.test.csv; and the files that lack their partner."""
    stacking = Path(stacking)
    oof = {p.name.removesuffix(".oof.csv") for p in stacking.glob("*.oof.csv")}
    test = {p.name.removesuffix(".test.csv") for p in stacking.glob("*.test.csv")}
    lonely = [f"{n}.oof.csv (no {n}.test.csv)" for n in sorted(oof - test)]
    lonely += [f"{n}.test.csv (no {n}.oof.csv)" for n in sorted(test - oof)]
    return sorted(oof & test), lonely


def load_level1(comp: Competition, stacking: str | Path = "stacking", folds_path: str | Path = "folds/folds.csv") -> Level1:
    """Every model's OOF and test tables, checked against train ids, sample ids and folds.csv."""
    train = read_train(comp)
    classes = class_names(comp, train)
    y = encode_targets(comp, train, classes)
    train_ids = train[comp.id_col].astype(str).tolist()
    test_ids = read_sample(comp)[comp.id_col].astype(str).tolist()
    fold = fold_of(folds_path, comp, train_ids)
    folds_md5 = file_md5(folds_path)
    stacking = Path(stacking)
    if not stacking.is_dir():
        raise TableError(f"{stacking}: folder not found; run `make predict` or put <model>.oof.csv/.test.csv there")
    models, lonely = find_models(stacking)
    for name in lonely:
        print(f"note: ignoring {stacking / name}")
    if not models:
        raise TableError(f"{stacking}: no model with both <model>.oof.csv and <model>.test.csv")
    oof, test = [], []
    for m in models:
        for path in (stacking / f"{m}.oof.csv", stacking / f"{m}.test.csv"):
            check_same_competition(sidecar(path), comp, train_ids, path)
        oof.append(read_table(stacking / f"{m}.oof.csv", comp.id_col, classes, train_ids, folds_md5, comp.task)
                   .to_numpy())
        test.append(read_table(stacking / f"{m}.test.csv", comp.id_col, classes, test_ids, folds_md5, comp.task)
                    .to_numpy())
        check_pair(stacking / f"{m}.oof.csv", stacking / f"{m}.test.csv")
    return Level1(models, classes, train_ids, test_ids, y, fold, np.stack(oof), np.stack(test))
