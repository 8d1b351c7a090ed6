"""The metadata head (model key `meta_head`): each image's metadata (competition key `meta_cols`) through a
small MLP, joined to the pooled image features before the classifier, as the SIIM-ISIC melanoma winners did.

The model takes the metadata as pipeline.core.meta codes it: one float per column, numbers as they are and
categories as their code among train.csv's values, NaN where missing. `MetaMLP` turns that into features
itself, so every caller (training, OOF, predict, the Kaggle kernel) passes the same coded table:
- a numeric column: standardised by the mean and std of the fold's training rows, a missing value taking
  the training rows' median, plus a 0/1 flag "missing";
- a categorical column: one-hot over train.csv's values (a missing or unseen value: all zeros).
Those statistics are buffers, fitted once on the fold's training rows (`MetaMLP.fit`), so they travel in
every state dict: checkpoints, EMA weights, packaged safetensors.

`set_meta_head` keeps timm's shape: the model is still its timm class (a subclass of it whose forward also
takes the metadata), forward_features and forward_head(pre_logits=True) are timm's, and get_classifier() is
the classifier, widened by the MLP's width. Imported lazily by models.build_model (torch here).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.core.errors import ConfigError

HIDDEN = 128  # the MLP's first layer
WIDTH = 64  # what it adds to the pooled features


class MetaMLP(nn.Module):
    """Coded metadata (n, columns; NaN: missing) -> (n, WIDTH) features."""

    def __init__(self, kinds: list[str], levels: list[int], dropout: float = 0.3):
        super().__init__()
        self.kinds, self.levels = list(kinds), [int(v) for v in levels]
        n_num = kinds.count("num")
        self.register_buffer("num_median", torch.zeros(n_num))
        self.register_buffer("num_mean", torch.zeros(n_num))
        self.register_buffer("num_std", torch.ones(n_num))
        self.register_buffer("num_index", torch.tensor([j for j, k in enumerate(kinds) if k == "num"],
                                                       dtype=torch.long))
        width = 2 * n_num + sum(self.levels)
        self.mlp = nn.Sequential(nn.Linear(width, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(HIDDEN, WIDTH), nn.BatchNorm1d(WIDTH), nn.SiLU())

    @torch.no_grad()
    def fit(self, coded: np.ndarray) -> "MetaMLP":
        """The numeric columns' median, mean and std over the fold's training rows (each missing cell filled
        with the median before the mean and std; a constant column keeps std 1)."""
        num = np.asarray(coded, dtype=np.float64)[:, [j for j, k in enumerate(self.kinds) if k == "num"]]
        for j in range(num.shape[1]):
            col = num[:, j]
            seen = col[np.isfinite(col)]
            median = float(np.median(seen)) if len(seen) else 0.0
            filled = np.where(np.isfinite(col), col, median)
            std = float(filled.std())
            self.num_median[j], self.num_mean[j] = median, float(filled.mean())
            self.num_std[j] = std if std > 0 else 1.0
        return self

    def features(self, coded: torch.Tensor) -> torch.Tensor:
        coded = coded.float()
        parts = []
        if len(self.num_index):
            num = coded[:, self.num_index]
            missing = ~torch.isfinite(num)
            num = torch.where(missing, self.num_median, num)
            parts += [(num - self.num_mean) / self.num_std, missing.float()]
        cats = [j for j, k in enumerate(self.kinds) if k == "cat"]
        for j, n_levels in zip(cats, self.levels):
            code = coded[:, j]
            known = torch.isfinite(code) & (code >= 0) & (code < n_levels)
            index = torch.where(known, code, 0).long()
            parts.append(nn.functional.one_hot(index, n_levels).float() * known[:, None].float())
        return torch.cat(parts, dim=1)

    def forward(self, coded: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(coded))


class MetaForward:
    """Mixed in before a timm model class by set_meta_head: forward(x, meta)."""

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        if meta is None:
            raise ValueError("this model has a metadata head (meta_head: true): it needs each image's coded "
                             "metadata beside the image")
        return self.head_with_meta(self.forward_features(x), meta)

    def head_with_meta(self, feats: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        """forward_head with the metadata: the pooled features and the MLP's, joined, through the classifier."""
        pooled = self.forward_head(feats, pre_logits=True)
        joined = torch.cat([pooled, self.meta_mlp(meta.to(pooled.device)).to(pooled.dtype)], dim=1)
        return self.get_classifier()(joined)


_CLASSES: dict[type, type] = {}


def _meta_class(cls: type) -> type:
    if issubclass(cls, MetaForward):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(cls.__name__, (MetaForward, cls), {"__module__": cls.__module__})
    return _CLASSES[cls]


def has_meta_head(model: nn.Module) -> bool:
    return isinstance(model, MetaForward)


def set_meta_head(model: nn.Module, kinds: list[str], levels: list[int]) -> nn.Module:
    """Give the model a MetaMLP and widen its classifier (Linear or ArcFace) by the MLP's width, in place."""
    from pipeline.nn.heads import ArcFace, _parent

    head = model.get_classifier()
    if not isinstance(head, (nn.Linear, ArcFace)):
        raise ConfigError(f"key 'meta_head': joins the metadata before a linear or ArcFace classifier; "
                          f"{type(model).__name__}'s classifier is {type(head).__name__}")
    name = next(n for n, m in model.named_modules() if m is head)
    if isinstance(head, nn.Linear):
        wider = nn.Linear(head.in_features + WIDTH, head.out_features)
    else:
        wider = ArcFace(head.in_features + WIDTH, head.num_classes, head.scale, head.subcenters)
    parent, attr = _parent(model, name)
    setattr(parent, attr, wider)
    model.meta_mlp = MetaMLP(kinds, levels)
    model.__class__ = _meta_class(type(model))
    return model


def meta_shape(encoding: dict) -> tuple[list[str], list[int]]:
    """(kinds, level counts of the categorical columns) of an exported MetaEncoding (a checkpoint's "meta")."""
    kinds = list(encoding["kinds"])
    return kinds, [len(encoding["values"][c]) for c, k in zip(encoding["columns"], kinds) if k == "cat"]
