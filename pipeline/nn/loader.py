"""Images -> tensors: the dataset, a deterministic epoch sampler, and a collate that drops bad images.

Determinism: the order of an epoch depends only on (seed, epoch), and each worker's augmentation
seed comes from the loader's generator, so a resumed epoch replays exactly what an unbroken run did
(for the same num_workers).

RAM cache: `ImageCache` decodes every image once, in the main process before the first epoch, into one
contiguous uint8 buffer. Forked DataLoader workers read it copy-on-write, so an epoch skips the file
read and the decode (about half of the per-image CPU time on small images).

Reduced reads: with `short_side`, every image whose shorter side is longer is read reduced to it
(`images.read_image`), by the cache and by the disk path alike, so the cache holds only what training
needs (about (short_side / shorter side)^2 of the full-resolution bytes) and a cached read gives the
same array as an uncached one.

Preprocessing: with `preprocess` (a data config's `preprocess` list, see pipeline.nn.preprocess) every image
is preprocessed right after the read, before any transform; the cache holds the preprocessed images, so a
cached run preprocesses each image once.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from pipeline.core.images import BadImage, read_image
from pipeline.nn.preprocess import Preprocess


def read_preprocessed(path: Path, in_chans: int, short_side: int | None, preprocess: Preprocess,
                      cache_dir: str | Path | None = None) -> np.ndarray:
    """`read_image` then the model's preprocessing steps (none: the image as read). With `cache_dir` the
    result is kept there as a .npy file keyed by (path, its mtime and size, in_chans, short_side, the
    steps), so later reads (other folds, runs, predict) skip the decode and the preprocessing."""
    if cache_dir is None:
        img = read_image(path, in_chans, short_side)
        return preprocess(img, path) if preprocess else img
    stat = os.stat(path)
    key = json.dumps([str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size, in_chans, short_side,
                      preprocess.digest()])
    file = Path(cache_dir) / f"{hashlib.sha1(key.encode()).hexdigest()}.npy"
    try:
        return np.load(file)
    except (OSError, ValueError, EOFError):  # not cached yet (or a damaged file: made again)
        pass
    img = read_preprocessed(path, in_chans, short_side, preprocess)
    tmp = file.with_name(f".{file.stem}.{os.getpid()}.{threading.get_ident()}.tmp.npy")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp, img)
        os.replace(tmp, file)  # atomic: a concurrent reader sees the whole file or none
    except OSError as e:
        tmp.unlink(missing_ok=True)
        print(f"warning: cannot write the preprocessed image cache {file}: {e}", file=sys.stderr)
    return img


def available_memory() -> int:
    """Bytes of RAM available now (Linux MemAvailable; free pages elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


AUTO_CACHE_MAX_BYTES = 4 * 2**30  # `cache_images: auto` caches up to this, and at most a quarter of free RAM


def evenly_spaced(items: list, k: int) -> list:
    """Up to k items spread evenly over the list, first and last included."""
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, min(k, len(items))).astype(int))]


def estimate_bytes(paths: list[Path], in_chans: int, sample: int = 32, short_side: int | None = None) -> int:
    """Decoded size of all `paths` (read reduced to `short_side`), from the mean of up to `sample` evenly
    spaced images."""
    sizes = []
    for path in evenly_spaced(paths, sample):
        try:
            sizes.append(read_image(path, in_chans, short_side).nbytes)
        except BadImage:
            continue
    return int(np.mean(sizes) * len(paths)) if sizes else 0


def should_cache(setting: bool | str, paths: list[Path], in_chans: int,
                 short_side: int | None = None) -> tuple[bool, int]:
    """(cache or not, estimated bytes of the images read reduced to `short_side`) for a `cache_images`
    setting: True, False or "auto"."""
    if setting is False or not paths:
        return False, 0
    need = estimate_bytes(paths, in_chans, short_side=short_side)
    if setting == "auto":
        return need <= min(AUTO_CACHE_MAX_BYTES, available_memory() // 4), need
    return True, need


class ImageCache:
    """Every image of `paths` decoded once into one contiguous uint8 buffer; cache[i] is image i, read
    as `read_image(paths[i], in_chans, short_side)` reads it (reduced when `short_side` is given), then
    preprocessed by the `preprocess` steps (a data config's list; None: none).

    Unreadable images are remembered as their error, raised again as BadImage on access, so the
    dataset's bad_images policy applies as without a cache. With bad_images="fail" the first bad
    image stops the fill.
    """

    def __init__(self, paths: list[Path], in_chans: int, bad_images: str = "fail", threads: int | None = None,
                 desc: str = "caching images", size_hint: int | None = None, short_side: int | None = None,
                 preprocess: list | None = None, cache_dir: str | None = None):
        from tqdm import tqdm

        n = len(paths)
        self.shapes = np.zeros((n, 3), dtype=np.int32)
        self.offsets = np.zeros(n + 1, dtype=np.int64)
        self.errors: dict[int, str] = {}
        self.short_side, self.preprocess = short_side, Preprocess(preprocess)
        hint = estimate_bytes(paths, in_chans, short_side=short_side) if size_hint is None else size_hint
        buf = np.empty(max(hint * 11 // 10, 1), dtype=np.uint8)

        def load(i: int):
            try:
                return read_preprocessed(paths[i], in_chans, short_side, self.preprocess, cache_dir)
            except BadImage as e:
                if bad_images == "fail":
                    raise
                return str(e)

        def load_chunk(start: int) -> list:
            return [load(i) for i in range(start, min(start + 64, n))]

        self.preprocess.steps()  # custom steps load here once, not in each thread
        t0, pos = time.time(), 0
        with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:  # cv2 releases the GIL
            chunks = pool.map(load_chunk, range(0, n, 64))
            images = (img for chunk in chunks for img in chunk)
            for i, img in enumerate(tqdm(images, total=n, desc=desc, leave=False, disable=None)):
                if isinstance(img, str):
                    self.errors[i] = img
                else:
                    if pos + img.nbytes > len(buf):
                        buf = np.resize(buf, max(len(buf) * 3 // 2, pos + img.nbytes))
                    buf[pos : pos + img.nbytes] = img.reshape(-1)
                    self.shapes[i] = (*img.shape, 1)[:3]
                    pos += img.nbytes
                self.offsets[i + 1] = pos
        self.buffer = buf[:pos].copy() if len(buf) - pos > len(buf) // 10 else buf
        self.seconds = time.time() - t0

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1] - self.offsets[0])

    def split(self, n: int) -> tuple["ImageCache", "ImageCache"]:
        """Images [0, n) and [n, len): views on the same buffer, no copy."""
        return self._view(0, n), self._view(n, len(self))

    def _view(self, start: int, stop: int) -> "ImageCache":
        view = object.__new__(ImageCache)
        view.buffer, view.seconds, view.short_side = self.buffer, self.seconds, self.short_side
        view.preprocess = self.preprocess
        view.shapes, view.offsets = self.shapes[start:stop], self.offsets[start : stop + 1]
        view.errors = {i - start: e for i, e in self.errors.items() if start <= i < stop}
        return view

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, i: int) -> np.ndarray:
        if i in self.errors:
            raise BadImage(self.errors[i])
        h, w, c = self.shapes[i]
        img = self.buffer[self.offsets[i] : self.offsets[i + 1]]
        return img.reshape(h, w) if c == 1 else img.reshape(h, w, c)


def maybe_cache(setting: bool | str, paths: list[Path], in_chans: int, bad_images: str, what: str,
                verbose: bool = True, short_side: int | None = None,
                preprocess: list | None = None, cache_dir: str | None = None) -> ImageCache | None:
    """An ImageCache of `paths` (read reduced to `short_side`, then preprocessed) when the `cache_images`
    setting says so, with one line saying why."""
    use, need = should_cache(setting, paths, in_chans, short_side)
    if not use:
        if verbose and setting == "auto" and paths:
            print(f"{what}: not caching {len(paths):,} images in RAM (about {need / 2**30:.1f} GiB is over the "
                  f"auto limit); `cache_images=true` forces it")
        return None
    free = available_memory()
    if need > 0.8 * free:
        print(f"warning: caching {what} needs about {need / 2**30:.1f} GiB of the {free / 2**30:.1f} GiB free",
              file=sys.stderr)
    cache = ImageCache(paths, in_chans, bad_images, desc=f"caching {what}", size_hint=need, short_side=short_side,
                       preprocess=preprocess, cache_dir=cache_dir)
    if verbose:
        print(f"{what}: {len(paths):,} images cached in RAM ({cache.nbytes / 2**20:.1f} MiB, {cache.seconds:.1f}s)")
    return cache


class ImageDataset(Dataset):
    """(image tensor, target, index) per row; target is a class index, a soft/multi-hot vector, or -1.

    Images are read reduced to `short_side` (see images.read_image). With `cache` (an ImageCache over the
    same paths, built with the same short_side and preprocess) images come from RAM instead of disk. With
    `preprocess` (a data config's list) each image read from disk is preprocessed, and with `cache_dir` kept
    on disk once preprocessed (see read_preprocessed).
    """

    def __init__(self, paths: list[Path], targets: np.ndarray | None, transform, in_chans: int, bad_images: str,
                 cache: ImageCache | None = None, short_side: int | None = None, preprocess: list | None = None,
                 cache_dir: str | None = None):
        self.paths, self.targets, self.transform = list(paths), targets, transform
        self.in_chans, self.bad_images, self.short_side = in_chans, bad_images, short_side
        self.preprocess, self.cache_dir = Preprocess(preprocess), cache_dir
        if cache is not None and len(cache) != len(self.paths):
            raise ValueError(f"cache holds {len(cache)} images for {len(self.paths)} paths")
        if cache is not None and cache.short_side != short_side:
            raise ValueError(f"cache holds images read at short_side={cache.short_side}, the dataset reads them "
                             f"at short_side={short_side}")
        if cache is not None and cache.preprocess.key() != self.preprocess.key():
            raise ValueError("cache holds images preprocessed otherwise than the dataset preprocesses them")
        self.cache = cache

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> np.ndarray | None:
        """Image i as read (from the cache when there is one); None when unreadable and bad_images is skip."""
        try:
            if self.cache is not None:
                return self.cache[i]
            return read_preprocessed(self.paths[i], self.in_chans, self.short_side, self.preprocess, self.cache_dir)
        except BadImage as e:
            if self.bad_images == "fail":
                raise
            print(f"warning: skipping {e}", file=sys.stderr)
            return None

    def __getitem__(self, i: int):
        img = self.read(i)
        if img is None:
            return None
        x = self.transform(image=img)["image"]
        y = self.targets[i] if self.targets is not None else -1
        return x, torch.as_tensor(y), i


def collate(batch):
    """Stack good samples; report how many were dropped as bad."""
    good = [b for b in batch if b is not None]
    n_bad = len(batch) - len(good)
    if not good:
        return None, None, None, n_bad
    xs, ys, idx = zip(*good)
    return torch.stack(xs), torch.stack(ys), torch.as_tensor(idx), n_bad


def collate_train(batch):
    """`collate` for training: a batch left with one good image (the others unreadable, bad_images=skip) is
    dropped whole, since BatchNorm cannot normalise a single sample (a 1x1 map after pooling)."""
    x, y, idx, n_bad = collate(batch)
    if x is not None and len(x) == 1 and len(batch) > 1:
        print(f"warning: skipping a batch left with one readable image ({n_bad} unreadable): BatchNorm cannot "
              "train on a batch of one", file=sys.stderr)
        return None, None, None, n_bad
    return x, y, idx, n_bad


def batches_per_epoch(n: int, batch_size: int) -> int:
    """The batches a training loader gives for n samples: ceil(n / batch_size), less one when the last
    batch would hold a single sample (it joins the batch before it; see NoSingletonBatches)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > 1 or (rest == 1 and full == 0) else 0)


class NoSingletonBatches(Sampler[list[int]]):
    """Batches of `batch_size` indices from `sampler`, where a last batch of one sample joins the batch
    before it (that one holds batch_size + 1). BatchNorm in training fails on a batch of one ("Expected
    more than 1 value per channel"), and a 17-row fold part with batch_size 16 would end on one every
    epoch; no sample is dropped. A sampler of one sample still gives its one batch."""

    def __init__(self, sampler: Sampler[int], batch_size: int):
        self.sampler, self.batch_size = sampler, batch_size

    def __iter__(self):
        batch: list[int] = []
        held: list[int] | None = None
        for i in self.sampler:
            batch.append(i)
            if len(batch) == self.batch_size:
                if held is not None:
                    yield held
                held, batch = batch, []
        if len(batch) == 1 and held is not None:
            held, batch = held + batch, []
        if held is not None:
            yield held
        if batch:
            yield batch

    def __len__(self) -> int:
        return batches_per_epoch(len(self.sampler), self.batch_size)


class EpochSampler(Sampler[int]):
    """Indices for one epoch from (seed, epoch): a permutation, or a class-balanced draw with replacement.

    With several processes each rank takes every world_size-th index of the same order, cut to equal
    lengths, so DDP ranks see disjoint shards.
    """

    def __init__(self, n: int, seed: int, weights: np.ndarray | None = None, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.weights = n, seed, weights
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is None:
            return rng.permutation(self.n)
        p = self.weights / self.weights.sum()
        return rng.choice(self.n, size=self.n, replace=True, p=p)

    def __iter__(self):
        order = self._order()
        per_rank = len(order) // self.world_size
        return iter(order[self.rank :: self.world_size][:per_rank].tolist())

    def __len__(self) -> int:
        return self.n // self.world_size


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32  # derived from the loader's generator: deterministic per epoch
    np.random.seed(seed)
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def resolve_workers(setting: int | str, dev: torch.device, world: int = 1) -> int:
    """DataLoader workers for a `num_workers` setting: a number as given; "auto" is 0 on CPU, where the
    model's threads already use every core and a worker would only take turns with them (measured by
    `make bench`), and on a GPU the CPUs each process may use, at most 8."""
    if setting != "auto":
        return int(setting)
    if dev.type == "cpu":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cpus // max(world, 1) - 1))


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    num_workers: int | str,
    sampler: Sampler | None = None,
    generator_seed: int | None = None,
    dev: torch.device | None = None,
    world: int = 1,
) -> DataLoader:
    """A DataLoader for `dataset` on device `dev` (CPU when None): workers from `num_workers` (a number or
    "auto", see resolve_workers) and pinned memory for CUDA.

    A training loader (its sampler is an EpochSampler) never gives a batch of one: a last batch of one
    joins the batch before it (NoSingletonBatches), and a batch left with one readable image is dropped
    (collate_train). Evaluation loaders (any other sampler, or none) batch every row as it comes."""
    dev = dev or torch.device("cpu")
    workers = resolve_workers(num_workers, dev, world)
    generator = torch.Generator().manual_seed(generator_seed) if generator_seed is not None else None
    if workers == 0 and generator_seed is not None and hasattr(dataset.transform, "set_random_seed"):
        dataset.transform.set_random_seed(generator_seed % 2**32)
    common = dict(num_workers=workers, worker_init_fn=_seed_worker if workers else None, generator=generator,
                  pin_memory=dev.type == "cuda", persistent_workers=False)
    if isinstance(sampler, EpochSampler):
        return DataLoader(dataset, batch_sampler=NoSingletonBatches(sampler, batch_size), collate_fn=collate_train,
                          **common)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, collate_fn=collate,
                      drop_last=False, **common)
