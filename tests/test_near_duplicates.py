"""Near-duplicates: resized and re-compressed copies share a fold (`duplicates: near`, the default), are
reported when they cross into test (folds and eda), and are found without comparing every pair."""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO, run_cli, write_yaml

MAKE = ["make", "--no-print-directory", "-f", str(REPO / "Makefile")]
N_BASE, TRAIN_COPIES, TEST_COPIES = 45, 9, 3


def smooth_image(rng, size: int = 128) -> np.ndarray:
    """A random photo-like colour image: low-frequency noise, upscaled smoothly."""
    small = rng.integers(0, 256, (6, 6, 3)).astype(np.float32)
    return np.clip(cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def recompressed(img: np.ndarray, side: int, quality: int) -> bytes:
    """A resized copy of img as a JPEG of another quality: other bytes, the same picture."""
    small = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def copies_competition(root):
    """N_BASE distinct JPEGs in train, TRAIN_COPIES of them copied again into train resized and re-encoded
    (same label), TEST_COPIES more copied into test beside distinct test images; -> the train copy pairs
    and the (train, test) copy pairs, as ids."""
    rng = np.random.default_rng(0)
    data = root / "data" / "copies"
    (data / "train").mkdir(parents=True)
    (data / "test").mkdir()
    images = [smooth_image(rng) for _ in range(N_BASE + 6)]
    rows, pairs, leaks = [], [], []
    for i in range(N_BASE):
        (data / "train" / f"t{i:03d}.jpg").write_bytes(recompressed(images[i], 128, 95))
        rows.append((f"t{i:03d}", f"c{i % 3}"))
    for k in range(TRAIN_COPIES):
        (data / "train" / f"copy{k}.jpg").write_bytes(recompressed(images[k], 96 if k % 2 else 200, 60))
        rows.append((f"copy{k}", f"c{k % 3}"))
        pairs.append((f"t{k:03d}", f"copy{k}"))
    test_ids = []
    for k in range(TEST_COPIES):
        (data / "test" / f"leak{k}.jpg").write_bytes(recompressed(images[20 + k], 80, 50))
        leaks.append((f"t{20 + k:03d}", f"leak{k}"))
        test_ids.append(f"leak{k}")
    for j in range(6):
        (data / "test" / f"new{j}.jpg").write_bytes(recompressed(images[N_BASE + j], 128, 90))
        test_ids.append(f"new{j}")
    pd.DataFrame(rows, columns=["image_id", "label"]).to_csv(data / "train.csv", index=False)
    pd.DataFrame({"image_id": test_ids, "label": "c0"}).to_csv(data / "sample_submission.csv", index=False)
    write_yaml(root / "competition.yaml", {
        "data_dir": "data/copies", "target": "label", "task": "multiclass", "n_folds": 3, "seed": 0,
        "train_images": "train/{id}.jpg", "test_images": "test/{id}.jpg"})
    return pairs, leaks


def make_folds(root, *args):
    proc = subprocess.run([*MAKE, "folds", "COMPETITION=competition.yaml", *args], cwd=root, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, pd.read_csv(root / "folds" / "folds.csv", dtype=str).set_index("image_id")["fold"]


@pytest.mark.slow
def test_resized_recompressed_copies_share_a_fold_with_near_but_not_with_exact(tmp_path):
    pairs, leaks = copies_competition(tmp_path)
    proc, fold = make_folds(tmp_path)  # duplicates: near, the default
    first = fold
    assert all(fold[a] == fold[b] for a, b in pairs)
    assert (f"near-duplicate images in train (perceptual hash, at most 4 of 64 bits apart): {2 * TRAIN_COPIES} "
            f"rows in {TRAIN_COPIES} groups, largest 2 (kept in one fold each)") in proc.stdout
    assert f"train images with a near-duplicate in test: {TEST_COPIES} (matching {TEST_COPIES} test images" \
        in proc.stdout
    assert "exact duplicate images in train: 0 rows" in proc.stdout  # no two files are identical
    meta = json.loads((tmp_path / "folds" / "folds.json").read_text())
    assert meta["near_duplicate_groups"] == TRAIN_COPIES and meta["train_near_test"] == TEST_COPIES
    listed = pd.read_csv(tmp_path / "folds" / "near_duplicates.csv", dtype=str)
    assert set(map(tuple, listed[listed.kind == "train-test"][["id_a", "id_b"]].to_numpy())) == set(leaks)
    assert set(map(tuple, listed[listed.kind == "train-train"][["id_a", "id_b"]].to_numpy())) == set(pairs)
    record = json.loads((tmp_path / "folds" / "folds.record.json").read_text())
    assert record["params"]["duplicates"].startswith("near (")
    assert (tmp_path / "folds" / "image_hashes.json").is_file()

    # The key is in the folds record: changing it reruns folds, and with exact the copies are rows like others.
    proc, fold = make_folds(tmp_path, "COMP_ARGS=duplicates=exact")
    assert "up to date" not in proc.stdout
    assert "near-duplicate images: not searched (duplicates: exact)" in proc.stdout
    assert any(fold[a] != fold[b] for a, b in pairs)
    assert not (tmp_path / "folds" / "near_duplicates.csv").exists()
    proc, _ = make_folds(tmp_path, "COMP_ARGS=duplicates=exact")
    assert "up to date" in proc.stdout
    _, again = make_folds(tmp_path, "COMP_ARGS=duplicates=near")  # hashes from folds/image_hashes.json now
    assert again.equals(first)


def test_duplicates_key_names_the_file_and_the_allowed_values(tmp_path):
    copies_competition(tmp_path)
    proc = run_cli("folds", "-c", "competition.yaml", "duplicates=fuzzy", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "competition.yaml" in proc.stderr
    assert "key 'duplicates': Input should be 'near', 'exact' or 'none' (got 'fuzzy')" in proc.stderr
    assert not (tmp_path / "folds" / "folds.csv").exists()


def test_duplicates_none_groups_not_even_identical_files(tmp_path):
    import shutil

    from tests.conftest import make_competition

    make_competition(tmp_path, n_train=30, n_test=6, duplicates="none")
    ids = pd.read_csv(tmp_path / "data" / "tiny" / "train.csv", dtype=str)["image_id"]
    img = tmp_path / "data" / "tiny" / "train"
    shutil.copy(img / f"{ids[0]}.png", img / f"{ids[1]}.png")
    proc = run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    assert "exact duplicate images in train: 2 rows in 1 sets (not grouped: duplicates: none)" in proc.stdout
    assert "near-duplicate images: not searched (duplicates: none)" in proc.stdout
    assert "ungrouped" in proc.stdout
    assert list(pd.read_csv(tmp_path / "folds" / "folds.csv").columns) == ["image_id", "fold"]


def test_near_pairs_finds_exactly_the_pairs_all_pairs_would(tmp_path):
    """Multi-index hashing against the brute force: every pair within the distance, and no other."""
    from pipeline.core.phash import hamming, near_groups, near_pairs

    rng = np.random.default_rng(1)
    base = rng.integers(0, 2**63, 300, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 300, dtype=np.uint64)
    flips = [np.uint64(0)]
    for bits in range(1, 9):  # copies with 1..8 random bits flipped
        flips.append(np.bitwise_or.reduce([np.uint64(1) << np.uint64(b) for b in rng.choice(64, bits, replace=False)]))
    copies = np.array([base[i] ^ flips[i % len(flips)] for i in range(120)], dtype=np.uint64)
    hashes = np.concatenate([base, copies])
    for distance in (0, 2, 4, 7):
        brute = np.argwhere(np.triu(hamming(hashes[:, None], hashes[None, :]) <= distance, k=1))
        assert np.array_equal(near_pairs(hashes, distance), brute), distance
    groups = near_groups(len(hashes), near_pairs(hashes, 4))
    assert (groups[300:] >= 0).sum() == sum(1 for i in range(120) if i % len(flips) <= 4)
    assert groups.max() + 1 == len(np.unique(groups[groups >= 0]))  # numbered densely from 0


@pytest.mark.slow
def test_eda_shows_train_test_near_duplicates_side_by_side(tmp_path):
    _, leaks = copies_competition(tmp_path)
    proc = run_cli("eda", "-c", "competition.yaml", cwd=tmp_path)
    out = tmp_path / "submissions" / "eda"
    near = json.loads((out / "eda.json").read_text())["duplicates"]["near"]
    assert near["test_near_train"] == TEST_COPIES and near["pairs"]["train-train"] == TRAIN_COPIES
    assert f"{TEST_COPIES} test images with a near-duplicate in train" in proc.stdout
    pairs = pd.read_csv(out / "near_duplicates.csv", dtype=str)
    assert set(map(tuple, pairs[pairs.kind == "train-test"][["id_a", "id_b"]].to_numpy())) == set(leaks)
    png = cv2.imread(str(out / "near_duplicates.png"))
    assert png is not None and png.shape[0] > png.shape[1]  # one row of two images per pair, 8 pairs
    index = (out / "index.md").read_text()
    assert "## Near-duplicates" in index and "near_duplicates.png" in index


def test_look_alike_images_chained_into_one_big_group_are_warned(tmp_path):
    """Distinct images that hash alike (one scene, a little noise each) chain into one group larger than half
    a fold: folds says so and names the way out instead of silently unbalancing the folds."""
    rng = np.random.default_rng(1)
    data = tmp_path / "data" / "alike"
    (data / "train").mkdir(parents=True)
    (data / "test").mkdir()
    scene = smooth_image(rng, 64)
    ids = [f"a{i:02d}" for i in range(18)]
    for i in ids[:15]:  # the look-alikes; the other 3 are distinct scenes
        noisy = np.clip(scene.astype(np.int16) + rng.integers(-3, 4, scene.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(data / "train" / f"{i}.png"), noisy)
    for i in ids[15:]:
        cv2.imwrite(str(data / "train" / f"{i}.png"), smooth_image(rng, 64))
    cv2.imwrite(str(data / "test" / "q.png"), smooth_image(rng, 64))
    pd.DataFrame({"image_id": ids, "label": [f"c{k % 2}" for k in range(18)]}).to_csv(data / "train.csv", index=False)
    pd.DataFrame({"image_id": ["q"], "label": "c0"}).to_csv(data / "sample_submission.csv", index=False)
    write_yaml(tmp_path / "competition.yaml", {"data_dir": "data/alike", "target": "label", "task": "multiclass",
                                               "n_folds": 3, "seed": 0})
    proc = run_cli("folds", "-c", "competition.yaml", cwd=tmp_path)
    assert "warning: the largest near-duplicate group holds 15 of 18 rows, over half a fold" in proc.stdout
    assert "set duplicates: exact if these are not copies" in proc.stdout
    write_yaml(tmp_path / "competition.yaml", {"data_dir": "data/alike", "target": "label", "task": "multiclass",
                                               "n_folds": 5, "seed": 0})  # 3 distinct + 1 group < 5 folds
    proc = run_cli("folds", "-c", "competition.yaml", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert ("only 4 groups for n_folds=5 (rows grouped by near-duplicates (perceptual hash, 15 rows)): use fewer "
            "folds; or, if the near-duplicates are look-alike images rather than copies, set the competition key "
            "duplicates: exact") in proc.stderr
