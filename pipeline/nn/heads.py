"""Pooling and heads for fine-grained work, swapped into a timm model in place: GeM pooling with a learnable
p, and a sub-center ArcFace classifier.

The model keeps timm's shape (forward_features -> forward_head, get_classifier), so training, EMA, Grad-CAM,
the backbone/head learning rates and the packaged kernel see an ordinary timm model. ArcFace's forward gives
`scale x cos(angle to the nearest sub-center of each class)`: plain logits for softmax, TTA, the blends and
the report. Its angular margin belongs to training only, so it lives in the loss (`arcface_margin`).

Imported lazily by models.build_model: torch here, none at the bottom floor's import.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.errors import ConfigError


class GeM(nn.Module):
    """Generalised mean pooling, (mean x^p)^(1/p) over H x W, with p learned (p=1: average, p->inf: max)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, flatten: bool = True):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps, self.flatten = eps, flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        x = x.float().clamp(min=self.eps).pow(p).mean(dim=(-2, -1), keepdim=True).pow(1.0 / p).to(x.dtype)
        return x.flatten(1) if self.flatten else x

    def is_identity(self) -> bool:  # timm's heads ask their pool this
        return False

    def feat_mult(self) -> int:
        return 1


class ArcFace(nn.Module):
    """Sub-center ArcFace: k unit-norm centers per class; logits = scale x max_k cos(feature, center)."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0, subcenters: int = 3):
        super().__init__()
        self.in_features, self.num_classes, self.out_features = in_features, num_classes, num_classes
        self.scale, self.subcenters = float(scale), int(subcenters)
        self.weight = nn.Parameter(torch.empty(num_classes * subcenters, in_features))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(x.float()), F.normalize(self.weight.float()))
        cos = cos.view(-1, self.num_classes, self.subcenters).amax(dim=2)
        return self.scale * cos


def arc_margin(logits: torch.Tensor, target: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    """ArcFace's additive angular margin on ArcFace logits (scale x cos), for the loss only: each class's
    cos(t) becomes cos(t + margin) in proportion to its target weight (one-hot: exactly ArcFace; soft targets
    from mixup or smoothing: in between). Past t = pi - margin the usual linear fallback keeps it monotone."""
    cos = (logits.float() / scale).clamp(-1 + 1e-7, 1 - 1e-7)
    sin = (1.0 - cos * cos).sqrt()
    phi = cos * math.cos(margin) - sin * math.sin(margin)
    phi = torch.where(cos > math.cos(math.pi - margin), phi, cos - math.sin(math.pi - margin) * margin)
    return logits.float() + scale * (phi - cos) * target


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def set_pool(model: nn.Module, kind: str, p: float) -> nn.Module:
    """Replace the model's global pooling (timm's last SelectAdaptivePool2d) with avg, max or GeM."""
    from timm.layers import SelectAdaptivePool2d

    pools = [(n, m) for n, m in model.named_modules() if isinstance(m, SelectAdaptivePool2d)]
    if not pools:
        raise ConfigError(f"key 'pool': {type(model).__name__} has no global pooling layer to replace (a CNN "
                          "with timm's SelectAdaptivePool2d is needed; transformers pool tokens); use pool: null")
    name, old = pools[-1]
    flatten = not isinstance(old.flatten, nn.Identity)
    new = GeM(p, flatten=flatten) if kind == "gem" else SelectAdaptivePool2d(pool_type=kind, flatten=flatten)
    parent, attr = _parent(model, name)
    setattr(parent, attr, new)
    return model


def set_arcface(model: nn.Module, scale: float, subcenters: int) -> nn.Module:
    """Replace the model's linear classifier (get_classifier) with sub-center ArcFace of the same size."""
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"key 'head': arcface replaces a linear classifier; {type(model).__name__}'s is "
                          f"{type(head).__name__}")
    name = next(n for n, m in model.named_modules() if m is head)
    parent, attr = _parent(model, name)
    setattr(parent, attr, ArcFace(head.in_features, head.out_features, scale, subcenters))
    return model
