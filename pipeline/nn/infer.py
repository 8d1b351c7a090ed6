"""The one inference path: a fold's model ready for inference, and images -> logits with TTA.

Training's validation, `predict`, the Kaggle kernel, the bench, the package planner and the report all
go through here: `load_fold_model` (or `model_from_state` for packaged weights) gives the model, and
`image_logits` reads images through the evaluation transform, batches them, and runs every model on
every TTA view of each batch, reading each image once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.nn.augment import eval_transform, train_transform
from pipeline.core.io import load_checkpoint
from pipeline.core.errors import CheckpointError
from pipeline.nn.loader import ImageCache, ImageDataset, make_loader
from pipeline.nn.models import (TARGET_MEAN, TARGET_STD, ModelConfig, attach_target_scale, build_model,
                                resolve_stages)
from pipeline.nn.tta import aug_draws, aug_seed, get_view


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def amp_dtype(amp: str, dev: torch.device) -> torch.dtype | None:
    """None means full precision. auto: bf16 where the GPU supports it, else fp16; off on CPU."""
    if dev.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(dev: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=dtype)


def to_proba(logits: np.ndarray | torch.Tensor, task: str) -> np.ndarray:
    """Softmax (sigmoid for multilabel) in float64: finite for any finite logits. Regression outputs are
    the predicted values already (the model carries its target scale), returned as they are."""
    t = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if task == "regression":
        return t.numpy()
    p = torch.sigmoid(t) if task == "multilabel" else torch.softmax(t, dim=1)
    return p.numpy()


# --- models for inference ------------------------------------------------------------------------


def inference_state(ckpt: dict) -> dict:
    """The weights a checkpoint predicts with: the EMA weights when it was trained with EMA."""
    return ckpt.get("ema") or ckpt["model"]


def model_from_state(cfg: ModelConfig, n_classes: int, state: dict, dev: torch.device | None = None,
                     meta: dict | None = None):
    """A model built from its config (no pretrained download), loaded with `state`, in eval mode on dev.
    `meta`: the metadata encoding a meta_head model was trained with (its checkpoint's "meta")."""
    model = build_model(cfg, num_classes=n_classes, pretrained=False, meta=meta)
    if TARGET_MEAN in state:  # a regression model: outputs in the target's units
        attach_target_scale(model, state[TARGET_MEAN], state[TARGET_STD])
    model.load_state_dict(state)
    model.to(dev or device()).eval()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def load_fold_model(run: str | Path, which: str = "best", dev: torch.device | None = None):
    """(model in eval mode with EMA weights when trained with EMA, config, checkpoint) of a run folder."""
    run = Path(run)
    try:
        ckpt = load_checkpoint(run / f"{which}.pt")
    except CheckpointError as e:
        raise CheckpointError(f"{e}; train the fold again: make train MODEL={run.parent.name} "
                              f"FOLD={run.name.removeprefix('fold')}") from None
    cfg = ModelConfig.model_validate(ckpt["config"])
    return model_from_state(cfg, len(ckpt["classes"]), inference_state(ckpt), dev, ckpt.get("meta")), cfg, ckpt


# --- images -> logits ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSpec:
    """How a trained model reads images for inference: the resolved data config (size, mean, std,
    interpolation), channels, batch size, workers, precision, memory format and the bad-image policy."""

    data_config: dict
    in_chans: int
    batch_size: int
    num_workers: int | str = "auto"
    amp: str = "auto"
    channels_last: bool = False
    bad_images: str = "fail"
    augment: object = "none"  # the training augmentation `aug:N` views draw from: the last stage's
    cache_dir: str | None = None  # the model's `cache_dir`: images kept decoded and preprocessed on disk

    @classmethod
    def of(cls, cfg: ModelConfig, data_config: dict) -> "EvalSpec":
        """Evaluation batches are twice the training batch (no gradients to hold)."""
        return cls(dict(data_config), cfg.in_chans, cfg.batch_size * 2, cfg.num_workers, cfg.amp, cfg.channels_last,
                   cfg.bad_images, resolve_stages(cfg, "config")[-1].augment, cfg.cache_dir)

    def transform(self):
        return eval_transform(self.data_config, self.in_chans)

    def augmentation(self):
        """The training augmentation at the evaluation size, for `aug:N` views."""
        return train_transform(self.augment, self.data_config, self.in_chans)


class DrawnViews(ImageDataset):
    """Each image's evaluation tensor and `draws` seeded draws of the training augmentation, stacked
    (1 + draws, C, H, W); draw j of image i is seeded by aug_seed(i, j), whatever the workers or batches."""

    def __init__(self, paths, spec: EvalSpec, draws: int, cache: ImageCache | None):
        super().__init__(paths, None, spec.transform(), spec.in_chans, spec.bad_images, cache,
                         short_side=spec.data_config.get("read_side"), preprocess=spec.data_config.get("preprocess"),
                         cache_dir=spec.cache_dir)
        self.augment, self.draws = spec.augmentation(), draws

    def __getitem__(self, i: int):
        img = self.read(i)
        if img is None:
            return None
        xs = [self.transform(image=img)["image"]]
        for j in range(self.draws):
            self.augment.set_random_seed(aug_seed(i, j))
            xs.append(self.augment(image=img)["image"])
        return torch.stack(xs), torch.as_tensor(-1), i


@torch.inference_mode()
def image_logits(models: list, paths: list[Path], spec: EvalSpec, views: list[str] | tuple[str, ...] = ("none",),
                 dev: torch.device | None = None, cache: ImageCache | None = None,
                 rows: list[int] | None = None, desc: str | None = None, meta: np.ndarray | None = None
                 ) -> np.ndarray:
    """Logits (models, views, n, C) of every image in `paths` (or only the indices in `rows`; the others
    stay zero), each image read once for all models and views; `desc` shows a progress bar in a terminal.
    `meta` (n, columns): each image's coded metadata (pipeline.core.meta), for models with a meta_head.

    Images that could not be read (policy skip) keep zero logits, i.e. the uniform prediction; a
    model's own NaN stays NaN.
    """
    dev = dev or device()
    dtype = amp_dtype(spec.amp, dev)
    draws = [aug_draws(v) for v in views]
    view_fns = [get_view(v) if n is None else None for v, n in zip(views, draws)]
    most = max((n for n in draws if n), default=0)
    if most:  # aug:N views: N seeded draws of the training augmentation beside each evaluation tensor
        dataset = DrawnViews(paths, spec, most, cache)
    else:
        dataset = ImageDataset(paths, None, spec.transform(), spec.in_chans, spec.bad_images, cache,
                               short_side=spec.data_config.get("read_side"),
                               preprocess=spec.data_config.get("preprocess"), cache_dir=spec.cache_dir)
    loader = make_loader(dataset, spec.batch_size, spec.num_workers, rows, dev=dev)
    fmt = torch.channels_last if spec.channels_last else torch.contiguous_format
    for m in models:
        m.eval()
    out: np.ndarray | None = None
    skipped = 0
    if desc is not None:  # a progress bar, in a terminal only
        from tqdm import tqdm

        loader = tqdm(loader, desc=desc, leave=False, disable=None, dynamic_ncols=True)
    for x, _, idx, n_bad in loader:
        skipped += n_bad
        if x is None:
            continue
        x = x.to(dev, non_blocking=True)
        batch_rows = idx.numpy()
        extra = () if meta is None else (torch.as_tensor(meta[batch_rows], dtype=torch.float32, device=dev),)
        for v, view in enumerate(view_fns):
            inputs = [view(x[:, 0] if most else x)] if view is not None else [x[:, 1 + j] for j in range(draws[v])]
            inputs = [xv.contiguous(memory_format=fmt) for xv in inputs]
            for m, model in enumerate(models):
                with autocast(dev, dtype):  # an aug:N view: the mean of its N draws' logits
                    logits = [model(xv, *extra).float().cpu().numpy() for xv in inputs]
                logits = logits[0] if len(logits) == 1 else np.mean(logits, axis=0)
                if out is None:
                    out = np.zeros((len(models), len(view_fns), len(paths), logits.shape[1]), dtype=np.float32)
                out[m, v, batch_rows] = logits
    if skipped:
        print(f"warning: {skipped} image(s) could not be read; predicted as uniform")
    if out is None:
        raise RuntimeError("no image could be read for prediction")
    return out
