"""Per-image metadata (competition key `meta_cols`): read and coded as numbers, for the stackers
(pipeline.blend.meta) and for a model's metadata head (model key `meta_head`, pipeline.nn.metahead).

The columns come from train.csv for the training rows and from the test table (competition key `test_csv`;
default: the sample submission when it holds them) for the test rows, matched by the id column; an extra
table's rows (competition key `extra_train`) take them from that table when it has them (missing otherwise).
Each column's kind and encoding are fitted on train.csv only (`MetaEncoding.fit`): a column whose every
non-blank cell is a number is numeric (a blank cell is missing: NaN); any other column is categorical,
coded by its sorted train values (a blank cell, or a value train never had, is missing: NaN). The encoding
travels with what was fitted on it (blend.json's "meta", a checkpoint's "meta"), so the Kaggle kernel codes
the test table exactly so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Competition
from pipeline.core.data import read_csv_text
from pipeline.core.errors import ConfigError, DataError


def require_meta_cols(comp: Competition, source: str) -> None:
    """A model with `meta_head: true` (its config file: `source`) needs the competition's metadata columns."""
    if not comp.meta_cols:
        raise ConfigError(f"{source}: key 'meta_head': the model takes each image's metadata, so the competition "
                          "needs the key meta_cols (the metadata columns of train.csv and the test table), or set "
                          "meta_head: false")


def test_table_path(comp: Competition) -> Path:
    """The table the test rows' metadata comes from: `test_csv`, else the sample submission."""
    return comp.data_dir / comp.test_csv if comp.test_csv else comp.sample_submission_path


def _columns(comp: Competition, path: Path, df: pd.DataFrame, hint: str) -> None:
    missing = [c for c in [comp.id_col, *comp.meta_cols] if c not in df.columns]
    if missing:
        raise ConfigError(f"competition key meta_cols: {path} has no column(s) {', '.join(missing)} "
                          f"(it has {', '.join(map(str, df.columns[:12]))}){hint}")


def read_meta(comp: Competition, split: str, ids: list[str]) -> pd.DataFrame:
    """The meta_cols of train.csv ("train") or of the test table ("test"), one row per id in `ids`' order,
    as text. ConfigError naming the file and columns when a column is missing; DataError naming ids the
    table lacks."""
    path = comp.train_csv_path if split == "train" else test_table_path(comp)
    hint = ("" if split == "train" or comp.test_csv else
            "; set the competition key test_csv to the test table holding the metadata columns")
    df = read_csv_text(path, f" (competition key {'train_csv' if split == 'train' else 'test_csv'})")
    _columns(comp, path, df, hint)
    df = df.drop_duplicates(comp.id_col).set_index(comp.id_col)
    absent = [i for i in ids if i not in df.index]
    if absent:
        raise DataError(f"{path}: no row for {len(absent)} {split} id(s) ({', '.join(absent[:5])}); its metadata "
                        f"columns {', '.join(comp.meta_cols)} are needed for every {split} row")
    return df.loc[ids, comp.meta_cols].reset_index(drop=True)


def check_meta(comp: Competition) -> None:
    """meta_cols exist in train.csv and in the test table (for `make check` and `ensemble`)."""
    if not comp.meta_cols:
        return
    for split, path in (("train", comp.train_csv_path), ("test", test_table_path(comp))):
        df = read_csv_text(path).head(0)
        hint = "" if split == "train" or comp.test_csv else ("; set the competition key test_csv to the test "
                                                             "table holding the metadata columns")
        _columns(comp, path, df, hint)


def _number(text: pd.Series) -> pd.Series:
    return pd.to_numeric(text.str.strip().replace("", np.nan), errors="coerce")


@dataclass
class MetaEncoding:
    """Each metadata column's kind ("num" or "cat") and, for a categorical one, its train values in code order."""

    columns: list[str]
    kinds: list[str]
    values: dict[str, list[str]]

    @classmethod
    def fit(cls, train: pd.DataFrame) -> "MetaEncoding":
        kinds, values = [], {}
        for col in train.columns:
            text = train[col].astype(str)
            filled = text.str.strip() != ""
            if _number(text)[filled].notna().all():
                kinds.append("num")
            else:
                kinds.append("cat")
                values[col] = sorted(set(text[filled]))
        return cls(list(train.columns), kinds, values)

    def encode(self, table: pd.DataFrame) -> np.ndarray:
        """(n, len(columns)) float64: numbers (NaN: blank or not a number), category codes (NaN: blank or unseen)."""
        out = np.full((len(table), len(self.columns)), np.nan)
        for j, (col, kind) in enumerate(zip(self.columns, self.kinds)):
            text = table[col].astype(str)
            if kind == "num":
                out[:, j] = _number(text).to_numpy(dtype=np.float64)
            else:
                codes = {v: float(i) for i, v in enumerate(self.values[col])}
                out[:, j] = text.map(codes).to_numpy(dtype=np.float64)
        return out

    def export(self) -> dict:
        return {"columns": self.columns, "kinds": self.kinds, "values": self.values}

    @classmethod
    def from_export(cls, data: dict) -> "MetaEncoding":
        return cls(list(data["columns"]), list(data["kinds"]), {k: list(v) for k, v in data["values"].items()})

    def describe(self) -> str:
        return ", ".join(self.columns)


def train_meta(comp: Competition, train_ids: list[str]) -> tuple[MetaEncoding, np.ndarray] | None:
    """(the encoding fitted on train.csv, the training rows' encoded metadata), or None without meta_cols."""
    if not comp.meta_cols:
        return None
    table = read_meta(comp, "train", train_ids)
    enc = MetaEncoding.fit(table)
    return enc, enc.encode(table)


def test_meta(comp: Competition, enc: MetaEncoding, test_ids: list[str]) -> np.ndarray:
    """The test rows' metadata coded by the saved encoding (the kernel reads the test table in its data folder)."""
    return enc.encode(read_meta(comp, "test", test_ids))


def extra_meta(comp: Competition, enc: MetaEncoding, extra_ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """The extra table's rows coded by `enc`: the metadata columns it has; those it lacks are missing (NaN)
    for every extra row. -> (coded rows, the columns it lacks)."""
    path = comp.extra_train_path
    df = read_csv_text(path, " (competition key extra_train)").drop_duplicates(comp.id_col).set_index(comp.id_col)
    lacking = [c for c in enc.columns if c not in df.columns]
    table = df.reindex(extra_ids)[[c for c in enc.columns if c in df.columns]].reset_index(drop=True)
    for c in lacking:
        table[c] = ""
    return enc.encode(table.fillna("")), lacking


def rows_meta(comp: Competition, enc: MetaEncoding, train_ids: list[str], extra_ids: list[str] = (),
              test_ids: list[str] = ()) -> np.ndarray:
    """Coded metadata (n, columns) of rows taken in this order: train.csv's `train_ids`, the extra table's
    `extra_ids`, the test table's `test_ids` (pseudo-labelled rows), as a fold trains on them; a table with no
    rows asked of it is not read."""
    parts = [np.zeros((0, len(enc.columns)))]
    if len(train_ids):
        parts.append(enc.encode(read_meta(comp, "train", list(train_ids))))
    if len(extra_ids):
        coded, lacking = extra_meta(comp, enc, list(extra_ids))
        if lacking:
            print(f"meta: {comp.extra_train_path} has no column(s) {', '.join(lacking)}: missing for its "
                  f"{len(extra_ids)} row(s)", flush=True)
        parts.append(coded)
    if len(test_ids):
        parts.append(enc.encode(read_meta(comp, "test", list(test_ids))))
    return np.concatenate(parts).astype(np.float32)


def coded_meta(comp: Competition, encoding: dict | None, train_ids: list[str], test_ids: list[str]
               ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A meta_head model's metadata for prediction: train.csv's rows (OOF) and the test table's rows, coded by
    the encoding its checkpoint keeps (its own columns, whatever meta_cols says now); (None, None) for a model
    without a metadata head."""
    if encoding is None:
        return None, None
    enc = MetaEncoding.from_export(encoding)
    comp = comp.model_copy(update={"meta_cols": enc.columns})
    return (rows_meta(comp, enc, train_ids) if len(train_ids) else None,
            enc.encode(read_meta(comp, "test", list(test_ids))).astype(np.float32) if len(test_ids) else None)
