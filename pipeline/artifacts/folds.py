"""`folds`: assign every training row to exactly one validation fold -> folds/folds.csv.

- binary / multiclass: StratifiedKFold; with groups: StratifiedGroupKFold.
- multilabel: MultilabelStratifiedKFold (iterative stratification); with groups, on group-level labels.
- ordinal: stratified on the values, or on quantile bins when there are many distinct values.
- regression: stratified on quantile bins of the (first) target.
- Exact duplicate images (same bytes) join one group, so copies never sit on both sides of a split.

Nothing is written unless every check passes. folds.csv is rewritten only when its content changes,
so later stages (and Make) do not see a stale input when nothing moved.
"""

from __future__ import annotations

import hashlib
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import NEUTRAL_KEYS, Competition, config_hash
from pipeline.core.data import (class_names, constant_target_warning, encode_targets, examples, lines, numbers,
                                read_csv_text, read_sample, read_train)
from pipeline.core.errors import DataError
from pipeline.artifacts.record import changes, file_md5, record_path, write_record
from pipeline.core.io import write_csv, write_json

ORDINAL_MAX_STRATA = 20


@dataclass
class ImageScan:
    md5: list[str | None]
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def _scan_one(path: Path, decode: bool) -> tuple[str | None, str | None]:
    """(md5, problem) for one image file; problem is 'missing' or 'unreadable'."""
    from pipeline.core.images import BadImage, decode_image

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError:
        return None, "unreadable"
    if decode:
        try:
            decode_image(data, path)
        except BadImage as e:
            return None, str(e)
    return hashlib.md5(data).hexdigest(), None


def scan_images(paths: list[Path], decode: bool = True, desc: str = "scanning images") -> ImageScan:
    """md5 of every file, and which ones are missing or cannot be decoded (threads: decoding frees the GIL)."""
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(tqdm(pool.map(lambda p: _scan_one(p, decode), paths), total=len(paths), desc=desc, leave=False,
                            disable=None))
    scan = ImageScan(md5=[m for m, _ in results])
    for p, (_, problem) in zip(paths, results):
        if problem == "missing":
            scan.missing.append(str(p))
        elif problem is not None:  # "unreadable", or why the image cannot be decoded
            scan.unreadable.append(problem if problem.startswith(str(p)) else str(p))
    return scan


def check_unreadable(comp: Competition, scan: ImageScan) -> None:
    """Train images that cannot be decoded: an error naming them and the competition key `bad_images`, or
    with `bad_images: skip` a warning (their rows still get folds; training and prediction skip them)."""
    if not scan.unreadable:
        return
    n = len(scan.unreadable)
    if comp.bad_images == "skip":
        print(f"warning: {n} train image(s) cannot be decoded; with bad_images: skip their rows still get a fold, "
              f"and training and prediction skip them (a run stops past its max_bad_images): "
              f"{examples(scan.unreadable)}", file=sys.stderr)
        return
    raise DataError(f"{n} train image(s) cannot be decoded: {examples(scan.unreadable)}. Replace or remove them, "
                    "or set the competition key bad_images: skip (in the competition config, or `make folds "
                    "COMP_ARGS=bad_images=skip`) to keep their rows: folds then gives them a fold, and training and "
                    "prediction skip them")


def duplicate_groups(keys: list[list[str | None]]) -> np.ndarray:
    """Connected components over rows that share any key (a group value or an image md5)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(keys[0])
    node_of: dict[tuple[int, str], int] = {}
    rows, cols = [], []
    for k, column in enumerate(keys):
        for i, value in enumerate(column):
            if value is None:
                continue
            node = node_of.setdefault((k, value), n + len(node_of))
            rows.append(i)
            cols.append(node)
    size = n + len(node_of)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(size, size))
    _, labels = connected_components(graph, directed=False)
    # Renumber by first appearance so group ids are stable and dense.
    _, first = np.unique(labels[:n], return_index=True)
    order = {lab: g for g, lab in enumerate(labels[:n][np.sort(first)])}
    return np.array([order[lab] for lab in labels[:n]])


def quantile_bins(values: np.ndarray, n_folds: int) -> np.ndarray:
    """Quantile bins of a number column (at most 10, each with at least n_folds rows where possible)."""
    q = max(1, min(10, len(values) // max(n_folds * 2, 1)))
    return pd.qcut(pd.Series(values).rank(method="first"), q=q, labels=False).to_numpy()


def strata(comp: Competition, train: pd.DataFrame) -> np.ndarray:
    """The labels folds are stratified on: classes, ordinal values (or bins), the multilabel matrix, or
    quantile bins of the (first) regression target."""
    if comp.task == "multilabel":
        return encode_targets(comp, train, class_names(comp, train)).astype(int)
    if comp.task == "regression":
        return quantile_bins(numbers(train[comp.target_cols[:1]])[:, 0], comp.n_folds)
    if comp.task == "ordinal":
        values = pd.to_numeric(train[comp.target])
        if values.nunique() > ORDINAL_MAX_STRATA:
            return pd.qcut(values, q=min(10, comp.n_folds * 2), labels=False, duplicates="drop").to_numpy()
        return values.to_numpy()
    return train[comp.target].astype(str).to_numpy()


def check_rare(comp: Competition, y: np.ndarray, classes: list[str]) -> None:
    if comp.task == "regression":
        return
    if comp.task == "multilabel":
        counts = pd.Series(y.sum(axis=0), index=classes)
        what = "label"
    else:
        counts = pd.Series(y).value_counts()
        what = "class"
    rare = counts[counts < comp.n_folds]
    if comp.task == "multilabel":
        rare = rare[rare > 0]
    if len(rare):
        listing = ", ".join(f"{k!r} ({v} rows)" for k, v in rare.items())
        fewest = int(rare.min())
        fix = (f"Use fewer folds (COMP_ARGS='n_folds={fewest}' is the most that works), or merge or drop the rare "
               f"{what}es in train.csv." if fewest >= 2 else
               f"A {what} with a single row cannot be in a training and a validation part at once, whatever "
               f"n_folds is: merge it into another {what} or drop it from train.csv.")
        raise DataError(
            f"{comp.train_csv_path}: {what}(es) with fewer rows than n_folds={comp.n_folds}: {listing}. "
            f"Stratified folds cannot give each fold one of them. {fix}"
        )


def split(comp: Competition, y: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Fold index per row."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    fold = np.full(len(y), -1, dtype=int)
    k, seed = comp.n_folds, comp.seed
    if groups is not None and len(np.unique(groups)) < k:
        raise DataError(f"only {len(np.unique(groups))} groups for n_folds={k}: use fewer folds")
    if comp.task == "multilabel":
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        if groups is None:
            for f, (_, va) in enumerate(splitter.split(np.zeros(len(y)), y)):
                fold[va] = f
        else:  # split whole groups on their label union, then map back to rows
            gy = pd.DataFrame(y).groupby(groups).max()
            for f, (_, va) in enumerate(splitter.split(np.zeros(len(gy)), gy.to_numpy())):
                fold[np.isin(groups, gy.index.to_numpy()[va])] = f
        return fold
    if groups is None:
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    else:
        splits = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, groups)
    for f, (_, va) in enumerate(splits):
        fold[va] = f
    return fold


def fold_table(comp: Competition, train: pd.DataFrame, fold: np.ndarray) -> pd.DataFrame:
    """Rows and class counts per fold (positives per label for multilabel; min/max for many classes)."""
    if comp.task == "multilabel":
        classes = class_names(comp, train)
        counts = pd.DataFrame(encode_targets(comp, train, classes).astype(int), columns=classes).groupby(fold).sum()
    elif comp.task == "regression":
        values = pd.DataFrame(numbers(train[comp.target_cols]), columns=comp.target_cols)
        counts = values.groupby(fold).agg(["mean", "std"]).round(3)
        counts.columns = [f"{c} {stat}" for c, stat in counts.columns]
    else:
        counts = pd.crosstab(fold, train[comp.target].astype(str))
    if counts.shape[1] > 12:
        counts = pd.DataFrame({"min/class": counts.min(axis=1), "max/class": counts.max(axis=1)})
    counts.insert(0, "rows", np.bincount(fold))
    counts.index.name = "fold"
    counts.columns.name = None
    return counts


def _params(comp: Competition, decode: bool) -> dict:
    return {"competition": config_hash(comp, NEUTRAL_KEYS), "decode": decode}


def make_folds(comp: Competition, out_dir: str | Path = "folds", force: bool = False, decode: bool = True) -> Path:
    """Write out_dir/folds.csv (+ folds.json with hashes and duplicate counts, and the stage record
    folds.record.json); return its path. Up to date (same competition config and train.csv, folds.csv as
    written): nothing is read beyond the record."""
    out_dir = Path(out_dir)
    csv_path, meta_path = out_dir / "folds.csv", out_dir / "folds.json"
    record, params = record_path(out_dir, "folds"), _params(comp, decode)
    if not force and csv_path.is_file() and not changes(record, params, [comp.train_csv_path]):
        print(f"{csv_path} is up to date (same competition config and train.csv); --force rebuilds it")
        return csv_path
    train = read_train(comp)
    classes = class_names(comp, train)  # a binary task with 3 classes, or `classes` missing a label, fails here
    if not force and csv_path.is_file():  # never replace another competition's folds
        check_same_competition(meta_path, comp, train[comp.id_col].tolist(), csv_path)

    ids = train[comp.id_col].tolist()
    scan = scan_images([comp.image_path("train", i) for i in ids], decode=decode, desc="scanning train images")
    if scan.missing:
        raise DataError(
            f"{len(scan.missing)} train image(s) missing (competition key 'train_images' = "
            f"{comp.train_images!r}): {examples(scan.missing)}"
        )
    check_unreadable(comp, scan)
    constant = constant_target_warning(comp, train)
    if constant:
        print(constant, file=sys.stderr)

    y = strata(comp, train)
    check_rare(comp, y, classes)

    # Duplicates: identical bytes inside train, and train images that reappear in test.
    md5 = pd.Series(scan.md5)
    dup_rows = int(md5.duplicated(keep=False).sum())
    dup_sets = int(md5[md5.duplicated(keep=False)].nunique())
    test_ids = read_sample(comp)[comp.id_col].tolist() if comp.sample_submission_path.is_file() else []
    test_scan = scan_images([comp.image_path("test", i) for i in test_ids], decode=False, desc="scanning test images")
    test_md5 = {m for m in test_scan.md5 if m is not None}
    in_test = int(md5.isin(test_md5).sum())

    keys: list[list[str | None]] = [scan.md5]
    if comp.group_col:
        keys.append(train[comp.group_col].astype(str).tolist())
    groups = duplicate_groups(keys)
    grouped = comp.group_col is not None or dup_rows > 0
    fold = split(comp, y, groups if grouped else None)
    assert (fold >= 0).all(), "every row must land in a fold"

    folds = pd.DataFrame({comp.id_col: ids, "fold": fold})
    if grouped:
        folds["group"] = groups
    table = fold_table(comp, train, fold)

    print(f"{len(ids)} training rows -> {comp.n_folds} folds (seed {comp.seed}, "
          f"{'grouped' if grouped else 'ungrouped'} {'multilabel' if comp.task == 'multilabel' else 'stratified'})")
    print(f"exact duplicate images in train: {dup_rows} rows in {dup_sets} sets (kept in one fold each)")
    print(f"train images that also appear in test: {in_test}"
          + (f" ({len(test_scan.missing)} test images missing)" if test_scan.missing else ""))
    print(table.to_string())

    new_csv = folds.to_csv(index=False)
    if not (csv_path.is_file() and csv_path.read_text() == new_csv):
        write_csv(csv_path, folds)
    write_json(meta_path, {
        "folds_md5": file_md5(csv_path),
        "competition": competition_identity(comp, ids),
        "n_folds": comp.n_folds,
        "seed": comp.seed,
        "rows": len(ids),
        "duplicate_rows": dup_rows,
        "duplicate_sets": dup_sets,
        "train_in_test": in_test,
        "test_missing": len(test_scan.missing),
    })
    write_record(record, "folds", params, [comp.train_csv_path], [csv_path, meta_path])
    print(f"wrote {csv_path}")
    return csv_path


def read_folds(path: str | Path = "folds/folds.csv", id_col: str | None = None) -> pd.DataFrame:
    """folds.csv as text (ids exactly as written), with the fold column as integers."""
    df = read_csv_text(path, "; run `make folds` first")
    if "fold" in df.columns:
        bad = ~df["fold"].str.fullmatch(r"\d+")
        if bad.any():
            raise DataError(f"{path}: column 'fold' must hold fold numbers, line(s) {lines(bad)} do not; "
                            "rerun `make folds`")
        df["fold"] = df["fold"].astype(int)
    return df


def fold_numbers(path: str | Path) -> list[int]:
    """The fold numbers folds.csv holds, sorted."""
    return sorted(int(k) for k in read_folds(path)["fold"].unique())


def fold_of(path: str | Path, comp: Competition, train_ids: list[str]) -> np.ndarray:
    """The validation fold of every id in train_ids (in that order), from folds.csv. A folds.csv that does
    not list exactly the ids of train.csv, once each, is refused."""
    path = Path(path)
    check_same_competition(path.with_name("folds.json"), comp, train_ids, path)
    folds = read_folds(path, comp.id_col)
    if comp.id_col not in folds.columns or "fold" not in folds.columns:
        raise DataError(f"{path}: expected columns '{comp.id_col}' and 'fold', found {list(folds.columns)}")
    ids = folds[comp.id_col].astype(str)
    lacking = pd.Index(train_ids).difference(ids)
    extra = pd.Index(ids).difference(pd.Index(train_ids))
    if len(lacking) or len(extra) or ids.duplicated().any():
        raise DataError(
            f"{path}: does not match {comp.train_csv_path} ({len(lacking)} train ids missing, {len(extra)} "
            f"unknown, {int(ids.duplicated().sum())} repeated); rerun `make folds`"
        )
    return folds.set_index(ids)["fold"].loc[train_ids].to_numpy(dtype=int)


def competition_identity(comp: Competition, train_ids) -> dict[str, str]:
    """What makes a competition this one, recorded by every stage output and refused by another: the id
    column, the target, the task and the training ids (not the paths: a moved work folder stays itself)."""
    ids = hashlib.md5("\n".join(sorted(map(str, train_ids))).encode()).hexdigest()
    return {"id_col": comp.id_col, "target": json.dumps(comp.target), "task": comp.task, "train_ids": ids}


def check_same_competition(meta_path: Path, comp: Competition, train_ids, what: Path) -> None:
    """Refuse a stage output (`what`, described by the JSON `meta_path`) made for another competition."""
    made_for = json.loads(meta_path.read_text()).get("competition") if meta_path.is_file() else None
    here = competition_identity(comp, train_ids)
    if made_for is not None and made_for != here:
        differs = ", ".join("other training ids" if k == "train_ids" else f"{k} {made_for.get(k)!r} there, {v!r} here"
                            for k, v in here.items() if made_for.get(k) != v)
        raise DataError(
            f"{what} belongs to another competition ({differs}). Nothing of it is used. Work on each competition "
            "in its own folder (every target runs in the current one: mkdir ../other && cd ../other && "
            "make -f <this repo>/Makefile folds COMPETITION=...), or remove it with `make clean` here")
