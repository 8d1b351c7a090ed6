"""Model configs (`configs/models/<name>.yaml`) and building timm models from them.

`None` means "the model's own default" (timm's pretrained_cfg / resolve_data_config), as in timm.
A config may list `stages`: each stage overrides some keys for its own `epochs` (progressive
resizing, freeze -> unfreeze, AdamW -> SGD). Every key can be overridden from the command line.
"""

from __future__ import annotations

import difflib
import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from pipeline.core.config import StrictModel, competition_default, deep_merge, parse_overrides, read_yaml, validate
from pipeline.core.errors import ConfigError
from pipeline.nn.preprocess import check_files, check_name, describe


# The names of pipeline.nn.augment.PRESETS (checked there), known here without importing albumentations.
AUGMENT_PRESETS = ("none", "light", "medium", "heavy", "randaugment", "trivialaugment", "autoaugment", "augmix")


class ModelConfig(StrictModel):
    """One experiment: backbone, recipe, augmentation, TTA. Validated; unknown keys are errors."""

    # --- backbone ---
    backbone: str = Field(description="any timm model name, e.g. resnet18, efficientnet_b0, convnext_tiny")
    pretrained: bool | str = Field(
        False, description="false | true (timm hub, needs internet) | path to a local weights file (offline)"
    )
    img_size: int | list[int] | None = Field(
        None, description="input size: an int (square) or [height, width], each >= 8; null: the model's default"
    )
    resize: Literal["squash", "pad", "crop"] = Field(
        "squash", description="how an image reaches img_size: squash (resize, aspect ignored) | pad (longest side "
        "to fit, keeping the aspect, then centred zero padding) | crop (shortest side to cover, then a centre crop)"
    )
    read_scale: float | None = Field(
        1.5, gt=0, description="read images with the shorter side reduced to at most read_scale x the largest side "
        "of the largest img_size of all stages (never enlarged); null: full resolution"
    )
    in_chans: int = Field(3, description="1 reads images as grayscale, 3 as RGB")
    mean: list[float] | None = Field(None, description="normalisation mean; null: the model's default")
    std: list[float] | None = Field(None, description="normalisation std; null: the model's default")
    interpolation: Literal["nearest", "bilinear", "bicubic", "area"] | None = Field(
        None, description="resize interpolation; null: the model's default"
    )
    drop_rate: float | None = Field(None, ge=0, lt=1, description="dropout before the classifier")
    drop_path_rate: float | None = Field(None, ge=0, lt=1, description="stochastic depth")
    # --- pooling and head (fine-grained competitions) ---
    pool: Literal["avg", "max", "gem"] | None = Field(
        None, description="global pooling: avg | max | gem (generalised mean, p learned); null: the model's own"
    )
    gem_p: float = Field(3.0, ge=1, le=20, description="GeM's initial p (learned from there)")
    head: Literal["linear", "arcface"] = Field(
        "linear", description="linear | arcface (sub-center ArcFace: cosine logits; the margin acts in training only)"
    )
    arcface_scale: float = Field(30.0, gt=0, description="ArcFace: logits = scale x cos")
    arcface_margin: float = Field(0.3, ge=0, lt=1.5, description="ArcFace: additive angular margin (radians), training only")
    arcface_subcenters: int = Field(3, ge=1, le=10, description="ArcFace: centers per class (1: plain ArcFace)")

    # --- recipe ---
    epochs: int = Field(10, ge=0, description="epochs (when `stages` is empty)")
    batch_size: int = Field(64, ge=1)
    grad_accum: int = Field(1, ge=1, description="optimizer step every N batches")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm")
    optimizer: str = Field(
        "adamw", description="any timm optimizer (timm.optim.list_optimizers()): adamw, sgd, radam, lamb, adamp, "
        "adan, lookahead_adamw, ...; no weight decay on norm and bias parameters"
    )
    lr: float = Field(1e-3, gt=0, description="peak learning rate of the head")
    backbone_lr_mult: float = Field(1.0, gt=0, le=1, description="backbone lr = lr x this (lower for pretrained)")
    layer_decay: float | None = Field(
        None, gt=0, le=1, description="layer-wise lr decay (timm): each layer below the head gets lr x this more"
    )
    weight_decay: float = Field(0.01, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="momentum of the optimizers that have one (sgd)")
    sam: bool = Field(False, description="wrap the optimizer in SAM (sharpness-aware minimisation)")
    sam_rho: float = Field(0.05, gt=0)
    sched: Literal["cosine", "tanh", "poly", "step", "multistep", "plateau", "wsd", "constant"] = Field(
        "cosine", description="lr schedule after the warmup (timm.scheduler), stepped every optimizer step "
        "(plateau: every epoch, on the validation metric)"
    )
    warmup_epochs: float = Field(1.0, ge=0, description="linear warmup from lr / warmup steps to lr")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="cosine, tanh, poly and plateau end at lr x this")
    cycles: int = Field(1, ge=1, description="cosine/tanh/poly: restarts (cycles of equal length)")
    decay_epochs: float | None = Field(
        None, gt=0, description="step: decay the lr every this many epochs (null: timm's 90); wsd: length of the "
        "final decay in epochs, or below 1 a fraction of the schedule (null: 0.2)"
    )
    decay_milestones: list[float] = Field([30, 60], description="multistep: epochs at which the lr decays")
    decay_rate: float = Field(0.1, gt=0, description="step/multistep/plateau: lr factor per decay; poly: power")
    patience_epochs: int = Field(2, ge=0, description="plateau: epochs without a better metric before a decay")
    loss: Literal["auto", "ce", "focal", "bce", "mse", "huber", "l1"] = Field(
        "auto", description="auto: ce, bce for multilabel, mse for regression (whose losses are mse, huber, l1, "
        "on targets scaled by their training std)")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    focal_gamma: float = Field(2.0, ge=0)
    class_weights: Literal["balanced", "effective"] | list[float] | None = Field(
        None, description="per-class loss weights: 'balanced' (inverse frequency), 'effective' (class-balanced "
        "loss: (1 - cb_beta) / (1 - cb_beta^n) per class of n training rows) or a list, one per class"
    )
    cb_beta: float = Field(0.999, gt=0, lt=1, description="class_weights: effective's beta (0.9 .. 0.9999)")
    pos_weight: Literal["balanced"] | list[float] | None = Field(
        None, description="loss bce: weight of each label's positives, 'balanced' (negatives / positives per "
        "label in the fold's training rows) or a list, one per label"
    )
    ohem: float | None = Field(
        None, gt=0, le=1, description="online hard example mining: each batch's loss is the mean of its hardest "
        "fraction of per-sample losses (0.7: the hardest 70%); null: all"
    )
    train_fraction: float = Field(
        1.0, gt=0, le=1, description="quick runs: train on a stratified fraction of each fold's training rows "
        "(validation rows unchanged, so CV stays comparable)"
    )
    sampler: Literal["random", "balanced"] = Field("random", description="balanced: class-balanced sampling")
    mixup: float = Field(0.0, ge=0, description="mixup alpha (0: off)")
    cutmix: float = Field(0.0, ge=0, description="cutmix alpha (0: off)")
    mix_prob: float = Field(1.0, ge=0, le=1, description="probability to mix a batch")
    ema: float | None = Field(None, gt=0, lt=1, description="EMA decay of the weights, e.g. 0.999 (null: off)")
    amp: Literal["auto", "off", "bf16", "fp16"] = Field("auto", description="auto: bf16/fp16 on CUDA, off on CPU")
    channels_last: bool = False
    compile: bool = Field(False, description="torch.compile the model (CUDA)")
    freeze_backbone: bool = Field(False, description="train the head only")
    early_stopping: int | None = Field(None, ge=1, description="stop after N epochs without a better metric")
    tensorboard: bool = Field(False, description="also write the log.csv scalars as TensorBoard events to <run>/tb")
    log_every: int = Field(
        50, ge=1, description="read the running loss and the non-finite step count back from the device every N "
        "steps (progress bar, nan_policy); between reads the GPU never waits for the host"
    )
    seed: int = Field(42, ge=0, lt=2**32, description="seeds torch, numpy and python, and each epoch's order")

    # --- data ---
    augment: str | list[dict[str, Any]] = Field(
        "light", description="preset none|light|medium|heavy|randaugment|trivialaugment|autoaugment|augmix, or a "
        "list of {name: <albumentations class>, ...params} (compositions nest: {name: OneOf, transforms: [...]}), run on "
        "the image as read, before the resize to img_size"
    )
    augmix_jsd: float | None = Field(
        None, gt=0, description="with augment: augmix, AugMix's Jensen-Shannon consistency loss at this weight (the "
        "paper's lambda: 12): each training image becomes 3 views (clean, 2 AugMix draws) in one forward of 3 x the "
        "batch; loss = the loss on the clean view + augmix_jsd x JSD of the 3 softmaxes; single-label tasks; null: off"
    )
    meta_head: bool = Field(
        False, description="the model also takes each image's metadata (competition key meta_cols): an MLP on the "
        "coded columns (numbers standardised on the fold's training rows, a missing flag each; categories one-hot) "
        "joined to the pooled image features before the classifier; not with mixup or cutmix")
    preprocess: list[str] = Field(
        default_factory=list, description="domain preprocessing, in order, on each image as read (before "
        "augmentation; in training, validation, TTA, prediction and the Kaggle kernel alike): ben_graham | "
        "circle_crop | clahe | trim | path/to/file.py:function (relative to the model config's folder)"
    )
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="DataLoader worker processes; auto: 0 on CPU (workers would take the cores the "
        "model trains on), else the CPUs per GPU process, at most 8"
    )
    cache_images: bool | Literal["auto"] = Field(
        "auto", description="decode train/val images once into RAM; auto: when they fit in 4 GiB and 1/4 of free RAM"
    )
    cache_dir: str | None = Field(
        None, description="keep each image decoded and preprocessed (read size, preprocess) on disk in this folder "
        "(relative to where the pipeline runs), keyed by its path, mtime, read size and preprocess steps, so "
        "other folds, runs and predict skip the decode and the preprocessing; null: off"
    )
    bad_images: Literal["fail", "skip"] = Field(
        default_factory=lambda: competition_default("bad_images"),
        description="a corrupt image stops the run, or is skipped; default: the competition's bad_images (fail)")
    max_bad_images: int = Field(10, ge=0, description="with skip: fail past this many bad images")
    nan_policy: Literal["stop", "skip"] = Field("skip", description="a NaN/Inf loss stops the run, or skips the step")
    max_nan_steps: int = Field(20, ge=0, description="with skip: stop past this many skipped steps")

    # --- prediction (stage `predict`) ---
    tta: str | list[str] = Field(
        ["none"], description="TTA views (none, hflip, vflip, transpose, rot90, d4, scale:0.9, ...) or a preset name"
    )
    tta_merge: Literal["mean", "gmean", "logit_mean", "max"] = "mean"
    pseudo: str | None = Field(None, description="path to folds/pseudo.csv: pseudo-labelled test rows join training")
    distill: str | None = Field(
        None, description="teacher table (`make distill` writes folds/distill.parquet, the blend's OOF): each training "
        "row's target mixes its true label with the teacher's probabilities; trains runs/<model>-distilled/"
    )
    distill_alpha: float = Field(0.5, ge=0, le=1, description="distillation: the true label's weight in a target "
                                 "(the teacher's is 1 - it)")
    temperature: float = Field(2.0, gt=0, description="distillation: softens the teacher (p^(1/T) renormalised; "
                               "multilabel: sigmoid(logit/T))")
    search: dict[str, Any] = Field(
        default_factory=dict, description="`make tune`'s search space: key: [low, high] | [low, high, log] | "
        "[low, high, int] | [choice, choice, ...] | {choices: [...]}, e.g. {lr: [1e-4, 1e-2, log], augment: [light, heavy]}"
    )

    stages: list[dict[str, Any]] = Field(
        default_factory=list,
        description="training stages, each {epochs: N, <key>: <value> ...} overriding keys of this config",
    )

    @field_validator("augment")
    @classmethod
    def _augment(cls, v: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if isinstance(v, str) and v not in AUGMENT_PRESETS:
            raise ValueError(f"unknown preset {v!r}; valid presets: {', '.join(AUGMENT_PRESETS)} (or a list of "
                             "{name: <albumentations transform>, ...})")
        return v

    _config_dir: Path = PrivateAttr(default_factory=lambda: Path("configs/models"))

    @field_validator("preprocess")
    @classmethod
    def _preprocess(cls, v: list[str]) -> list[str]:
        return [check_name(step) for step in v]

    @field_validator("pos_weight")
    @classmethod
    def _pos_weight(cls, v: str | list[float] | None) -> str | list[float] | None:
        if isinstance(v, list) and not all(w > 0 for w in v):
            raise ValueError("each label's weight must be > 0 (or give balanced)")
        return v

    @field_validator("img_size")
    @classmethod
    def _img_size(cls, v: int | list[int] | None) -> int | list[int] | None:
        sides = [v] if isinstance(v, int) else v or []
        if (isinstance(v, list) and len(v) != 2) or any(side < 8 for side in sides):
            raise ValueError("must be an int or [height, width], each >= 8")
        return v

    @model_validator(mode="after")
    def _checks(self) -> "ModelConfig":
        if self.in_chans not in (1, 3):
            raise ValueError("in_chans must be 1 (grayscale) or 3 (RGB)")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) not in (1, self.in_chans):
                raise ValueError(f"{key} needs 1 or in_chans={self.in_chans} values, got {len(value)}")
        if self.sam and self.grad_accum > 1:
            raise ValueError("sam does not combine with grad_accum > 1")
        if self.augmix_jsd is not None and self.augment != "augmix":
            raise ValueError(f"key 'augmix_jsd': AugMix's consistency loss compares AugMix views, so it needs augment: "
                             f"augmix, not {self.augment if isinstance(self.augment, str) else 'a list'}; set augment: "
                             "augmix, or augmix_jsd: null")
        if self.augmix_jsd is not None and (self.mixup > 0 or self.cutmix > 0):
            raise ValueError("key 'augmix_jsd': does not combine with mixup or cutmix (each view would be mixed with "
                             "another partner, and the consistency target with it); set mixup: 0 and cutmix: 0")
        if self.meta_head and (self.mixup > 0 or self.cutmix > 0):
            raise ValueError("key 'meta_head': does not combine with mixup or cutmix (a mixed image has no one "
                             "metadata row); set mixup: 0 and cutmix: 0, or meta_head: false")
        return self


# Keys that change how a run is carried out but not what it learns: changing them neither retrains a
# finished fold nor refuses to resume one.
RESULT_NEUTRAL_KEYS = frozenset({"cache_images", "cache_dir", "tensorboard", "log_every", "search"})
# Keys added after runs were trained: at their defaults they leave a run's stamp as it was, so upgrading
# does not make finished folds stale (such a run reads images as it was trained: its data config has no
# read_side, and squash is what it did).
ADDED_KEYS = {"resize": "squash", "read_scale": 1.5, "pool": None, "gem_p": 3.0, "head": "linear",
              "arcface_scale": 30.0, "arcface_margin": 0.3, "arcface_subcenters": 3, "distill": None,
              "distill_alpha": 0.5, "temperature": 2.0, "cb_beta": 0.999, "pos_weight": None, "ohem": None,
              "train_fraction": 1.0, "preprocess": [], "augmix_jsd": None,
              "meta_head": False}


def stamp_exclusions(cfg: "ModelConfig") -> frozenset[str]:
    """The keys a run's config hash leaves out: result-neutral ones, and added keys at their defaults."""
    return RESULT_NEUTRAL_KEYS | {k for k, v in ADDED_KEYS.items() if getattr(cfg, k) == v}

# read_scale: one read size for all stages (data_config's read_side), so the image cache serves every stage
STAGE_KEYS_FORBIDDEN = {"backbone", "in_chans", "stages", "seed", "tta", "tta_merge", "pseudo", "pretrained",
                        "read_scale", "pool", "head", "arcface_subcenters", "search", "distill",
                         "train_fraction", "preprocess", "meta_head"}


def resolve_stages(cfg: ModelConfig, source: str) -> list[ModelConfig]:
    """One config per stage (the config itself when there are no stages); each is validated."""
    if not cfg.stages:
        return [cfg]
    out = []
    base = cfg.model_dump(exclude={"stages"})
    for i, stage in enumerate(cfg.stages):
        bad = sorted(set(stage) & STAGE_KEYS_FORBIDDEN)
        if bad:
            raise ConfigError(f"{source}: stages[{i}] may not change {bad}")
        if "epochs" not in stage:
            raise ConfigError(f"{source}: stages[{i}] needs its own 'epochs'")
        out.append(validate(ModelConfig, {**base, **stage}, f"{source} stages[{i}]"))
    return out


def load_model_config(path: str | Path, overrides: list[str] | None = None) -> ModelConfig:
    path = Path(path)
    if not path.is_file():
        models = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        raise ConfigError(f"{path}: model config not found; models in {path.parent}: {models}")
    data = deep_merge(read_yaml(path), parse_overrides(overrides, source=f"{path} (command-line override)"))
    source = f"{path}" + (" with overrides " + " ".join(overrides) if overrides else "")
    cfg = validate(ModelConfig, data, source)
    resolve_stages(cfg, source)  # stage errors surface at load time
    cfg._config_dir = path.parent  # custom preprocess files are relative to it
    check_files(cfg.preprocess, cfg._config_dir, source)
    return cfg


def model_config_path(models_dir: str | Path, name: str) -> Path:
    return Path(models_dir) / f"{name}.yaml"


def load_model(models_dir: str | Path, name: str, overrides: list[str] | None = None) -> tuple[ModelConfig, str]:
    """(config, its file name) of `<models_dir>/<name>.yaml` with `key=value` overrides."""
    path = model_config_path(models_dir, name)
    return load_model_config(path, overrides), str(path)


def model_names(models_dir: str | Path) -> list[str]:
    """Every model config in models_dir (its file stem), sorted."""
    return sorted(p.stem for p in Path(models_dir).glob("*.yaml"))


def check_backbone(name: str) -> None:
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else "; see timm.list_models()"
        raise ConfigError(f"key 'backbone': unknown timm model {name!r}{hint}")


def build_model(cfg: ModelConfig, num_classes: int, pretrained: bool | str | None = None, meta: dict | None = None):
    """A timm model for cfg; `pretrained` overrides cfg.pretrained (prediction builds without weights). `meta`:
    the exported metadata encoding (pipeline.core.meta) a `meta_head` model takes, as its checkpoint keeps it."""
    import timm

    check_backbone(cfg.backbone)
    pretrained = cfg.pretrained if pretrained is None else pretrained
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": cfg.in_chans}
    if cfg.drop_rate is not None:
        kwargs["drop_rate"] = cfg.drop_rate
    if cfg.drop_path_rate is not None:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    if isinstance(pretrained, str):
        model = load_weights_file(cfg.backbone, Path(pretrained), kwargs)
    elif pretrained:
        model = hub_model(cfg.backbone, kwargs)
    else:
        model = timm.create_model(cfg.backbone, pretrained=False, **kwargs)
    model = adapt_head(model, cfg)
    if cfg.meta_head:
        from pipeline.nn.metahead import meta_shape, set_meta_head

        if meta is None:
            raise ConfigError("key 'meta_head': a model with a metadata head is built with the metadata encoding "
                              "it was trained with (its checkpoint's 'meta')")
        set_meta_head(model, *meta_shape(meta))
    return model


def adapt_head(model, cfg: ModelConfig):
    """`pool` and `head`: swap the model's global pooling and classifier in place (pipeline.nn.heads)."""
    if cfg.pool is None and cfg.head == "linear":
        return model
    from pipeline.nn.heads import set_arcface, set_pool

    if cfg.pool is not None:
        set_pool(model, cfg.pool, cfg.gem_p)
    if cfg.head == "arcface":
        set_arcface(model, cfg.arcface_scale, cfg.arcface_subcenters)
    return model


# --- pretrained weights: stored once online (`make weights`), then read offline --------------------------

WEIGHTS_DIR = Path("weights")  # `make weights` stores timm's pretrained weights here, one file per backbone


def stored_weights(backbone: str) -> Path:
    """Where `make weights` keeps a backbone's pretrained weights: weights/<backbone>.safetensors."""
    return WEIGHTS_DIR / f"{backbone}.safetensors"


def hub_host() -> str:
    from urllib.parse import urlparse

    return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"


def hub_reachable(timeout: float = 2.0) -> bool:
    """One TCP connection to the model hub, at most `timeout` seconds (offline: a DNS failure, at once)."""
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    try:
        socket.create_connection((hub_host(), 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_cached(backbone: str) -> bool:
    """Whether timm's hub weights of this backbone are in the local Hugging Face cache already."""
    import timm

    cfg = timm.models.get_pretrained_cfg(backbone)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return False
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, name), str)
               for name in ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin"))


def offline_message(backbone: str) -> str:
    return (f"key 'pretrained': true needs {backbone}'s weights from the model hub ({hub_host()}), which cannot be "
            f"reached, and they are not stored in {stored_weights(backbone)}. While online, run `make weights` "
            f"(it stores every model config's pretrained weights there; `pretrained: true` then loads them offline), "
            f"or set `pretrained: path/to/weights.safetensors` (a local file), or `pretrained: false`")


def hub_model(backbone: str, kwargs: dict[str, Any]):
    """`pretrained: true`: the file `make weights` stored, else timm's hub when it can be reached (or the
    weights are cached), else a clear error in about a second instead of the hub's minute of retries."""
    import timm

    local = stored_weights(backbone)
    if local.is_file():
        return load_weights_file(backbone, local, kwargs)
    if not hub_cached(backbone) and not hub_reachable():
        raise ConfigError(offline_message(backbone))
    return timm.create_model(backbone, pretrained=True, **kwargs)


def store_weights(backbone: str, out: Path | None = None) -> Path:
    """Fetch timm's pretrained weights of `backbone` (online) into weights/<backbone>.safetensors, atomically."""
    import timm
    from safetensors.torch import save_file

    out = Path(out or stored_weights(backbone))
    if not hub_cached(backbone) and not hub_reachable():
        raise ConfigError(offline_message(backbone).replace("key 'pretrained': true needs", "make weights: needs"))
    model = timm.create_model(backbone, pretrained=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(state, str(tmp), metadata={"backbone": backbone, "source": "timm pretrained (make weights)"})
    os.replace(tmp, out)
    return out


TARGET_MEAN, TARGET_STD = "target_mean", "target_std"


def _rescale(module, inputs, output):
    return output * module.target_std + module.target_mean


def attach_target_scale(model, mean, std):
    """Regression: the model outputs values in the target's units, `head x std + mean`, per target. The scale
    is a pair of buffers, so it travels in every state dict (checkpoints, EMA, packaged weights)."""
    import torch

    model.register_buffer(TARGET_MEAN, torch.as_tensor(mean, dtype=torch.float32).reshape(-1).clone())
    model.register_buffer(TARGET_STD, torch.as_tensor(std, dtype=torch.float32).reshape(-1).clone())
    model.register_forward_hook(_rescale)
    return model


def load_weights_file(backbone: str, weights: Path, kwargs: dict[str, Any]):
    """timm's model with the weights of a local file (timm adapts the stem to in_chans and drops a classifier
    of another size), checked: the file must load, and every backbone parameter must come from it. Only the
    classifier head may differ (the usual fine-tuning case); otherwise the run would train from random init."""
    import timm
    import torch

    if not weights.is_file():
        raise ConfigError(f"key 'pretrained': weights file {weights} not found")
    rng = torch.get_rng_state()
    torch.manual_seed(rng.sum().item() + 1)
    other = dict(timm.create_model(backbone, pretrained=False, **kwargs).named_parameters())  # another random init
    torch.set_rng_state(rng)
    same = dict(timm.create_model(backbone, pretrained=False, **kwargs).named_parameters())  # the model's own init
    torch.set_rng_state(rng)
    try:
        model = timm.create_model(backbone, pretrained=True, pretrained_cfg_overlay={"file": str(weights.resolve())},
                                  **kwargs)
    except Exception as e:  # noqa: BLE001 - torch, safetensors and timm each raise their own kinds on a bad file
        detail = " ".join(str(e).split())[:300] or type(e).__name__
        raise ConfigError(f"key 'pretrained': {weights} cannot be loaded into {backbone} ({type(e).__name__}: "
                          f"{detail}); it must be a safetensors file or a torch state dict of this backbone") from None
    head = head_parameter_names(model)
    random = [n for n in same if n not in head and not torch.equal(same[n], other[n])]  # judged: randomly initialised
    untouched = [n for n, p in model.named_parameters() if n in random and torch.equal(p, same[n])]
    if untouched:
        raise ConfigError(
            f"key 'pretrained': {weights} does not fit backbone {backbone}: {len(untouched)} of {len(random)} "
            f"randomly initialised backbone weights were not in it ({', '.join(untouched[:4])}"
            f"{' ...' if len(untouched) > 4 else ''}); only the classifier head may differ. Is it the weights "
            "file of another model?")
    return model


_INTERP = {"nearest": 0, "bilinear": 1, "bicubic": 2, "area": 3}


def data_config(cfg: ModelConfig, model, whole: ModelConfig | None = None) -> dict[str, Any]:
    """img_size ([height, width]), resize, mean, std and interpolation: the config's values, else the model's
    own defaults; read_side: images are read with the shorter side reduced to at most this (None: full
    resolution), ceil(read_scale x the largest side of the largest img_size of `whole`'s stages). `whole` is
    the config a stage's config came from (resolve_stages drops `stages`); default cfg itself. preprocess (only
    when `whole` sets it): its steps as pipeline.nn.preprocess.describe carries them (custom files' source)."""
    import math

    from timm.data import resolve_data_config

    default = resolve_data_config({}, model=model)
    default_hw = [int(side) for side in default["input_size"][-2:]]
    mean = list(cfg.mean or default["mean"])
    std = list(cfg.std or default["std"])
    if cfg.in_chans == 1:  # one channel: average the model's RGB statistics
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    interpolation = cfg.interpolation or default.get("interpolation", "bilinear")
    whole = whole or cfg
    sizes = [whole.img_size] + [stage.get("img_size", whole.img_size) for stage in whole.stages]
    largest = max(max(_hw(size, default_hw)) for size in sizes + [cfg.img_size])
    out = {
        "img_size": _hw(cfg.img_size, default_hw),
        "resize": cfg.resize,
        "mean": mean,
        "std": std,
        "interpolation": _INTERP.get(interpolation, 1),
        "read_side": None if whole.read_scale is None else math.ceil(whole.read_scale * largest),
    }
    if whole.preprocess:  # only when set: other runs' data configs stay as they were
        out["preprocess"] = describe(whole.preprocess, whole._config_dir)
    return out


def eval_data_config(cfg: ModelConfig, model, source: str = "config") -> dict[str, Any]:
    """The data config every evaluation reads images with: validation, OOF, predict, TTA, the report and the
    Kaggle kernel (all of them through best.pt's `data_config`, which training writes from this). It is the
    last stage's, the size and geometry the model finished training at (the config itself without stages);
    read_side is the one of all stages, so the image cache serves it."""
    return data_config(resolve_stages(cfg, source)[-1], model, whole=cfg)


def _hw(img_size: int | list[int] | None, default_hw: list[int]) -> list[int]:
    """[height, width] of an img_size (an int: square; null: the model's default)."""
    if img_size is None:
        return list(default_hw)
    return [img_size, img_size] if isinstance(img_size, int) else [int(side) for side in img_size]


def head_parameter_names(model) -> set[str]:
    """Names of the classifier's parameters (timm's get_classifier), and of the metadata MLP's (meta_head):
    both start random and train at the head's lr."""
    ids = {id(p) for p in model.get_classifier().parameters()}
    ids |= {id(p) for p in model.meta_mlp.parameters()} if hasattr(model, "meta_mlp") else set()
    return {n for n, p in model.named_parameters() if id(p) in ids}


def store_pretrained(models_dir: str | Path, names: list[str], force: bool = False) -> None:
    """`make weights`: timm's pretrained weights of every named config with `pretrained: true`, stored once
    under weights/ (online); later runs load them offline."""
    backbones: dict[str, list[str]] = {}
    for name in names:
        cfg = load_model(models_dir, name)[0]
        if cfg.pretrained is True:
            backbones.setdefault(cfg.backbone, []).append(name)
    if not backbones:
        print(f"weights: no model config in {models_dir} has `pretrained: true`; nothing to fetch")
        return
    for backbone, users in backbones.items():
        if stored_weights(backbone).is_file() and not force:
            print(f"{stored_weights(backbone)}: already stored ({', '.join(users)}); --force fetches it again")
            continue
        path = store_weights(backbone)
        print(f"{path}: stored for {', '.join(users)}; `pretrained: true` now loads it offline "
              f"(or write `pretrained: {path}`)")


def describe_models(pattern: str, pretrained_only: bool = False) -> tuple[list[str], str]:
    """`make models`: (one line per timm model matching `pattern` with its pretrained tags, a summary);
    no network."""
    import timm

    tagged = timm.list_models(pattern, pretrained=True)
    bare = [] if pretrained_only else sorted(set(timm.list_models(pattern)) - {t.split(".")[0] for t in tagged})
    by_name: dict[str, list[str]] = {}
    for name in tagged:
        base, _, tag = name.partition(".")
        by_name.setdefault(base, []).append(tag)
    if not by_name and not bare:
        raise ConfigError(f"no timm model matches {pattern!r} (patterns are fnmatch-style: 'convnext*', '*vit*')")
    lines = [f"{base}: {' '.join(f'{base}.{t}' for t in by_name[base])}" for base in sorted(by_name)]
    lines += [f"{base}: (no pretrained weights)" for base in bare]
    summary = (f"{len(by_name)} model(s) with pretrained weights" + (f", {len(bare)} without" if bare else "")
               + "; use a tagged name as `backbone:` for those weights (the bare name takes timm's default tag)")
    return lines, summary
