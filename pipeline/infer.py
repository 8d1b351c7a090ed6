"""Shared inference pieces: device and precision choice, batched logits, logits -> probabilities."""

from __future__ import annotations

import contextlib

import numpy as np
import torch


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
    """Softmax (sigmoid for multilabel) in float64: finite for any finite logits."""
    t = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    p = torch.sigmoid(t) if task == "multilabel" else torch.softmax(t, dim=1)
    return p.numpy()


@torch.inference_mode()
def tta_logits(models: list, loader, views: list, dev: torch.device, dtype: torch.dtype | None,
               channels_last: bool, n: int) -> np.ndarray:
    """Logits (models, views, n, C) for the dataset indices the loader yields, each image read once.

    Images that could not be read (policy skip) keep zero logits, i.e. the uniform prediction; a
    model's own NaN stays NaN.
    """
    for m in models:
        m.eval()
    out: np.ndarray | None = None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    skipped = 0
    for x, _, idx, n_bad in loader:
        skipped += n_bad
        if x is None:
            continue
        x = x.to(dev, non_blocking=True)
        rows = idx.numpy()
        for v, view in enumerate(views):
            xv = view(x).contiguous(memory_format=fmt)
            for m, model in enumerate(models):
                with autocast(dev, dtype):
                    logits = model(xv).float().cpu().numpy()
                if out is None:
                    out = np.zeros((len(models), len(views), n, logits.shape[1]), dtype=np.float32)
                out[m, v, rows] = logits
    if skipped:
        print(f"warning: {skipped} image(s) could not be read; predicted as uniform")
    if out is None:
        raise RuntimeError("no image could be read for prediction")
    return out


def predict_logits(model, loader, dev: torch.device, dtype: torch.dtype | None, channels_last: bool, n: int):
    """Logits (n, C) of one model without TTA."""
    return tta_logits([model], loader, [lambda x: x], dev, dtype, channels_last, n)[0, 0]
