"""Level-1 prediction tables: the contract between stages and with the outside world.

A table holds the id column and one probability column per class, named after the class (or the target
column for multilabel 0/1 columns), in the competition's class order; for regression, one predicted value
per target column (any finite number). The pipeline writes its own tables as Parquet, float32
(`<name>.parquet`: 12k rows x 1,000 classes read in well under a second); a table of your own may be a
CSV (`<name>.csv`) and joins the same way. Beside a table a sidecar `<name>.json` records what made it
(the folds hash above all). A table is refused when it misses ids, repeats ids, holds NaN, Inf or a value
outside [0, 1], has single-label rows that do not sum to 1, lacks class columns or has unknown ones, or was
made against another folds.csv. This module is the only one that reads or writes table files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Competition
from pipeline.core.data import (
    class_names,
    encode_targets,
    examples,
    lines,
    numbers,
    read_csv_text,
    read_sample,
    read_train,
)
from pipeline.core.errors import DataError
from pipeline.artifacts.folds import check_same_competition, fold_of
from pipeline.artifacts.record import changed_files, file_md5, record_path
from pipeline.core.io import atomic_path, release_memory, write_csv, write_json


PROBABILITY_TOLERANCE = 1e-6  # a probability may stray this far outside [0, 1] (float rounding)
ROW_SUM_TOLERANCE = 1e-3  # single-label rows must sum to 1 within this (tables and submissions alike)
TABLE = ".parquet"  # the pipeline's own tables
FORMATS = (TABLE, ".csv")  # what a table may be: ours, or a CSV of your own
COLUMN_BLOCK = 128  # Parquet class columns read at a time
ROW_GROUP_CELLS = 1 << 22  # Parquet rows written at a time: about this many (row, class) cells a row group


class TableError(DataError):
    """A prediction table that must not be trusted."""


def table_path(folder: str | Path, name: str) -> Path:
    """Where the pipeline writes the table `name` (e.g. `stacking/<model>.oof`): `<folder>/<name>.parquet`."""
    return Path(folder) / f"{name}{TABLE}"


def find_table(folder: str | Path, name: str) -> Path:
    """The table `name` in `folder`, ours (.parquet) or your own (.csv); both at once is refused (which one
    counts?); neither gives the path the pipeline would write, for a 'not found' message."""
    found = [Path(folder) / f"{name}{ext}" for ext in FORMATS if (Path(folder) / f"{name}{ext}").is_file()]
    if len(found) > 1:
        raise TableError(f"{found[0]} and {found[1]}: two tables for {name}; remove the one that should not count")
    return found[0] if found else table_path(folder, name)


def stem(path: str | Path) -> str:
    """`stacking/tiny.oof.parquet` -> `tiny.oof`."""
    name = Path(path).name
    for ext in FORMATS:
        name = name.removesuffix(ext)
    return name


def sidecar(path: str | Path) -> Path:
    return Path(path).with_name(stem(path) + ".json")


def _row_groups(n_rows: int, n_classes: int) -> list[slice]:
    """The row groups a table is written in: Arrow holds one group's columns at a time (ROW_GROUP_CELLS cells,
    16 MB), not a float32 copy of the whole table; at most classes, all rows are one group, as before."""
    step = max(1, ROW_GROUP_CELLS // max(n_classes, 1))
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)] or [slice(0, 0)]


def write_table(
    path: str | Path,
    ids,
    proba: np.ndarray,
    classes: list[str],
    id_col: str,
    meta: dict | None = None,
) -> Path:
    """Write a table, atomically: Parquet float32 (in row groups, _row_groups) for a `.parquet` path, CSV (7
    significant digits) else."""
    path = Path(path)
    if proba.shape != (len(ids), len(classes)):
        raise ValueError(f"proba shape {proba.shape} does not match {len(ids)} ids x {len(classes)} classes")
    if path.suffix == TABLE:
        import pyarrow as pa
        import pyarrow.parquet as pq

        release_memory()  # a stage writes its tables after its big temporaries: their freed heap goes back first
        values, ids = np.asarray(proba, dtype=np.float32), list(map(str, ids))
        schema = pa.schema([(id_col, pa.string())] + [(str(c), pa.float32()) for c in classes])
        with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            for rows in _row_groups(len(ids), len(classes)):
                columns = [pa.array(ids[rows], pa.string())] + [pa.array(values[rows, j]) for j in range(len(classes))]
                writer.write_table(pa.Table.from_arrays(columns, schema=schema))
                del columns
        pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed blocks otherwise
    else:
        df = pd.DataFrame(np.asarray(proba, dtype=np.float64), columns=classes)
        df.insert(0, id_col, list(map(str, ids)))
        write_csv(path, df, float_format="%.7g")
    if meta is not None:  # the sidecar also records the table's own md5: a table changed afterwards is caught
        write_json(sidecar(path), {**meta, "md5": file_md5(path)})
    return path


def check_pair(stacking: Path, name: str) -> None:
    """A model's OOF and test tables that `predict` made must be the files its record describes (one predict
    run, nothing edited or half-written since); tables of your own (no record) pass."""
    record = record_path(stacking, name)
    changed = changed_files(record)
    if changed:
        raise TableError(f"{stacking / name}.oof and .test tables: not as `predict` wrote them "
                         f"({'; '.join(changed[:3])}); rerun `make predict`, or remove {record} to take them as your "
                         "own tables")


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

    Parquet: ids as text, values as stored; CSV: cells read as text and converted on purpose. Refused,
    naming the file and rows: a missing or unknown column, an empty or repeated id, a value that is not a
    finite number in [0, 1] (regression: any finite number), and (single-label tasks, when `task` is given)
    a row whose probabilities do not sum to 1. Values come back as float32."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: not found")
    columns, read_ids, read_values = (_parquet if path.suffix == TABLE else _csv)(path, id_col)
    if id_col not in columns:
        raise TableError(f"{path}: id column '{id_col}' missing; columns are {columns}")
    missing_cols = [c for c in classes if c not in columns]
    if missing_cols:
        raise TableError(f"{path}: class column(s) {missing_cols} missing; expected {[id_col, *classes]}")
    unknown = [c for c in columns if c not in (id_col, *classes)]
    if unknown:
        raise TableError(f"{path}: unknown column(s) {unknown}; a table holds exactly {[id_col, *classes]}")
    ids = read_ids()
    if (ids.str.strip() == "").any():
        raise TableError(f"{path}: empty id in line(s) {lines(ids.str.strip() == '')}")
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise TableError(f"{path}: {len(dup)} repeated id(s): {examples(dup)}")
    values = read_values(classes)
    check_values(path, values, ids, task)
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
    out = pd.DataFrame(values, columns=classes, index=pd.Index(ids, name=id_col), copy=False)
    if expected_ids is not None and not expected.equals(pd.Index(ids)):  # rows in another order: one copy
        out = out.loc[expected]
    return out


def check_values(path: Path, values: np.ndarray, ids: pd.Series, task: str | None) -> None:
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise TableError(f"{path}: NaN, Inf or non-numeric values in {bad.sum()} row(s), ids {examples(ids[bad])}")
    outside = ((values < -PROBABILITY_TOLERANCE) | (values > 1 + PROBABILITY_TOLERANCE)).any(axis=1)
    if task != "regression" and outside.any():
        raise TableError(f"{path}: probabilities outside [0, 1] in {outside.sum()} row(s), ids {examples(ids[outside])}")
    if task is not None and task not in ("multilabel", "regression"):
        off = np.abs(values.sum(axis=1, dtype=np.float64) - 1.0) > ROW_SUM_TOLERANCE
        if off.any():
            raise TableError(f"{path}: {off.sum()} row(s) whose class probabilities do not sum to 1 (tolerance "
                             f"{ROW_SUM_TOLERANCE}), ids {examples(ids[off])}")


def _parquet(path: Path, id_col: str):
    """(column names, () -> ids as text, (classes) -> float32 values) of a Parquet table. Values are read
    a block of columns at a time straight into one float32 array: at 100k rows x 1,000 classes, Arrow never
    holds more than a block beside it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
        names = file.schema_arrow.names
    except Exception as e:  # noqa: BLE001 - a damaged file fails inside pyarrow in several ways
        raise TableError(f"{path}: cannot be read as Parquet ({type(e).__name__}: {e})") from None

    def read(columns: list[str]):
        try:
            return file.read(columns=columns)
        except Exception as e:  # noqa: BLE001 - as above
            raise TableError(f"{path}: cannot be read as Parquet ({type(e).__name__}: {e})") from None

    def ids() -> pd.Series:
        return pd.Series(read([id_col]).column(0).to_pylist(), dtype=str)

    def values(classes: list[str]) -> np.ndarray:
        out = np.empty((file.metadata.num_rows, len(classes)), dtype=np.float32)
        for start in range(0, len(classes), COLUMN_BLOCK):
            block = read(classes[start:start + COLUMN_BLOCK])
            for j, c in enumerate(block.column_names, start):
                try:
                    out[:, j] = block.column(c).to_numpy()
                except (TypeError, ValueError, pa.ArrowInvalid):
                    raise TableError(f"{path}: column {c!r} is not numeric") from None
            del block
            pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed blocks otherwise
        return out

    return names, ids, values


def _csv(path: Path, id_col: str):
    """(column names, () -> ids as text, (classes) -> float32 values) of a CSV table: the class columns are
    parsed as numbers on purpose; a file where that fails is read again as text to say which cells."""
    try:
        columns = list(pd.read_csv(path, dtype=str, keep_default_na=False, nrows=0).columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise TableError(f"{path}: cannot be read as CSV ({e})") from None
    try:
        frame = pd.read_csv(path, dtype={c: (str if c == id_col else np.float32) for c in columns},
                            keep_default_na=False, na_filter=False)
        return columns, lambda: frame[id_col], lambda classes: frame[classes].to_numpy(np.float32)
    except ValueError:
        text = read_csv_text(path)
        return columns, lambda: text[id_col], lambda classes: numbers(text[classes]).astype(np.float32)


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
    """Names with both an OOF table (<name>.oof.parquet or .csv) and a test table; and the files that lack
    their partner."""
    stacking = Path(stacking)
    found = {part: {stem(p).removesuffix(f".{part}") for ext in FORMATS for p in stacking.glob(f"*.{part}{ext}")}
             for part in ("oof", "test")}
    oof, test = found["oof"], found["test"]
    lonely = [f"{n}.oof table (no {n}.test table)" for n in sorted(oof - test)]
    lonely += [f"{n}.test table (no {n}.oof table)" for n in sorted(test - oof)]
    return sorted(oof & test), lonely


def load_level1(comp: Competition, stacking: str | Path = "stacking", folds_path: str | Path = "folds/folds.csv") -> Level1:
    """Every model's OOF and test tables (float32, filled in place: no second copy), checked against train
    ids, sample ids and folds.csv."""
    train = read_train(comp)
    classes = class_names(comp, train)
    y = encode_targets(comp, train, classes)
    train_ids = train[comp.id_col].astype(str).tolist()
    test_ids = read_sample(comp)[comp.id_col].astype(str).tolist()
    fold = fold_of(folds_path, comp, train_ids)
    folds_md5 = file_md5(folds_path)
    stacking = Path(stacking)
    if not stacking.is_dir():
        raise TableError(f"{stacking}: folder not found; run `make predict` or put <model>.oof/.test tables there")
    models, lonely = find_models(stacking)
    for name in lonely:
        print(f"note: ignoring {stacking / name}")
    if not models:
        raise TableError(f"{stacking}: no model with both <model>.oof and <model>.test tables (.parquet or .csv)")
    # (models, rows, classes) views of row-major (rows, models, classes) buffers: the blends' stacked
    # (rows, models x classes) matrix is then a view too, not a second copy
    oof = np.empty((len(train_ids), len(models), len(classes)), dtype=np.float32).transpose(1, 0, 2)
    test = np.empty((len(test_ids), len(models), len(classes)), dtype=np.float32).transpose(1, 0, 2)
    for m, name in enumerate(models):
        check_pair(stacking, name)
        for out, part, ids in ((oof, "oof", train_ids), (test, "test", test_ids)):
            path = find_table(stacking, f"{name}.{part}")
            check_same_competition(sidecar(path), comp, train_ids, path)
            out[m] = read_table(path, comp.id_col, classes, ids, folds_md5, comp.task).to_numpy()
    return Level1(models, classes, train_ids, test_ids, y, fold, oof, test)
