"""Images -> tensors: the dataset, a deterministic epoch sampler, and a collate that drops bad images.

Determinism: the order of an epoch depends only on (seed, epoch), and each worker's augmentation
seed comes from the loader's generator, so a resumed epoch replays exactly what an unbroken run did
(for the same num_workers).
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from pipeline.data import DataError


class BadImage(DataError):
    """An image that cannot be read or decoded."""


def read_image(path: str | Path, in_chans: int) -> np.ndarray:
    """HxW (grayscale) or HxWx3 RGB uint8; raises BadImage with the path when it cannot be decoded."""
    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
    if data is None:
        raise BadImage(f"{path}: image file not found")
    img = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE if in_chans == 1 else cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise BadImage(f"{path}: corrupt or unreadable image")
    return img if in_chans == 1 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class ImageDataset(Dataset):
    """(image tensor, target, index) per row; target is a class index, a soft/multi-hot vector, or -1."""

    def __init__(self, paths: list[Path], targets: np.ndarray | None, transform, in_chans: int, bad_images: str):
        self.paths, self.targets, self.transform = list(paths), targets, transform
        self.in_chans, self.bad_images = in_chans, bad_images

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = read_image(self.paths[i], self.in_chans)
        except BadImage as e:
            if self.bad_images == "fail":
                raise
            print(f"warning: skipping {e}", file=sys.stderr)
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


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    num_workers: int,
    sampler: Sampler | None = None,
    generator_seed: int | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    generator = torch.Generator().manual_seed(generator_seed) if generator_seed is not None else None
    if num_workers == 0 and generator_seed is not None and hasattr(dataset.transform, "set_random_seed"):
        dataset.transform.set_random_seed(generator_seed % 2**32)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=_seed_worker if num_workers else None,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=False,
        drop_last=False,
    )
