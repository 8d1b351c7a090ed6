"""`folds`: assign every training row to exactly one validation fold -> folds/folds.csv.

- binary / multiclass: StratifiedKFold; with groups: StratifiedGroupKFold.
- multilabel: MultilabelStratifiedKFold (iterative stratification); with groups, on group-level labels.
- ordinal: stratified on the values, or on quantile bins when there are many distinct values.
- regression: stratified on quantile bins of the (first) target.
- Duplicates join one group, so copies never sit on both sides of a split (competition key `duplicates`):
  `near` (default) groups exact copies (same bytes, md5) and near-duplicates, resized or re-compressed
  copies whose 64-bit perceptual hash (core/phash.py, from the reduced decode) differs in at most
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
    phash: list[int | None]  # None: not hashed (not asked, flat or tiny, or not decodable)
    hashed: list[bool]  # decoded for its hash (its phash, None for a flat or tiny image, may be cached)
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def _scan_one(path: Path, decode: bool, want_hash: bool, known: dict[str, int | None]
              ) -> tuple[str | None, int | None, bool, str | None]:
    """(md5, perceptual hash, hashed, problem) of one image file; problem: 'missing', 'unreadable' or why it
    cannot be decoded (only when `decode`). Bytes already hashed in `known` decoded before: only their header
    is read."""
    from pipeline.core.images import BadImage, check_pixels, decode_reduced, to_channels
    from pipeline.core.phash import HASH_READ_SIDE, phash

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, None, False, "missing"
    except OSError:
        return None, None, False, "unreadable"
    md5 = hashlib.md5(data).hexdigest()
    if not (decode or want_hash):
        return md5, None, False, None
    try:
        if md5 in known:  # the same bytes decoded before; the pixel limit may have changed since
            check_pixels(data, path)
            return md5, known[md5], True, None
        gray = to_channels(decode_reduced(data, path, gray=True, short_side=HASH_READ_SIDE), 1)
    except BadImage as e:
        return (None, None, False, str(e)) if decode else (md5, None, False, None)
    return (md5, phash(gray), True, None) if want_hash else (md5, None, False, None)


def scan_images(paths: list[Path], decode: bool = True, desc: str = "scanning images", want_hash: bool = False,
                known: dict[str, int | None] | None = None) -> ImageScan:
    """md5 of every file, its perceptual hash when `want_hash`, and which files are missing or cannot be
    decoded (decoded reduced, as training reads them; threads: decoding frees the GIL). `known`: md5 ->
    hash of bytes decoded before (the hash cache), not decoded again."""
    from tqdm import tqdm

    known = known or {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(tqdm(pool.map(lambda p: _scan_one(p, decode, want_hash, known), paths), total=len(paths),
                            desc=desc, leave=False, disable=None))
    scan = ImageScan(md5=[r[0] for r in results], phash=[r[1] for r in results], hashed=[r[2] for r in results])
    for p, (*_, problem) in zip(paths, results):
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


def split(comp: Competition, y: np.ndarray, groups: np.ndarray | None, grouped_by: str = "") -> np.ndarray:
    """Fold index per row; grouped_by says what made the groups (for the error when there are too few)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    fold = np.full(len(y), -1, dtype=int)
    k, seed = comp.n_folds, comp.seed
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
    return {"competition": config_hash(comp, NEUTRAL_KEYS), "decode": decode,
            "duplicates": near if comp.duplicates == "near" and decode else comp.duplicates}


# --- duplicates: identical files (md5) and near-duplicates (perceptual hash) ------------------------------

HASH_CACHE = "image_hashes.json"  # md5 -> perceptual hash of every image hashed, beside folds.csv
NEAR_CSV = "near_duplicates.csv"  # every near-duplicate pair found, train-train and train-test


def read_hash_cache(path: Path) -> dict[str, int | None]:
    """md5 -> hash (None: decoded, but flat or too small to hash) of images hashed before by this hash."""
    from pipeline.core.phash import HASH_VERSION

    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("hash") != HASH_VERSION or not isinstance(data.get("images"), dict):
        return {}
    return {m: None if h is None else int(h, 16) for m, h in data["images"].items()}


def write_hash_cache(path: Path, before: dict[str, int | None], *scans: ImageScan) -> None:
    """The hashes of these scans' images (and no others) to `path`, when they differ from `before`."""
    from pipeline.core.phash import HASH_VERSION

    now = {m: h for scan in scans for m, h, ok in zip(scan.md5, scan.phash, scan.hashed) if ok}
    if now != before:
        write_json(path, {"hash": HASH_VERSION,
                          "images": {m: None if h is None else f"{h:016x}" for m, h in sorted(now.items())}})


@dataclass
class NearDuplicates:
    groups: np.ndarray  # per train row: its near-duplicate group (-1: none)
    inside: np.ndarray  # (m, 3) train pairs (row, row, differing bits)
    across: np.ndarray  # (m, 3) train-test pairs (train row, test row, differing bits)
    unhashed: int  # train and test images decoded but too small or blank to hash


def near_duplicates(train: ImageScan, test: ImageScan) -> NearDuplicates:
    """Near-duplicate groups inside train, and train-test pairs, from the perceptual hashes."""
    from pipeline.core.phash import hamming, near_groups, near_pairs

    hashes = train.phash + test.phash
    rows = np.array([i for i, h in enumerate(hashes) if h is not None], dtype=np.int64)
    known = np.array([hashes[i] for i in rows], dtype=np.uint64)
    pairs = near_pairs(known)
    bits = hamming(known[pairs[:, 0]], known[pairs[:, 1]]).astype(np.int64)
    pairs = np.column_stack([rows[pairs[:, 0]], rows[pairs[:, 1]], bits]) if len(pairs) else \
        np.zeros((0, 3), dtype=np.int64)
    n = len(train.phash)
    inside = pairs[pairs[:, 1] < n]
    across = pairs[(pairs[:, 0] < n) & (pairs[:, 1] >= n)] - np.array([0, n, 0])
    unhashed = sum(ok and h is None for scan in (train, test) for h, ok in zip(scan.phash, scan.hashed))
    return NearDuplicates(near_groups(n, inside[:, :2]), inside, across, unhashed)


def near_report(comp: Competition, near: NearDuplicates | None, decode: bool, ids: list, test_ids: list,
                out_dir: Path) -> dict:
    """What folds says of near-duplicates (the printed lines, and folds.json's numbers); with `near`, every
    pair to out_dir/near_duplicates.csv (kind, id_a, id_b, bits: differing bits of 64)."""
    from pipeline.core.phash import MIN_SIDE, NEAR_DISTANCE

    if near is None:
        (out_dir / NEAR_CSV).unlink(missing_ok=True)  # no stale pairs from an earlier search
        why = "--no-decode" if comp.duplicates == "near" and not decode else f"duplicates: {comp.duplicates}"
        return {"line": f"near-duplicate images: not searched ({why})"}
    sizes = np.bincount(near.groups[near.groups >= 0])
    table = pd.DataFrame(
        [("train-train", ids[a], ids[b], d) for a, b, d in near.inside.tolist()]
        + [("train-test", ids[a], test_ids[b], d) for a, b, d in near.across.tolist()],
        columns=["kind", "id_a", "id_b", "bits"])
    write_csv(out_dir / NEAR_CSV, table)
    info = {"near_duplicate_rows": int(sizes.sum()), "near_duplicate_groups": len(sizes),
            "near_duplicate_largest": int(sizes.max()) if len(sizes) else 0,
            "train_near_test": len(np.unique(near.across[:, 0])), "test_near_train": len(np.unique(near.across[:, 1])),
            "near_distance": NEAR_DISTANCE, "near_unhashed": near.unhashed}
    example = (f", e.g. train {ids[near.across[0, 0]]} ~ test {test_ids[near.across[0, 1]]}"
               if len(near.across) else "")
    info["line"] = (
        f"near-duplicate images in train (perceptual hash, at most {NEAR_DISTANCE} of 64 bits apart): "
        f"{info['near_duplicate_rows']} rows in {info['near_duplicate_groups']} groups, largest "
        f"{info['near_duplicate_largest']} (kept in one fold each)"
        + (f"; {near.unhashed} train and test images not hashed: smaller than {MIN_SIDE} px or blank "
           "(exact copies of them are still grouped)" if near.unhashed else "") + "\n"
        f"train images with a near-duplicate in test: {info['train_near_test']} (matching "
        f"{info['test_near_train']} test images{example}; every pair in {out_dir / NEAR_CSV})")
    if info["near_duplicate_largest"] > len(ids) / (2 * comp.n_folds):  # chained look-alikes, not copies
        info["line"] += (
            f"\nwarning: the largest near-duplicate group holds {info['near_duplicate_largest']} of {len(ids)} rows, "
            f"over half a fold: look-alike images chained together, rather than copies? One fold takes the whole "
            f"group, so folds are unbalanced; look at {out_dir / NEAR_CSV}, and set duplicates: exact if these are "
            "not copies")
    return info


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
    near = comp.duplicates == "near" and decode
    cache = out_dir / HASH_CACHE
    known = read_hash_cache(cache) if near else {}
    scan = scan_images([comp.image_path("train", i) for i in ids], decode=decode, want_hash=near, known=known,
                       desc="scanning train images")
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
    if near:
        write_hash_cache(cache, known, scan, test_scan)

    keys: list[list[str | None]] = [scan.md5] if comp.duplicates != "none" else []
    if near_dups is not None:
        keys.append([f"near{g}" if g >= 0 else None for g in near_dups.groups])
    if comp.group_col:
        keys.append(train[comp.group_col].astype(str).tolist())
    near_rows = int((near_dups.groups >= 0).sum()) if near_dups is not None else 0
    groups = duplicate_groups(keys) if keys else np.arange(len(ids))
    grouped = comp.group_col is not None or (comp.duplicates != "none" and dup_rows > 0) or near_rows > 0
    grouped_by = ", ".join(what for what, on in (
        (f"group_col {comp.group_col!r}", comp.group_col is not None),
        ("exact duplicates", comp.duplicates != "none" and dup_rows > 0),
        (f"near-duplicates (perceptual hash, {near_rows} rows)", near_rows > 0)) if on)
    fold = split(comp, y, groups if grouped else None, grouped_by)
    assert (fold >= 0).all(), "every row must land in a fold"

    folds = pd.DataFrame({comp.id_col: ids, "fold": fold})
    if grouped:
        folds["group"] = groups
    table = fold_table(comp, train, fold)

    print(f"{len(ids)} training rows -> {comp.n_folds} folds (seed {comp.seed}, "
          f"{'grouped' if grouped else 'ungrouped'} {'multilabel' if comp.task == 'multilabel' else 'stratified'})")
    kept = "kept in one fold each" if comp.duplicates != "none" else "not grouped: duplicates: none"
    print(f"exact duplicate images in train: {dup_rows} rows in {dup_sets} sets ({kept})")
    near_info = near_report(comp, near_dups, decode, ids, test_ids, out_dir)
    print(f"train images that also appear in test: {in_test}"
          + (f" ({len(test_scan.missing)} test images missing)" if test_scan.missing else ""))
    print(near_info["line"])
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
        "duplicates": comp.duplicates,
        **{k: v for k, v in near_info.items() if k != "line"},
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
