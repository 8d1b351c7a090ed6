"""Duplicates among the competition's images, for `folds`: every image's md5 and, with `duplicates: near`, its
64-bit perceptual hash (core/phash.py, from the reduced decode, cached by md5 beside folds.csv); rows that
share a copy form one group; near-duplicate pairs inside train and across train and test are found by
multi-index hashing (not by comparing all pairs) and reported."""

from __future__ import annotations

import hashlib
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Competition
from pipeline.core.data import examples
from pipeline.core.errors import DataError
from pipeline.core.io import write_csv, write_json

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


# --- external data (competition key extra_train) that copies a train image --------------------------------

EXTRA_CSV = "extra_duplicates.csv"  # extra rows whose image copies a train image, beside folds.csv


def extra_pairs(train: ImageScan, extra: ImageScan, near: bool) -> np.ndarray:
    """(m, 3) pairs (train row, extra row, differing bits) of extra images that copy a train image: the same
    bytes (0 bits) or, with `near`, a near-duplicate; each pair once, at its smallest distance."""
    by_md5: dict[str, list[int]] = {}
    for i, m in enumerate(train.md5):
        if m is not None:
            by_md5.setdefault(m, []).append(i)
    pairs = {(i, j): 0 for j, m in enumerate(extra.md5) for i in by_md5.get(m or "", [])}
    if near:
        for i, j, bits in near_duplicates(train, extra).across.tolist():
            pairs[(i, j)] = min(bits, pairs.get((i, j), bits))
    return np.array([(i, j, b) for (i, j), b in sorted(pairs.items())], dtype=np.int64).reshape(-1, 3)


def write_extra_pairs(out_dir: Path, pairs: np.ndarray, ids: list, extra_ids: list) -> Path | None:
    """folds/extra_duplicates.csv (extra_id, train_id, bits): training leaves an extra row out of every fold
    that validates on its train copy. No pairs: no file (an earlier one, the pipeline's own, is removed)."""
    path = out_dir / EXTRA_CSV
    if not len(pairs):
        path.unlink(missing_ok=True)
        return None
    table = pd.DataFrame({"extra_id": [extra_ids[j] for j in pairs[:, 1]], "train_id": [ids[i] for i in pairs[:, 0]],
                          "bits": pairs[:, 2]})
    if not (path.is_file() and path.read_text() == table.to_csv(index=False)):
        write_csv(path, table)
    return path


def read_extra_pairs(folds_path: Path) -> pd.DataFrame | None:
    """The extra rows that copy a train image (extra_id, train_id), as `folds` found them; None: none."""
    path = Path(folds_path).with_name(EXTRA_CSV)
    if not path.is_file():
        return None
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(table.columns[:2]) != ["extra_id", "train_id"]:
        raise DataError(f"{path}: expected columns extra_id, train_id, bits, found {list(table.columns)}; "
                        "rerun `make folds --force`")
    return table
