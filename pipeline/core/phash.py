"""Perceptual hashes, and near-duplicate images found without comparing every pair.

The hash (`phash`) is the classic 64-bit DCT pHash: the grayscale image shrunk to 32x32 (cv2.INTER_AREA),
its 2-D DCT, the 8x8 lowest frequencies, one bit per coefficient: above their median or not. A resized,
re-compressed or slightly brightened copy keeps nearly all 64 bits; two different pictures differ in
about half of them. Images are hashed from the reduced decode (`images.read_image`'s short side
`HASH_READ_SIDE`: a large JPEG is decoded at 1/2, 1/4 or 1/8 by libjpeg), so hashing costs a fraction of a
full decode. An image with no detail at 32x32 (a blank or constant one: `FLAT_STD`) and one smaller
than the 32x32 grid the hash is computed on (`MIN_SIDE`: upscaled, it holds too little for 64 bits to
tell drawings apart; the 8x8 digits of the demo would make 32 groups of distinct digits at 4 bits) get no
hash: exact copies of them are still found by their md5.

Both bits of a differing pair flip together (every hash has 32 bits set, those above the median), so
distances are even: NEAR_DISTANCE 4 is "at most two coefficients crossed the median". Resized and
re-compressed JPEG copies measured 2 bits apart at the median and 4 at the 95th percentile (a 64 px
copy at quality 30: 6), distinct images at least 12.

`near_pairs` finds every pair within `NEAR_DISTANCE` differing bits by multi-index hashing: the 64 bits
are cut into distance + 1 bands, and two hashes within that distance agree exactly on at least one band
(pigeonhole), so only hashes that share a band's value are compared. `near_groups` joins the pairs into
connected components (union-find), numbered from 0; images in no pair get -1.
"""

from __future__ import annotations

import cv2
import numpy as np

HASH_VERSION = "dct-phash64-v1"  # recorded with the folds; a change of the hash recomputes them
HASH_SIDE = 32  # the image is shrunk to HASH_SIDE x HASH_SIDE before the DCT
HASH_READ_SIDE = 64  # the short side images are decoded at for hashing (reduced JPEG decode)
MIN_SIDE = HASH_SIDE  # smaller images get no hash
FLAT_STD = 1.0  # 32x32 grayscale with a smaller standard deviation: flat, no hash
NEAR_DISTANCE = 4  # at most this many of the 64 bits differ between near-duplicates
_CHUNK = 1024  # rows compared at once inside one bucket


def phash(gray: np.ndarray) -> int | None:
    """The 64-bit DCT pHash of a HxW uint8 image, as an int; None when the image is too small or flat."""
    if min(gray.shape[:2]) < MIN_SIDE:
        return None
    small = cv2.resize(gray, (HASH_SIDE, HASH_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    if float(small.std()) < FLAT_STD:
        return None
    low = cv2.dct(small)[:8, :8].ravel()
    bits = low > np.median(low)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The number of differing bits of uint64 hashes (elementwise, broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(a, b))


def bands(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of max_distance + 1 bands covering the 64 bits, widths differing by at most 1."""
    n = max_distance + 1
    widths = [64 // n + (1 if i < 64 % n else 0) for i in range(n)]
    shifts = np.concatenate([[0], np.cumsum(widths)[:-1]])
    return [(int(s), w) for s, w in zip(shifts, widths)]


def _close_within(hashes: np.ndarray, idx: np.ndarray, max_distance: int) -> np.ndarray:
    """Pairs (i < j in `idx` order) of the bucket `idx` whose hashes are within max_distance."""
    found = []
    h = hashes[idx]
    for start in range(0, len(idx) - 1, _CHUNK):
        stop = min(start + _CHUNK, len(idx))
        d = hamming(h[start:stop, None], h[None, :])
        rows, cols = np.nonzero(d <= max_distance)
        keep = cols > rows + start  # each pair once, never an image with itself
        found.append(np.stack([idx[rows[keep] + start], idx[cols[keep]]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)


def near_pairs(hashes: np.ndarray, max_distance: int = NEAR_DISTANCE) -> np.ndarray:
    """Every pair (i, j), i < j, of uint64 hashes with at most max_distance differing bits, as an (m, 2)
    array sorted by rows; only hashes that agree exactly on one of max_distance + 1 bands are compared."""
    if not 0 <= max_distance < 64:
        raise ValueError(f"max_distance must be in 0..63, not {max_distance}")
    hashes = np.asarray(hashes, dtype=np.uint64)
    found = [np.zeros((0, 2), dtype=np.int64)]
    for shift, width in bands(max_distance):
        keys = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(keys, kind="stable")
        cuts = np.flatnonzero(np.diff(keys[order])) + 1
        for bucket in np.split(order, cuts):
            if len(bucket) > 1:
                found.append(_close_within(hashes, bucket, max_distance))
    pairs = np.sort(np.concatenate(found), axis=1)
    return np.unique(pairs, axis=0)


def near_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of n items joined by `pairs`: a group number per item (from 0, in order of first
    member), -1 for an item in no pair."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(pairs) == 0:
        return np.full(n, -1, dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    paired = np.zeros(n, dtype=bool)
    paired[pairs.ravel()] = True
    out = np.full(n, -1, dtype=np.int64)
    _, first = np.unique(labels[paired], return_index=True)
    rank = np.zeros(labels.max() + 1, dtype=np.int64)
    rank[labels[paired][np.sort(first)]] = np.arange(len(first))
    out[paired] = rank[labels[paired]]
    return out
