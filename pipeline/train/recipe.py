"""The training recipe's pieces, each built by one small function from a (stage's) model config.

- `make_loss`: cross-entropy, focal or BCE on soft targets (n, C), with label smoothing, class weights
  (balanced, effective number of samples, or listed), BCE's positive weights and OHEM; mse, huber or l1 for
  regression, in units of the targets' std. `check_recipe` refuses what does not fit the task up front.
- `make_optimizer`: any timm optimizer (`timm.optim.create_optimizer_v2`) over our parameter groups: the
  head at `lr`, the backbone at `lr x backbone_lr_mult`, optional layer-wise lr decay, and no weight decay
  on norm, bias and the model's own no-decay parameters. `sam: true` wraps it in `SAM`.
- `make_scheduler`: warmup, then a timm schedule (`timm.scheduler.create_scheduler_v2`) stepped per
  optimizer step (plateau: per epoch, on the validation metric).
- `make_mixer`: timm's `Mixup` (mixup and/or CutMix) on dense targets, through its public call.
- `JsdLoss`: AugMix's loss (`augmix_jsd`) on a batch of 3 views: the loss on the clean view + lambda x `jsd`.
- `StepGuard`: optimizer steps that never let a non-finite loss or gradient reach the weights, and
  count such steps on the device, so a GPU never waits on the host between steps.
"""

from __future__ import annotations

import difflib
import math

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.errors import ConfigError
from pipeline.nn.models import ModelConfig, head_parameter_names


REGRESSION_LOSSES = {"mse": F.mse_loss, "huber": F.huber_loss, "l1": F.l1_loss}
AUTO_LOSS = {"multilabel": "bce", "regression": "mse"}  # other tasks: ce


def loss_kind(cfg: ModelConfig, task: str) -> str:
    """The loss a (stage's) config trains with on `task`; ConfigError when it does not fit the task."""
    kind = cfg.loss if cfg.loss != "auto" else AUTO_LOSS.get(task, "ce")
    fits = {"multilabel": ("bce",), "regression": tuple(REGRESSION_LOSSES)}.get(task, ("ce", "focal", "bce"))
    if kind not in fits:
        raise ConfigError(f"key 'loss': {kind} does not fit task {task}; use {', '.join(fits)} or auto")
    if cfg.head == "arcface" and (task not in ("binary", "multiclass") or kind not in ("ce", "focal")):
        raise ConfigError(f"key 'head': arcface needs a single-label task (binary, multiclass) with loss ce or focal, "
                          f"not task {task} with loss {kind}; use head: linear")
    return kind


def check_weights(cfg: ModelConfig, task: str, classes: list[str]) -> None:
    """class_weights and pos_weight fit the task, the loss and the number of classes (labels)."""
    if task == "regression" and (cfg.class_weights is not None or cfg.sampler == "balanced"):
        raise ConfigError("keys 'class_weights' and 'sampler: balanced' need classes; task regression has none")
    if task == "multilabel" and cfg.sampler == "balanced":
        raise ConfigError("key 'sampler': balanced sampling needs single-label classes")
    if isinstance(cfg.class_weights, list) and len(cfg.class_weights) != len(classes):
        raise ConfigError(f"key 'class_weights': {len(cfg.class_weights)} values for {len(classes)} classes "
                          f"({', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}); give one per class, "
                          "in that order, or balanced | effective")
    if cfg.pos_weight is None:
        return
    kind = loss_kind(cfg, task)
    if kind != "bce":
        raise ConfigError(f"key 'pos_weight': weights the positives of loss bce, and this config's loss is {kind} "
                          f"(task {task}); set loss: bce, or use class_weights")
    if isinstance(cfg.pos_weight, list) and len(cfg.pos_weight) != len(classes):
        raise ConfigError(f"key 'pos_weight': {len(cfg.pos_weight)} values for {len(classes)} labels "
                          f"({', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}); give one per label, "
                          "in that order, or balanced")


def check_recipe(stages: list[ModelConfig], task: str, classes: list[str], source: str) -> None:
    """Every stage's loss and weights fit the task, before anything is built; errors name the file and stage."""
    for i, scfg in enumerate(stages):
        try:
            loss_kind(scfg, task)
            check_weights(scfg, task, classes)
            check_jsd(scfg, task)
        except ConfigError as e:
            raise ConfigError(f"{source}{f' stages[{i}]' if len(stages) > 1 else ''}: {e}") from None


def hardest(per_sample: torch.Tensor, fraction: float | None) -> torch.Tensor:
    """The mean of the hardest `fraction` of the per-sample losses (OHEM; at least one); all of them for None.
    A non-finite loss counts as the hardest, so the step guard still sees it."""
    if fraction is None or fraction >= 1:
        return per_sample.mean()
    k = max(1, math.ceil(fraction * per_sample.numel()))
    key = torch.nan_to_num(per_sample.detach(), nan=float("inf"))
    return per_sample[key.topk(k).indices].mean()


def make_loss(cfg: ModelConfig, task: str, class_weight: torch.Tensor | None, target_std: torch.Tensor | None = None,
              pos_weight: torch.Tensor | None = None):
    """A loss on logits and soft targets (n, C); label smoothing, class weights, BCE's positive weights and
    OHEM (`ohem`: the hardest fraction of each batch's samples) applied here. Regression: mse, huber or l1
    of (prediction - target) / target_std, the targets' training std per column."""
    kind, ohem = loss_kind(cfg, task), cfg.ohem
    if task == "regression":
        scale = target_std if target_std is not None else 1.0
        fn = REGRESSION_LOSSES[kind]
        if ohem is None:
            return lambda pred, target: fn(pred.float() / scale, target / scale)
        return lambda pred, target: hardest(fn(pred.float() / scale, target / scale, reduction="none").mean(dim=1),
                                            ohem)
    smoothing, gamma = cfg.label_smoothing, cfg.focal_gamma
    arcface = cfg.head == "arcface"

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, n_classes = logits.float(), logits.shape[1]
        if arcface:  # the angular margin, in training only: the model's own logits stay plain cosines
            from pipeline.nn.heads import arc_margin

            logits = arc_margin(logits, target, cfg.arcface_scale, cfg.arcface_margin)
        if kind == "bce":
            target = target * (1 - smoothing) + smoothing / 2
            loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=pos_weight)
        else:
            target = target * (1 - smoothing) + smoothing / n_classes
            logp = F.log_softmax(logits, dim=1)
            loss = -target * logp
            if kind == "focal":
                loss = loss * (1 - logp.exp()).pow(gamma)
        if class_weight is not None:
            loss = loss * class_weight
        return loss.sum(dim=1).mean() if ohem is None else hardest(loss.sum(dim=1), ohem)

    return loss_fn


def class_weight_tensor(cfg: ModelConfig, counts: np.ndarray, dev: torch.device) -> torch.Tensor | None:
    """Per-class loss weights from `class_weights`: inverse frequency ('balanced'), the class-balanced loss's
    inverse effective number of samples ('effective', (1 - beta) / (1 - beta^n), scaled to average 1), or the
    listed values."""
    if cfg.class_weights == "balanced":
        weights = counts.sum() / (len(counts) * np.maximum(counts, 1))
    elif cfg.class_weights == "effective":
        n = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
        weights = (1.0 - cfg.cb_beta) / (1.0 - np.power(cfg.cb_beta, n))
        weights = weights * len(weights) / weights.sum()
    elif isinstance(cfg.class_weights, list):
        if len(cfg.class_weights) != len(counts):
            raise ConfigError(f"key 'class_weights': {len(cfg.class_weights)} values for {len(counts)} classes")
        weights = cfg.class_weights
    else:
        return None
    return torch.tensor(weights, dtype=torch.float32, device=dev)


def pos_weight_tensor(cfg: ModelConfig, targets: np.ndarray, dev: torch.device) -> torch.Tensor | None:
    """BCE's weight of each label's positives from `pos_weight`: negatives / positives per label of the
    training targets ('balanced'; a label without positives gets 1) or the listed values."""
    if cfg.pos_weight is None:
        return None
    if cfg.pos_weight == "balanced":
        pos = targets.astype(np.float64).sum(axis=0)
        neg = len(targets) - pos
        weights = np.where(pos > 0, neg / np.maximum(pos, 1e-12), 1.0)
    else:
        if len(cfg.pos_weight) != targets.shape[1]:
            raise ConfigError(f"key 'pos_weight': {len(cfg.pos_weight)} values for {targets.shape[1]} labels")
        weights = cfg.pos_weight
    return torch.tensor(weights, dtype=torch.float32, device=dev)


# --- optimizer ---------------------------------------------------------------------------------------


class SAM:
    """Sharpness-aware minimisation around a base optimizer: perturb towards the gradient, compute the
    gradient there, restore the weights; the base optimizer then steps (through the StepGuard).

    A non-finite gradient gives no perturbation (without asking the device), so it cannot reach the weights.
    """

    def __init__(self, base: torch.optim.Optimizer, rho: float):
        self.base, self.rho = base, rho
        self.param_groups = base.param_groups
        self._eps: dict = {}

    @torch.no_grad()
    def perturb(self) -> None:
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2)
        scale = torch.where(torch.isfinite(norm), self.rho / (norm + 1e-12), torch.zeros_like(norm))
        for p in params:
            e = torch.nan_to_num(p.grad * scale, nan=0.0, posinf=0.0, neginf=0.0)
            p.add_(e)
            self._eps[p] = e

    @torch.no_grad()
    def restore(self) -> None:
        for p, e in self._eps.items():
            p.sub_(e)
        self._eps = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state)


def layer_scales(model: torch.nn.Module, layer_decay: float | None) -> dict[int, float]:
    """lr scale per parameter (by id) for layer-wise lr decay, from timm's layer grouping; {} when off."""
    if layer_decay is None:
        return {}
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(model, weight_decay=0.0, layer_decay=layer_decay)
    return {id(p): g["lr_scale"] for g in groups for p in g["params"]}


def param_groups(cfg: ModelConfig, model: torch.nn.Module) -> list[dict]:
    """Trainable parameters grouped by lr scale and weight decay. The head runs at lr, the backbone at
    lr x backbone_lr_mult (x the layer-decay scale); norm, bias and the model's no-decay parameters get
    no weight decay. `freeze_backbone` leaves only the head trainable."""
    head = head_parameter_names(model)
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    scales = layer_scales(model, cfg.layer_decay)
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        p.requires_grad_(not cfg.freeze_backbone or name in head)
        if not p.requires_grad:
            continue
        scale = (1.0 if name in head else cfg.backbone_lr_mult) * scales.get(id(p), 1.0)
        no_decay = p.ndim <= 1 or name.endswith(".bias") or name in skip
        groups.setdefault((scale, no_decay), []).append(p)
    if not groups:
        raise ConfigError("no trainable parameters (freeze_backbone on a model without a classifier?)")
    return [{"params": ps, "lr_scale": scale, "weight_decay": 0.0 if no_decay else cfg.weight_decay}
            for (scale, no_decay), ps in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1]))]


def check_optimizer(name: str) -> str:
    """The timm optimizer name in lower case ('lookahead_' may prefix any); ConfigError with close matches."""
    from timm.optim import list_optimizers

    known = list_optimizers()
    name = name.lower()
    if name.removeprefix("lookahead_") not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else "; see timm.optim.list_optimizers()"
        raise ConfigError(f"key 'optimizer': unknown timm optimizer {name!r}{hint}")
    return name


def make_optimizer(cfg: ModelConfig, model: torch.nn.Module, dev: torch.device | None = None):
    """The config's timm optimizer over `param_groups`; wrapped in SAM when `sam` is on.

    On CUDA, torch's own Adam, AdamW and SGD run fused: their step then skips a non-finite gradient on
    the device (the StepGuard's found-inf flag), with no host sync."""
    from timm.optim import create_optimizer_v2, get_optimizer_class

    name = check_optimizer(cfg.optimizer)
    kwargs = {}
    if dev is not None and dev.type == "cuda" and get_optimizer_class(name.removeprefix("lookahead_")) in (
            torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):
        kwargs["fused"] = True
    opt = create_optimizer_v2(param_groups(cfg, model), opt=name, lr=cfg.lr, weight_decay=cfg.weight_decay,
                              momentum=cfg.momentum, **kwargs)
    return SAM(opt, cfg.sam_rho) if cfg.sam else opt


def base_optimizer(opt) -> torch.optim.Optimizer:
    return opt.base if isinstance(opt, SAM) else opt


# --- schedule ----------------------------------------------------------------------------------------


def make_scheduler(cfg: ModelConfig, opt, steps_per_epoch: int, metric_mode: str):
    """Linear warmup over `warmup_epochs`, then the config's timm schedule over the stage's remaining steps,
    in optimizer steps (plateau: in epochs, fed the validation metric; `metric_mode` is 'max' or 'min')."""
    import warnings

    from timm.scheduler import create_scheduler_v2

    per_epoch = cfg.sched == "plateau"
    unit = 1 if per_epoch else steps_per_epoch  # schedule time units per epoch
    total = max(1, cfg.epochs * unit)
    warmup = min(int(round(cfg.warmup_epochs * unit)), total - 1)
    length = max(1, total - warmup)
    decay = cfg.decay_epochs if cfg.decay_epochs is not None else (0.2 if cfg.sched == "wsd" else 90)
    decay = decay if cfg.sched == "wsd" and decay < 1 else decay * unit  # wsd: below 1 is a fraction
    with warnings.catch_warnings():  # timm deprecates plateau; scheduler_state saves what it would lose
        warnings.simplefilter("ignore", FutureWarning)
        sched, _ = create_scheduler_v2(
            base_optimizer(opt), sched=cfg.sched, num_epochs=max(1, length // cfg.cycles),
            warmup_epochs=warmup, warmup_lr=cfg.lr / max(warmup, 1), warmup_prefix=True,
            min_lr=cfg.lr * cfg.min_lr_ratio, decay_epochs=decay,
            decay_milestones=[int(round(m * unit)) for m in cfg.decay_milestones], decay_rate=cfg.decay_rate,
            patience_epochs=cfg.patience_epochs, cycle_limit=cfg.cycles, cycle_decay=1.0,
            plateau_mode=metric_mode, step_on_epochs=per_epoch, updates_per_epoch=0 if per_epoch else 1,
        )
    return sched


def scheduler_state(sched) -> dict:
    """Everything a resumed run needs to continue the schedule exactly (plateau: its inner torch state
    too, which timm's own state_dict leaves out)."""
    state = {"timm": sched.state_dict()}
    inner = getattr(sched, "lr_scheduler", None)
    if inner is not None:
        state["torch"] = inner.state_dict()
    return state


def load_scheduler_state(sched, state: dict) -> None:
    sched.load_state_dict(state["timm"])
    if "torch" in state:
        sched.lr_scheduler.load_state_dict(state["torch"])


def set_head_lr(opt, lr: float) -> None:
    """Every group at lr x its lr_scale (the head at lr), as the schedulers set it."""
    for g in base_optimizer(opt).param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def current_lr(opt) -> float:
    return max(g["lr"] for g in base_optimizer(opt).param_groups)


# --- mixing ------------------------------------------------------------------------------------------


def make_mixer(cfg: ModelConfig, n_classes: int):
    """timm's Mixup for `mixup`/`cutmix` alphas (None when both are 0). It mixes dense targets (one-hot,
    multi-hot or soft) as they are: label smoothing stays with the loss. Called as `x, y = mixer(x, y)`
    on an even batch (the loop drops the last image of an odd one)."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob, label_smoothing=0.0,
                 num_classes=n_classes, multi_label=True)


# --- AugMix's consistency loss -------------------------------------------------------------------------

JSD_VIEWS = 3  # AugMix's clean view and its two augmented draws (pipeline.nn.augment.AugMixViews)


def check_jsd(cfg: ModelConfig, task: str) -> None:
    """`augmix_jsd` compares softmax distributions: a single-label task's (binary, multiclass, ordinal: their
    predictions are softmaxes, whatever the loss); refused for multilabel and regression."""
    if cfg.augmix_jsd is not None and task not in ("binary", "multiclass", "ordinal"):
        raise ConfigError(f"key 'augmix_jsd': AugMix's Jensen-Shannon loss compares the softmax distributions of a "
                          f"single-label task (binary, multiclass, ordinal); task {task} has "
                          + ("independent sigmoids" if task == "multilabel" else "no class distribution")
                          + "; set augmix_jsd: null (augment: augmix alone still applies)")


def jsd(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample Jensen-Shannon divergence of V views' softmaxes, logits (V, n, C) -> (n,): the mean over the
    views of KL(p_v || M), M the mean of the V softmaxes with its log taken clamped at 1e-7 (AugMix; timm's
    JsdCrossEntropy). Computed in float32."""
    p = F.softmax(logits.float(), dim=-1)
    log_m = p.mean(dim=0).clamp(1e-7, 1.0).log()
    return F.kl_div(log_m.expand_as(p), p, reduction="none").sum(dim=-1).mean(dim=0)


class JsdLoss:
    """AugMix's loss on logits (3n, C) of the views one after another (clean, draw 1, draw 2; one forward, so
    BatchNorm sees all three) and the n targets: `loss_fn` (make_loss: label smoothing, class weights, OHEM,
    soft targets, ArcFace's margin) on the clean view + `weight` x the batch mean of `jsd` over the 3 views.
    `last` keeps the last batch's JSD (unweighted, on the device) for the log."""

    def __init__(self, loss_fn, weight: float):
        self.loss_fn, self.weight = loss_fn, weight
        self.last = torch.zeros(())

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n = target.shape[0]
        if logits.shape[0] != JSD_VIEWS * n:
            raise ValueError(f"augmix_jsd: {logits.shape[0]} logits for {n} targets; expected {JSD_VIEWS} views each")
        views = logits.reshape(JSD_VIEWS, n, *logits.shape[1:])
        term = jsd(views).mean()
        self.last = term.detach()
        return self.loss_fn(views[0], target) + self.weight * term


# --- steps ---------------------------------------------------------------------------------------------


class StepGuard:
    """Backward passes and optimizer steps through a GradScaler that skips any step whose gradients are not
    finite, counting non-finite losses on the device.

    With fp16 it is the usual dynamic loss scaler; otherwise its scale stays 1 (exact). A forward pass in
    training mode also moves the BatchNorm running statistics, so `watch` keeps them before it and
    `settle` puts them back after a non-finite loss. Nothing here reads a value back to the host: fused
    optimizers skip a bad step on the device, and the count is read when the training loop logs
    (`log_every` steps and at the end of an epoch).
    """

    def __init__(self, dev: torch.device, fp16: bool):
        self.scaler = torch.amp.GradScaler(dev.type, init_scale=2.0**16 if fp16 else 1.0,
                                           growth_interval=2000 if fp16 else 2**30)
        self.nonfinite = torch.zeros((), dtype=torch.long, device=dev)
        self._kept: list[tuple[torch.Tensor, torch.Tensor]] = []

    def watch(self, model: torch.nn.Module) -> None:
        """Before a forward pass: keep the model's buffers (BatchNorm running statistics and counters)."""
        self._kept = [(b, b.detach().clone()) for b in model.buffers()]

    def count(self, loss: torch.Tensor) -> torch.Tensor:
        """1 when `loss` is not finite (a device tensor; nothing is synchronised)."""
        self._bad = ~torch.isfinite(loss.detach())
        self.nonfinite += self._bad
        return self._bad

    def settle(self) -> None:
        """After the backward pass(es) of a counted loss: put back the buffers kept by `watch` when it was
        not finite, so a bad batch leaves no trace in the running statistics either."""
        with torch.no_grad():
            for buffer, kept in self._kept:
                buffer.copy_(torch.where(self._bad, kept, buffer))
        self._kept = []

    def backward(self, loss: torch.Tensor, accum: int = 1) -> None:
        self.scaler.scale(loss / accum).backward()

    def step(self, opt, params, grad_clip: float | None) -> None:
        base = base_optimizer(opt)
        if grad_clip:
            self.scaler.unscale_(base)
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        self.scaler.step(base)
        self.scaler.update()
        base.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.scaler.load_state_dict(state)
