"""The RAM image cache: the same pixels as reading from disk, the same bad-image policy, and `auto`."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.nn import loader
from pipeline.nn.augment import build_transform
from pipeline.core.images import BadImage, read_image
from pipeline.nn.loader import ImageCache, ImageDataset, make_loader, maybe_cache


def write_images(folder, n=40, seed=0):
    """PNG images of mixed sizes, grayscale and colour."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = (8, 8) if i % 3 else (12 + i % 5, 7)
        img = rng.integers(0, 256, (h, w, 3) if i % 2 else (h, w), dtype=np.uint8)
        paths.append(folder / f"{i}.png")
        cv2.imwrite(str(paths[-1]), img)
    return paths


@pytest.mark.parametrize("in_chans", [1, 3])
def test_cache_returns_what_disk_returns(tmp_path, in_chans):
    paths = write_images(tmp_path)
    cache = ImageCache(paths, in_chans, threads=2)
    assert len(cache) == len(paths)
    for i, path in enumerate(paths):
        img = read_image(path, in_chans)
        assert cache[i].shape == img.shape and cache[i].dtype == np.uint8 and np.array_equal(cache[i], img)
    assert cache.nbytes == sum(read_image(p, in_chans).nbytes for p in paths)


def test_cached_dataset_yields_the_same_batches(tmp_path):
    paths = write_images(tmp_path, n=24)
    tf = build_transform("medium", 16, [0.5], [0.5], color=False)
    targets = np.eye(3, dtype=np.float32)[np.arange(24) % 3]
    batches = []
    for cache in (None, ImageCache(paths, 1)):
        ds = ImageDataset(paths, targets, tf, 1, "fail", cache)
        batches.append([x for x, _, _, _ in make_loader(ds, 8, 1, generator_seed=5)])
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(*batches))
    with pytest.raises(ValueError, match="cache holds 24 images for 23 paths"):
        ImageDataset(paths[:-1], None, tf, 1, "fail", ImageCache(paths, 1))


def test_bad_images_fail_the_fill_or_are_skipped_on_access(tmp_path):
    paths = write_images(tmp_path, n=10)
    paths[4].write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    paths.append(tmp_path / "missing.png")
    with pytest.raises(BadImage, match="4.png"):
        ImageCache(paths, 1, bad_images="fail")
    cache = ImageCache(paths, 1, bad_images="skip")
    assert np.array_equal(cache[5], read_image(paths[5], 1))
    for i, needle in ((4, "4.png: corrupt"), (10, "missing.png: image file not found")):
        with pytest.raises(BadImage, match=needle):
            cache[i]
    ds = ImageDataset(paths, None, build_transform("none", 8, [0.5], [0.5], color=False), 1, "skip", cache)
    assert ds[4] is None and ds[10] is None and ds[3] is not None


def test_cache_setting_auto_true_false(tmp_path, monkeypatch, capsys):
    paths = write_images(tmp_path, n=12)
    assert maybe_cache(False, paths, 1, "fail", "x") is None
    assert maybe_cache("auto", paths, 1, "fail", "x") is not None
    assert "12 images cached in RAM" in capsys.readouterr().out
    monkeypatch.setattr(loader, "AUTO_CACHE_MAX_BYTES", 100)  # now over the auto limit
    assert maybe_cache("auto", paths, 1, "fail", "x") is None
    out = capsys.readouterr().out
    assert "over the auto limit" in out and "cache_images=true" in out
    assert maybe_cache(True, paths, 1, "fail", "x") is not None  # true forces it


def test_split_gives_views_on_one_buffer(tmp_path):
    paths = write_images(tmp_path, n=10)
    paths[7].write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    cache = ImageCache(paths, 1, bad_images="skip")
    head, tail = cache.split(6)
    assert (len(head), len(tail)) == (6, 4) and head.nbytes + tail.nbytes == cache.nbytes
    assert all(np.array_equal(tail[i], cache[6 + i]) for i in (0, 2, 3))
    assert np.shares_memory(tail[0], cache.buffer)
    with pytest.raises(BadImage, match="7.png"):
        tail[1]
