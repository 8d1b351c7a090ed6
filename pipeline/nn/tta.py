"""Test-time augmentation: exact views of a normalised batch, and merges that are safe on raw logits.

Views act on tensors (B, C, H, W) after normalisation, so each one is exact (hflip twice is the
identity). The random view `aug:N` instead runs the model's training augmentation N times on each image as
read, each draw seeded by (image, draw), and averages the N draws' logits (pipeline.nn.infer). Merges work
in log space in float64 (numpy): no NaN or Inf comes out of finite logits, however large. Names are
checked without torch, so a stage can decide it is up to date without importing it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from pipeline.core.errors import ConfigError

if TYPE_CHECKING:
    import torch

View = Callable[["torch.Tensor"], "torch.Tensor"]

VIEWS: dict[str, View] = {
    "none": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "transpose": lambda x: x.transpose(-1, -2),
    "rot90": lambda x: x.rot90(1, (-2, -1)),
    "rot180": lambda x: x.rot90(2, (-2, -1)),
    "rot270": lambda x: x.rot90(3, (-2, -1)),
    "antitranspose": lambda x: x.rot90(1, (-2, -1)).flip(-1),
}
MERGES = ("mean", "gmean", "logit_mean", "max")
PRESETS: dict[str, list[str]] = {
    "none": ["none"],
    "flips": ["none", "hflip"],
    "flips4": ["none", "hflip", "vflip", "rot180"],
    "d4": ["none", "rot90", "rot180", "rot270", "hflip", "vflip", "transpose", "antitranspose"],
}


def _scale(factor: float) -> View:
    """Zoom by `factor` around the centre, keeping the input size: > 1 crops the enlarged image, < 1
    pads the shrunk one by edge replication. Same size in, same size out, so any model accepts it."""

    def view(x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        sh, sw = max(1, round(h * factor)), max(1, round(w * factor))
        y = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False)
        if sh >= h and sw >= w:
            top, left = (sh - h) // 2, (sw - w) // 2
            return y[..., top : top + h, left : left + w]
        top, left = (h - sh) // 2, (w - sw) // 2
        return F.pad(y, (left, w - sw - left, top, h - sh - top), mode="replicate")

    return view


def expand(tta: str | list[str]) -> list[str]:
    """View names from a preset or a list; 'd4' inside a list expands too. Unknown names list the valid ones."""
    items = [tta] if isinstance(tta, str) else list(tta)
    names: list[str] = []
    for item in items:
        for name in PRESETS.get(item, [item]):
            if aug_draws(name) is None:
                get_view(name)
            if name not in names:
                names.append(name)
    return names


MAX_DRAWS = 64


def aug_draws(name: str) -> int | None:
    """N of a random-augmentation view `aug:N` (None for any other name): the view's logits are the mean of
    N draws of the model's training augmentation, each seeded by (image, draw) (see `aug_seed`)."""
    if not name.startswith("aug:"):
        return None
    n = name.split(":", 1)[1]
    if not n.isdigit() or not 1 <= int(n) <= MAX_DRAWS:
        raise ConfigError(f"key 'tta': view {name!r}: aug:<N> takes N draws of the training augmentation, "
                          f"N from 1 to {MAX_DRAWS} (e.g. aug:4)")
    return int(n)


def aug_seed(row: int, draw: int) -> int:
    """The seed of draw `draw` of image `row` (its index in the images predicted): the same images in the same
    order give the same draws, in training's validation, predict, the kernel and show-batch."""
    return (row * 1_000_003 + draw * 7919 + 12345) % 2**32


def get_view(name: str) -> View:
    """The function of a fixed view (on a normalised batch); `aug:N` views are drawn from the images instead."""
    if name in VIEWS:
        return VIEWS[name]
    if name.startswith("scale:"):
        try:
            factor = float(name.split(":", 1)[1])
        except ValueError:
            factor = -1.0
        if 0.25 <= factor <= 4:
            return _scale(factor)
    raise ConfigError(
        f"key 'tta': unknown view {name!r}; views: {', '.join(VIEWS)}, scale:<factor> (e.g. scale:0.9), "
        f"aug:<N> (the mean of N seeded draws of the training augmentation, e.g. aug:4); "
        f"presets: {', '.join(PRESETS)}"
    )


def check_merge(how: str) -> str:
    if how not in MERGES:
        raise ConfigError(f"key 'tta_merge': unknown merge {how!r}; use {', '.join(MERGES[:-1])} or {MERGES[-1]}")
    return how


def _log_proba(logits: np.ndarray, task: str) -> np.ndarray:
    if task == "multilabel":  # log sigmoid
        return -np.logaddexp(0.0, -logits)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def merge(logits: np.ndarray, how: str, task: str) -> np.ndarray:
    """Merge views' logits (V, n, C) into probabilities (n, C); regression values by their mean, whatever `how`."""
    logits = np.asarray(logits, dtype=np.float64)
    check_merge(how)
    if task == "regression":
        return logits.mean(axis=0)
    if how == "logit_mean":
        return np.exp(_log_proba(logits.mean(axis=0), task))
    logp = _log_proba(logits, task)
    if how == "mean":
        return np.exp(logp).mean(axis=0)
    if how == "max":
        p = np.exp(logp).max(axis=0)
    else:  # gmean
        if task == "multilabel":  # geometric mean of p against that of 1 - p, per label
            log1m = _log_proba(-logits, task)
            a, b = logp.mean(axis=0), log1m.mean(axis=0)
            return np.exp(a - np.logaddexp(a, b))
        p = np.exp(logp.mean(axis=0) - logp.mean(axis=0).max(axis=-1, keepdims=True))
    return p if task == "multilabel" else p / p.sum(axis=-1, keepdims=True)
