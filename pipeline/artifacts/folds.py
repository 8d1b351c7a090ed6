"""`folds`: assign every training row to exactly one validation fold -> folds/folds.csv.

- binary / multiclass: StratifiedKFold; with groups: StratifiedGroupKFold.
- multilabel: MultilabelStratifiedKFold (iterative stratification); with groups, on group-level labels.
- ordinal: stratified on the values, or on quantile bins when there are many distinct values.
- regression: stratified on quantile bins of the (first) target.
- Duplicates join one group, so copies never sit on both sides of a split (competition key `duplicates`):
  `near` (default) groups exact copies (same bytes, md5) and near-duplicates, resized or re-compressed
  copies whose 64-bit perceptual hash (pipeline.artifacts.duplicates, core/phash.py) differs in at most
  NEAR_DISTANCE bits, found by multi-index hashing, not by comparing all pairs; `exact` groups exact
  copies only; `none` neither. Train images with an exact or near copy in test are counted (the leakage
  audit), every near pair is listed in folds/near_duplicates.csv, and the hashes are cached by md5 in
  folds/image_hashes.json, so a rerun decodes only new images.

Nothing is written unless every check passes. folds.csv is rewritten only when its content changes,
so later stages (and Make) do not see a stale input when nothing moved.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import NEUTRAL_KEYS, Competition, config_hash
from pipeline.core.data import (class_names, constant_target_warning, encode_targets, examples, lines, numbers,
                                read_csv_text, read_extra, read_sample, read_train)
from pipeline.core.errors import DataError
from pipeline.artifacts.duplicates import (HASH_CACHE, ImageScan, NearDuplicates, check_unreadable, duplicate_groups, extra_pairs, near_duplicates,
                                           near_report, read_hash_cache, scan_images, write_extra_pairs,
                                           write_hash_cache)
from pipeline.artifacts.record import changes, file_md5, record_path, write_record
from pipeline.core.io import write_csv, write_json

ORDINAL_MAX_STRATA = 20


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


def split(comp: Competition, y: np.ndarray, groups: np.ndarray | None, grouped_by: str = "",
          seed: int | None = None) -> np.ndarray:
    """Fold index per row; grouped_by says what made the groups (for the error when there are too few);
    seed: the split's seed (default the competition's; a repeat r uses seed + r)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    fold = np.full(len(y), -1, dtype=int)
    k, seed = comp.n_folds, comp.seed if seed is None else seed
    if groups is not None and len(np.unique(groups)) < k:
        raise DataError(f"only {len(np.unique(groups))} groups for n_folds={k}"
                        + (f" (rows grouped by {grouped_by})" if grouped_by else "") + ": use fewer folds"
                        + ("; or, if the near-duplicates are look-alike images rather than copies, set the competition "
                           "key duplicates: exact" if "near-duplicates" in grouped_by else ""))
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
    from pipeline.core.phash import HASH_VERSION, NEAR_DISTANCE

    near = f"near ({HASH_VERSION}, at most {NEAR_DISTANCE} bits apart)"
    params = {"competition": config_hash(comp, NEUTRAL_KEYS), "decode": decode,
              "duplicates": near if comp.duplicates == "near" and decode else comp.duplicates}
    if comp.extra_train and comp.duplicates != "none":  # the extra images are compared with train's
        params["extra_images"] = comp.extra_images
    return params


def _inputs(comp: Competition) -> list[Path]:
    """train.csv, and the extra table whose images `folds` compares with train's (key extra_train)."""
    return [comp.train_csv_path, *([comp.extra_train_path] if comp.extra_train and comp.duplicates != "none" else [])]


# --- repeated CV: more splits of the same rows ------------------------------------------------------------

REPEATS_CSV = "repeats.csv"  # beside folds.csv when repeats > 1: each row's fold in repeats 1..R-1


@dataclass(frozen=True)
class FoldLayout:
    """How training folds map onto splits: repeat r's fold k is training fold r x n_folds + k (runs/<model>/
    fold<r x n_folds + k>). repeats 1 is the plain layout: training fold k is folds.csv's fold k."""

    n_folds: int
    repeats: int = 1
    numbers: tuple[int, ...] = ()  # folds.csv's fold numbers, sorted

    @property
    def folds(self) -> list[int]:
        """The training folds, sorted: folds.csv's fold numbers, or with R repeats 0 .. R x n_folds - 1."""
        return list(range(self.n_folds * self.repeats)) if self.repeats > 1 else list(self.numbers)

    def split_of(self, fold: int) -> tuple[int, int]:
        """(repeat, fold within the repeat) of a training fold."""
        return divmod(fold, self.n_folds)

    def name(self, fold: int) -> str:
        """fold<k>, with its repeat and split fold when repeats > 1 (fold4 (repeat 1, fold 1))."""
        if self.repeats == 1:
            return f"fold{fold}"
        r, k = self.split_of(fold)
        return f"fold{fold} (repeat {r}, fold {k})"


def repeat_columns(repeats: int) -> list[str]:
    return [f"repeat{r}" for r in range(1, repeats)]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two fold assignments split the rows the same way (fold numbers aside)."""
    return bool((pd.factorize(a)[0] == pd.factorize(b)[0]).all())


def repeat_splits(comp: Competition, y: np.ndarray, groups: np.ndarray | None, grouped_by: str,
                  first: np.ndarray) -> list[np.ndarray]:
    """The folds of repeats 1..R-1 (seeds seed+1..), grouped and stratified as the first; a repeat that splits
    the rows as an earlier one does (too few groups to shuffle) is named in a warning."""
    splits = [first]
    for r in range(1, comp.repeats):
        fold = split(comp, y, groups, grouped_by, seed=comp.seed + r)
        same = [q for q, earlier in enumerate(splits) if same_partition(fold, earlier)]
        if same:
            print(f"warning: repeat {r} (seed {comp.seed + r}) splits the rows exactly as repeat {same[0]} does "
                  "(too few groups to split them another way): it adds trainings, not a new split", file=sys.stderr)
        splits.append(fold)
    return splits[1:]


def write_repeats(out_dir: Path, ids: list, id_col: str, splits: list[np.ndarray], before: int) -> Path | None:
    """folds/repeats.csv for repeats > 1 (rewritten only when it changes); with one repeat, the file an earlier
    `folds` wrote (`before` > 1 repeats in its folds.json) is removed."""
    path = out_dir / REPEATS_CSV
    if not splits:
        if before > 1 and path.is_file():
            path.unlink()
            print(f"removed {path} (repeats: 1)")
        return None
    table = pd.DataFrame({id_col: ids, **dict(zip(repeat_columns(len(splits) + 1), splits))})
    if not (path.is_file() and path.read_text() == table.to_csv(index=False)):
        write_csv(path, table)
    return path


def _scan_train(comp: Competition, ids: list, decode: bool, near: bool, known: dict) -> ImageScan:
    """Every train image's md5 (+ hash with `near`), decoded when `decode`; missing ones are an error, and
    undecodable ones too unless bad_images: skip."""
    scan = scan_images([comp.image_path("train", i) for i in ids], decode=decode, want_hash=near, known=known,
                       desc="scanning train images")
    if scan.missing:
        raise DataError(f"{len(scan.missing)} train image(s) missing (competition key 'train_images' = "
                        f"{comp.train_images!r}): {examples(scan.missing)}")
    check_unreadable(comp, scan)
    return scan


def row_groups(comp: Competition, train: pd.DataFrame, scan: ImageScan, near_dups: NearDuplicates | None,
               dup_rows: int) -> tuple[np.ndarray | None, str]:
    """(the group of every row, None when nothing groups the rows; what made the groups, for messages):
    exact copies (md5), near-duplicates and group_col, joined into connected groups."""
    keys: list[list[str | None]] = [scan.md5] if comp.duplicates != "none" else []
    if near_dups is not None:
        keys.append([f"near{g}" if g >= 0 else None for g in near_dups.groups])
    if comp.group_col:
        keys.append(train[comp.group_col].astype(str).tolist())
    near_rows = int((near_dups.groups >= 0).sum()) if near_dups is not None else 0
    grouped = comp.group_col is not None or (comp.duplicates != "none" and dup_rows > 0) or near_rows > 0
    grouped_by = ", ".join(what for what, on in (
        (f"group_col {comp.group_col!r}", comp.group_col is not None),
        ("exact duplicates", comp.duplicates != "none" and dup_rows > 0),
        (f"near-duplicates (perceptual hash, {near_rows} rows)", near_rows > 0)) if on)
    return (duplicate_groups(keys) if grouped else None), grouped_by


def _scan_extra(comp: Competition, classes: list[str], ids: list, near: bool, known: dict
                ) -> tuple[list[str], ImageScan | None]:
    """The extra rows' ids and their images' md5 (and hashes with `near`), to find extra images that copy a
    train image; none without extra_train or with duplicates: none."""
    if not comp.extra_train or comp.duplicates == "none":
        return [], None
    extra_ids = read_extra(comp, classes, ids)[0]  # the table checked as training reads it
    return extra_ids, scan_images([comp.image_path("extra", i) for i in extra_ids], decode=False, want_hash=near,
                                  known=known, desc="scanning extra images")


def _report_extra(out_dir: Path, scan: ImageScan, extra: ImageScan | None, ids: list, extra_ids: list,
                  near: bool) -> tuple[int | None, Path | None]:
    """(extra images that copy a train image, or None when not searched; folds/extra_duplicates.csv if any)."""
    pairs = extra_pairs(scan, extra, near) if extra is not None else np.zeros((0, 3), dtype=np.int64)
    path = write_extra_pairs(out_dir, pairs, ids, extra_ids)
    if extra is None:
        return None, path
    copies = len(np.unique(pairs[:, 1]))
    print(f"extra images that copy a train image: {copies} of {len(extra_ids)}"
          + (f" (each left out of the training part of the folds that validate on its copy; every pair in {path})"
             if path else ""))
    return copies, path


def make_folds(comp: Competition, out_dir: str | Path = "folds", force: bool = False, decode: bool = True) -> Path:
    """Write out_dir/folds.csv (+ folds.json with hashes and duplicate counts, and the stage record
    folds.record.json); return its path. Up to date (same competition config and train.csv, folds.csv as
    written): nothing is read beyond the record."""
    out_dir = Path(out_dir)
    csv_path, meta_path = out_dir / "folds.csv", out_dir / "folds.json"
    record, params, inputs = record_path(out_dir, "folds"), _params(comp, decode), _inputs(comp)
    if not force and csv_path.is_file() and not changes(record, params, inputs):
        print(f"{csv_path} is up to date (same competition config and train.csv); --force rebuilds it")
        return csv_path
    train = read_train(comp)
    classes = class_names(comp, train)  # a binary task with 3 classes, or `classes` missing a label, fails here
    if not force and csv_path.is_file():  # never replace another competition's folds
        check_same_competition(meta_path, comp, train[comp.id_col].tolist(), csv_path)

    ids = train[comp.id_col].tolist()
    near = comp.duplicates == "near" and decode
    cache = out_dir / HASH_CACHE
    known = read_hash_cache(cache) if near else {}
    scan = _scan_train(comp, ids, decode, near, known)
    constant = constant_target_warning(comp, train)
    if constant:
        print(constant, file=sys.stderr)

    y = strata(comp, train)
    check_rare(comp, y, classes)

    # Duplicates: identical bytes inside train, and train images that reappear in test; with `near`, also
    # resized or re-compressed copies (perceptual hash).
    md5 = pd.Series(scan.md5)
    dup_rows = int(md5.duplicated(keep=False).sum())
    dup_sets = int(md5[md5.duplicated(keep=False)].nunique())
    test_ids = read_sample(comp)[comp.id_col].tolist() if comp.sample_submission_path.is_file() else []
    test_scan = scan_images([comp.image_path("test", i) for i in test_ids], decode=False, want_hash=near,
                            known=known, desc="scanning test images")
    test_md5 = {m for m in test_scan.md5 if m is not None}
    in_test = int(md5.isin(test_md5).sum())
    near_dups = near_duplicates(scan, test_scan) if near else None
    extra_ids, extra_scan = _scan_extra(comp, classes, ids, near, known)
    if near:
        write_hash_cache(cache, known, scan, test_scan, *([extra_scan] if extra_scan else []))

    groups, grouped_by = row_groups(comp, train, scan, near_dups, dup_rows)
    fold = split(comp, y, groups, grouped_by)
    assert (fold >= 0).all(), "every row must land in a fold"
    repeats = repeat_splits(comp, y, groups, grouped_by, fold)

    folds = pd.DataFrame({comp.id_col: ids, "fold": fold})
    if groups is not None:
        folds["group"] = groups
    grouped = groups is not None
    table = fold_table(comp, train, fold)

    print(f"{len(ids)} training rows -> {comp.n_folds} folds (seed {comp.seed}, "
          f"{'grouped' if grouped else 'ungrouped'} {'multilabel' if comp.task == 'multilabel' else 'stratified'})"
          + (f" x {comp.repeats} repeats (seeds {comp.seed}..{comp.seed + comp.repeats - 1}; every model trains "
             f"{comp.n_folds * comp.repeats} folds)" if comp.repeats > 1 else ""))
    kept = "kept in one fold each" if comp.duplicates != "none" else "not grouped: duplicates: none"
    print(f"exact duplicate images in train: {dup_rows} rows in {dup_sets} sets ({kept})")
    near_info = near_report(comp, near_dups, decode, ids, test_ids, out_dir)
    print(f"train images that also appear in test: {in_test}"
          + (f" ({len(test_scan.missing)} test images missing)" if test_scan.missing else ""))
    print(near_info["line"])
    extra_copies, extra_csv = _report_extra(out_dir, scan, extra_scan, ids, extra_ids, near)
    print(table.to_string())

    new_csv = folds.to_csv(index=False)
    if not (csv_path.is_file() and csv_path.read_text() == new_csv):
        write_csv(csv_path, folds)
    before = json.loads(meta_path.read_text()).get("repeats", 1) if meta_path.is_file() else 1
    repeats_path = write_repeats(out_dir, ids, comp.id_col, repeats, before)
    write_json(meta_path, {
        "folds_md5": file_md5(csv_path),
        "competition": competition_identity(comp, ids),
        "n_folds": comp.n_folds,
        "seed": comp.seed,
        **({"repeats": comp.repeats} if comp.repeats > 1 else {}),
        "rows": len(ids),
        "duplicate_rows": dup_rows,
        "duplicate_sets": dup_sets,
        "train_in_test": in_test,
        "test_missing": len(test_scan.missing),
        **({"extra_copies": extra_copies} if extra_copies is not None else {}),
        "duplicates": comp.duplicates,
        **{k: v for k, v in near_info.items() if k != "line"},
    })
    write_record(record, "folds", params, inputs,
                 [p for p in (csv_path, meta_path, repeats_path, extra_csv) if p])
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


def fold_layout(path: str | Path) -> FoldLayout:
    """The folds of folds.csv and the repeats its folds.json records (`folds` with `repeats: R`)."""
    path = Path(path)
    meta = path.with_name("folds.json")
    repeats = int(json.loads(meta.read_text()).get("repeats", 1)) if meta.is_file() else 1
    numbers = tuple(sorted(int(k) for k in read_folds(path)["fold"].unique()))
    return FoldLayout(len(numbers), repeats, numbers)


def fold_numbers(path: str | Path) -> list[int]:
    """The training folds, sorted (FoldLayout.folds)."""
    return fold_layout(path).folds


def _repeat_table(path: Path, repeat: int, id_col: str) -> pd.DataFrame:
    """repeats.csv beside folds.csv, with the column of `repeat` as fold numbers (that column as 'fold')."""
    where = path.with_name(REPEATS_CSV)
    column = f"repeat{repeat}"
    table = read_csv_text(where, "; folds.json records repeats, so rerun `make folds` to write it")
    if column not in table.columns:
        raise DataError(f"{where}: no column {column!r} (found {list(table.columns)}); rerun `make folds`")
    bad = ~table[column].str.fullmatch(r"\d+")
    if bad.any():
        raise DataError(f"{where}: column {column!r} must hold fold numbers, line(s) {lines(bad)} do not; "
                        "rerun `make folds`")
    return table.assign(fold=table[column].astype(int))


def fold_of(path: str | Path, comp: Competition, train_ids: list[str], repeat: int = 0) -> np.ndarray:
    """The validation fold of every id in train_ids (in that order), from folds.csv (repeat 0) or repeats.csv
    (a later repeat). A table that does not list exactly the ids of train.csv, once each, is refused."""
    path = Path(path)
    check_same_competition(path.with_name("folds.json"), comp, train_ids, path)
    folds = read_folds(path, comp.id_col) if repeat == 0 else _repeat_table(path, repeat, comp.id_col)
    if repeat:
        path = path.with_name(REPEATS_CSV)
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
