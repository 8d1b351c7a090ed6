"""Level-1 prediction tables: the contract between stages and with the outside world.

A table is a CSV with the id column and one probability column per class, named after the class (or
the target column for multilabel), in the competition's class order. Beside `<name>.csv` a sidecar
`<name>.json` records what made it (the folds hash above all). A table is refused when it misses ids,
repeats ids, holds NaN or Inf, lacks class columns, or was made against another folds.csv.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Competition
from pipeline.data import DataError, class_names, encode_targets, examples, read_sample, read_train
from pipeline.folds import fold_of
from pipeline.io import file_md5, write_csv, write_json


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
    if meta is not None:
        write_json(sidecar(path), meta)
    return Path(path)


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
) -> pd.DataFrame:
    """Read and check a table; returns it indexed by id, columns in `classes` order, rows in expected order."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: not found")
    df = pd.read_csv(path, dtype={id_col: str})
    if id_col not in df.columns:
        raise TableError(f"{path}: id column '{id_col}' missing; columns are {list(df.columns)}")
    missing_cols = [c for c in classes if c not in df.columns]
    if missing_cols:
        raise TableError(f"{path}: class column(s) {missing_cols} missing; expected {[id_col, *classes]}")
    ids = df[id_col]
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise TableError(f"{path}: {len(dup)} repeated id(s): {examples(dup)}")
    values = df[classes].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise TableError(f"{path}: NaN, Inf or non-numeric values in {bad.sum()} row(s), ids {examples(ids[bad])}")
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
        oof.append(read_table(stacking / f"{m}.oof.csv", comp.id_col, classes, train_ids, folds_md5).to_numpy())
        test.append(read_table(stacking / f"{m}.test.csv", comp.id_col, classes, test_ids, folds_md5).to_numpy())
    return Level1(models, classes, train_ids, test_ids, y, fold, np.stack(oof), np.stack(test))
