"""`train`: one model on one fold -> runs/<model>/fold<k>/.

The run folder holds config.yaml (the resolved config), log.csv, last.pt and best.pt (full state,
written atomically), oof.csv (this fold's validation predictions) and done.json, written last, with
the config and folds hashes. A finished fold with the same hashes is skipped; a killed one resumes
from last.pt and ends with the same weights as an unbroken run (CPU, same seed).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from pipeline.augment import build_transform, eval_transform
from pipeline.config import Competition, ConfigError, config_hash
from pipeline.data import DataError, class_names, encode_targets, read_sample, read_train
from pipeline.folds import read_folds
from pipeline.infer import amp_dtype, autocast, device, predict_logits, to_proba
from pipeline.io import atomic_path, file_md5, write_csv, write_json, write_text
from pipeline.loader import EpochSampler, ImageDataset, make_loader, maybe_cache, resolve_workers
from pipeline.metrics import GREATER_IS_BETTER, is_better, score
from pipeline.models import (
    RESULT_NEUTRAL_KEYS,
    ModelConfig,
    build_model,
    data_config,
    head_parameter_names,
    resolve_stages,
)
from pipeline.tables import write_table


class TrainingError(Exception):
    """A run that had to stop; the last checkpoint is intact and a rerun resumes from it."""


# --- the fold's data ------------------------------------------------------------------------------


@dataclass
class FoldData:
    classes: list[str]
    train_paths: list[Path]
    train_targets: np.ndarray  # (n, C) float32: one-hot, multi-hot, or soft pseudo-labels
    val_ids: list[str]
    val_paths: list[Path]
    val_y: np.ndarray  # class index (n,) or multi-hot (n, C)


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=np.float32)[y]


def read_pseudo(path: str | Path, comp: Competition, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """folds/pseudo.csv: id + one probability column per class (soft), or id + target column (hard)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"key 'pseudo': {path} not found (make pseudo writes folds/pseudo.csv)")
    df = pd.read_csv(path, dtype={comp.id_col: str})
    if df.empty:
        raise DataError(f"{path}: holds no pseudo-labelled rows")
    if all(c in df.columns for c in classes):
        targets = df[classes].to_numpy(dtype=np.float32)
    elif comp.task != "multilabel" and comp.target in df.columns:
        index = {c: i for i, c in enumerate(classes)}
        labels = df[comp.target].astype(str)
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise DataError(f"{path}: unknown class(es) {unknown}")
        targets = one_hot(labels.map(index).to_numpy(), len(classes))
    else:
        raise DataError(f"{path}: needs columns {[comp.id_col, *classes]} or {[comp.id_col, comp.target]}")
    test_ids = set(read_sample(comp)[comp.id_col])
    stray = sorted(set(df[comp.id_col]) - test_ids)
    if stray:
        raise DataError(f"{path}: {len(stray)} id(s) are not test rows of {comp.sample_submission_path}: {stray[:5]}")
    return df[comp.id_col].tolist(), targets


def fold_data(comp: Competition, folds: pd.DataFrame, fold: int, pseudo: str | None) -> FoldData:
    train = read_train(comp)
    classes = class_names(comp, train)
    ids = train[comp.id_col]
    if set(folds[comp.id_col]) != set(ids):
        raise DataError("folds/folds.csv does not match train.csv (ids differ): run `make folds` again")
    if fold not in set(folds["fold"]):
        raise ConfigError(f"fold {fold} not in folds.csv (folds: {sorted(folds['fold'].unique())})")
    fold_of = folds.set_index(comp.id_col)["fold"].loc[ids].to_numpy()
    y = encode_targets(comp, train, classes)
    targets = y if comp.task == "multilabel" else one_hot(y, len(classes))
    tr, va = fold_of != fold, fold_of == fold
    train_paths = [comp.image_path("train", i) for i in ids[tr]]
    train_targets = targets[tr]
    if pseudo:
        p_ids, p_targets = read_pseudo(pseudo, comp, classes)
        train_paths += [comp.image_path("test", i) for i in p_ids]
        train_targets = np.concatenate([train_targets, p_targets])
    return FoldData(
        classes=classes,
        train_paths=train_paths,
        train_targets=train_targets.astype(np.float32),
        val_ids=ids[va].tolist(),
        val_paths=[comp.image_path("train", i) for i in ids[va]],
        val_y=y[va],
    )


# --- loss, optimizer, schedule --------------------------------------------------------------------


def make_loss(cfg: ModelConfig, task: str, class_weight: torch.Tensor | None):
    """A loss on logits and soft targets (n, C); label smoothing and class weights applied here."""
    kind = cfg.loss if cfg.loss != "auto" else ("bce" if task == "multilabel" else "ce")
    if kind != "bce" and task == "multilabel":
        raise ConfigError(f"key 'loss': {kind} does not fit task multilabel; use bce or auto")
    smoothing, gamma = cfg.label_smoothing, cfg.focal_gamma

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, n_classes = logits.float(), logits.shape[1]
        if kind == "bce":
            target = target * (1 - smoothing) + smoothing / 2
            loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        else:
            target = target * (1 - smoothing) + smoothing / n_classes
            logp = F.log_softmax(logits, dim=1)
            loss = -target * logp
            if kind == "focal":
                loss = loss * (1 - logp.exp()).pow(gamma)
        if class_weight is not None:
            loss = loss * class_weight
        return loss.sum(dim=1).mean()

    return loss_fn


class SAM:
    """Sharpness-aware minimisation around a base optimizer: perturb, re-evaluate, restore, step."""

    def __init__(self, base: torch.optim.Optimizer, rho: float):
        self.base, self.rho = base, rho
        self.param_groups = base.param_groups
        self._eps: dict = {}

    @torch.no_grad()
    def first_step(self) -> None:
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2)
        for p in params:
            e = p.grad * (self.rho / (norm + 1e-12))
            p.add_(e)
            self._eps[p] = e

    @torch.no_grad()
    def second_step(self) -> None:
        for p, e in self._eps.items():
            p.sub_(e)
        self._eps = {}
        self.base.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state)


def make_optimizer(cfg: ModelConfig, model: torch.nn.Module):
    """Param groups: head at lr, backbone at lr x backbone_lr_mult; no weight decay on biases and norms."""
    head = head_parameter_names(model)
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        p.requires_grad_(not cfg.freeze_backbone or name in head)
        if p.requires_grad:
            groups.setdefault((name in head, p.ndim <= 1), []).append(p)
    if not groups:
        raise ConfigError("no trainable parameters (freeze_backbone on a model without a classifier?)")
    param_groups = [
        {"params": ps, "base_lr": cfg.lr * (1.0 if is_head else cfg.backbone_lr_mult),
         "weight_decay": 0.0 if no_decay else cfg.weight_decay}
        for (is_head, no_decay), ps in sorted(groups.items())
    ]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(param_groups, lr=cfg.lr)
    else:
        opt = torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return SAM(opt, cfg.sam_rho) if cfg.sam else opt


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer, factor: float) -> float:
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor
    return max(g["lr"] for g in optimizer.param_groups)


# --- RNG state that survives weights_only loading -----------------------------------------------


def rng_state() -> dict:
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])),
        "python": (py_version, list(py_state), py_gauss),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- distributed --------------------------------------------------------------------------------


def dist_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size), from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def init_distributed(world: int, local_rank: int) -> torch.device:
    dev = device()
    if world > 1:
        import torch.distributed as dist

        if dev.type == "cuda":
            torch.cuda.set_device(local_rank)
            dev = torch.device("cuda", local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dev


def gather_rows(local: np.ndarray, world: int) -> np.ndarray:
    """Merge per-rank predictions where rank r predicted rows r, r + world, r + 2 world, ..."""
    if world == 1:
        return local
    import torch.distributed as dist

    parts: list = [None] * world
    dist.all_gather_object(parts, local)
    out = parts[0].copy()
    for r in range(1, world):
        out[r::world] = parts[r][r::world]
    return out


# --- the run folder -------------------------------------------------------------------------------


def run_dir(model_name: str, fold: int, runs: str | Path = "runs") -> Path:
    return Path(runs) / model_name / f"fold{fold}"


def stamp(cfg: ModelConfig, folds_path: Path, classes: list[str], comp: Competition) -> dict:
    return {
        "config_hash": config_hash(cfg, RESULT_NEUTRAL_KEYS),
        "folds_md5": file_md5(folds_path),
        "classes": classes,
        "task": comp.task,
        "metric": comp.metric,
    }


def is_done(out: Path, expected: dict) -> bool:
    import json

    done = out / "done.json"
    if not done.is_file():
        return False
    meta = json.loads(done.read_text())
    return all(meta.get(k) == v for k, v in expected.items())


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# --- training -------------------------------------------------------------------------------------


def _unwrap(model):
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def train_fold(
    comp: Competition,
    cfg: ModelConfig,
    model_name: str,
    fold: int,
    folds_path: str | Path = "folds/folds.csv",
    runs: str | Path = "runs",
    rerun: bool = False,
    source: str = "config",
) -> Path:
    """Train (or resume, or skip) one fold; return the run folder."""
    folds_path = Path(folds_path)
    folds = read_folds(folds_path, comp.id_col)
    data = fold_data(comp, folds, fold, cfg.pseudo)
    out = run_dir(model_name, fold, runs)
    expected = stamp(cfg, folds_path, data.classes, comp)
    rank, local_rank, world = dist_info()
    main = rank == 0

    if is_done(out, expected) and not rerun:
        print(f"{out}: done (same config and folds); skipping. `make train MODEL={model_name} FOLD={fold}` reruns it")
        return out
    resume = None
    if (out / "last.pt").is_file() and not (out / "done.json").is_file():
        ckpt = load_checkpoint(out / "last.pt")
        if ckpt.get("stamp") == expected:
            resume = ckpt
        elif main:
            print(f"{out}: last.pt was made with another config or folds.csv; starting over")
    if resume is None and main and out.exists():
        shutil.rmtree(out)
    stages = resolve_stages(cfg, source)

    dev = init_distributed(world, local_rank)
    seed_everything(cfg.seed)
    model = build_model(cfg, num_classes=len(data.classes)).to(dev)
    dcfg = data_config(cfg, model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = model
    if cfg.compile and dev.type == "cuda":
        net = torch.compile(net)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema, use_warmup=True)
    dtype = amp_dtype(cfg.amp, dev)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16 and not cfg.sam)

    counts = data.train_targets.sum(axis=0)
    class_weight = None
    if cfg.class_weights == "balanced":
        class_weight = torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32, device=dev)
    elif isinstance(cfg.class_weights, list):
        if len(cfg.class_weights) != len(data.classes):
            raise ConfigError(f"key 'class_weights': {len(cfg.class_weights)} values for {len(data.classes)} classes")
        class_weight = torch.tensor(cfg.class_weights, dtype=torch.float32, device=dev)
    sample_weights = None
    if cfg.sampler == "balanced":
        if comp.task == "multilabel":
            raise ConfigError("key 'sampler': balanced sampling needs single-label classes")
        label = data.train_targets.argmax(axis=1)
        sample_weights = 1.0 / counts[label]

    if main:
        out.mkdir(parents=True, exist_ok=True)
        resolved = {**cfg.model_dump(mode="json"), "_model": model_name, "_fold": fold, "_data": dcfg,
                    "_classes": data.classes, "_num_workers": resolve_workers(cfg.num_workers, dev, world)}
        write_text(out / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))

    total_epochs = sum(s.epochs for s in stages)
    stage_of = [i for i, s in enumerate(stages) for _ in range(s.epochs)]
    epoch, best, best_epoch, bad_epochs, log_rows = 0, None, -1, 0, []
    if resume is not None:
        model.load_state_dict(resume["model"])
        if ema is not None and "ema" in resume:
            ema.module.load_state_dict(resume["ema"])
        epoch, best, best_epoch = resume["epoch"] + 1, resume["best"], resume["best_epoch"]
        bad_epochs, log_rows = resume["bad_epochs"], [dict(r) for r in resume["log"]]
        if main:
            print(f"{out}: resuming after epoch {epoch} of {total_epochs}")

    # One decision for the fold's images (train + val) against the cache budget, one decoding pass.
    cache = maybe_cache(cfg.cache_images, data.train_paths + data.val_paths, cfg.in_chans, cfg.bad_images,
                        f"{model_name} fold{fold}", verbose=main)
    train_cache, val_cache = cache.split(len(data.train_paths)) if cache is not None else (None, None)
    val_ds = ImageDataset(data.val_paths, None, None, cfg.in_chans, cfg.bad_images, val_cache)
    board = open_tensorboard(out, log_rows, comp.metric) if cfg.tensorboard and main else None
    n_bad = nan_steps = 0
    opt = current_stage = None
    mixer = None
    while epoch < total_epochs and not (cfg.early_stopping and bad_epochs >= cfg.early_stopping):
        s = stage_of[epoch]
        scfg = stages[s]
        if s != current_stage:  # a new stage: its own optimizer, transforms, schedule
            current_stage = s
            sdcfg = data_config(scfg, model)
            color = cfg.in_chans == 3
            train_tf = build_transform(scfg.augment, sdcfg["img_size"], sdcfg["mean"], sdcfg["std"],
                                       sdcfg["interpolation"], color, train=True)
            val_ds.transform = eval_transform(dcfg, cfg.in_chans)
            train_ds = ImageDataset(data.train_paths, data.train_targets, train_tf, cfg.in_chans, cfg.bad_images,
                                    train_cache)
            opt = make_optimizer(scfg, model)
            sampler = EpochSampler(len(train_ds), cfg.seed, sample_weights, rank, world)
            steps_per_epoch = math.ceil(math.ceil(len(sampler) / scfg.batch_size) / scfg.grad_accum)
            stage_start = stage_of.index(s)
            total_steps = steps_per_epoch * scfg.epochs
            warmup = int(round(scfg.warmup_epochs * steps_per_epoch))
            mixer = None
            if scfg.mixup > 0 or scfg.cutmix > 0:
                from timm.data import Mixup

                mixer = Mixup(mixup_alpha=scfg.mixup, cutmix_alpha=scfg.cutmix, prob=scfg.mix_prob,
                              label_smoothing=0.0, num_classes=len(data.classes))
            loss_fn = make_loss(scfg, comp.task, class_weight)
            if resume is not None and resume["stage"] == s:
                opt.load_state_dict(resume["optimizer"])
                scaler.load_state_dict(resume["scaler"])
            if resume is not None:
                set_rng_state(resume["rng"])
                resume = None

        # ---- one epoch of training ----
        sampler.set_epoch(epoch)
        loader = make_loader(train_ds, scfg.batch_size, cfg.num_workers, sampler,
                             generator_seed=cfg.seed * 1000 + epoch, dev=dev, world=world)
        net.train()
        step = (epoch - stage_start) * steps_per_epoch
        t0, seen, loss_sum, loss_n = time.time(), 0, 0.0, 0
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        bar = tqdm(loader, desc=f"{model_name} fold{fold} epoch {epoch + 1}/{total_epochs}",
                   leave=False, disable=None if main else True, dynamic_ncols=True)  # None: off outside a terminal
        opt.zero_grad(set_to_none=True)
        lr = set_lr(opt, lr_factor(step, warmup, total_steps, scfg.min_lr_ratio))
        try:
            for bi, (x, y, _, bad) in enumerate(bar):
                n_bad += bad
                if n_bad > cfg.max_bad_images:
                    raise TrainingError(f"{n_bad} unreadable images skipped, more than max_bad_images={cfg.max_bad_images}")
                if x is None:
                    continue
                x = x.to(dev, non_blocking=True, memory_format=fmt)
                y = y.to(dev, non_blocking=True).float()
                if mixer is not None:
                    lam = mixer._mix_batch(x)  # mixes images in place (mixup or cutmix), returns the weight
                    y = lam * y + (1 - lam) * y.flip(0)
                with autocast(dev, dtype):
                    loss = loss_fn(net(x), y)
                if not torch.isfinite(loss):
                    nan_steps += 1
                    opt.zero_grad(set_to_none=True)
                    if cfg.nan_policy == "stop" or nan_steps > cfg.max_nan_steps:
                        raise TrainingError(
                            f"non-finite loss at epoch {epoch + 1}, batch {bi} ({nan_steps} so far; "
                            f"nan_policy={cfg.nan_policy}); lower lr, enable grad_clip, or check the inputs"
                        )
                    continue
                if isinstance(opt, SAM):
                    loss.backward()
                    opt.first_step()
                    with autocast(dev, dtype):
                        loss_fn(net(x), y).backward()
                    if scfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), scfg.grad_clip)
                    opt.second_step()
                    opt.zero_grad(set_to_none=True)
                    stepped = True
                else:
                    scaler.scale(loss / scfg.grad_accum).backward()
                    stepped = (bi + 1) % scfg.grad_accum == 0 or bi + 1 == len(loader)
                    if stepped:
                        if scfg.grad_clip:
                            scaler.unscale_(opt)
                            torch.nn.utils.clip_grad_norm_(model.parameters(), scfg.grad_clip)
                        scaler.step(opt)
                        scaler.update()
                        opt.zero_grad(set_to_none=True)
                if stepped:
                    step += 1
                    if ema is not None:
                        ema.update(model, step=epoch * steps_per_epoch + step)
                    lr = set_lr(opt, lr_factor(step, warmup, total_steps, scfg.min_lr_ratio))
                seen += len(x)
                loss_sum += loss.item() * len(x)
                loss_n += len(x)
                bar.set_postfix(loss=f"{loss_sum / max(loss_n, 1):.4f}", lr=f"{lr:.2e}")
        except torch.OutOfMemoryError:
            raise TrainingError(
                f"out of memory at batch_size={scfg.batch_size}, img_size={sdcfg['img_size']}; the last "
                f"checkpoint ({out / 'last.pt'}) is intact and a rerun resumes from it. Lower batch_size "
                "(use grad_accum to keep the effective batch) or img_size"
            ) from None
        train_time = time.time() - t0

        # ---- validation ----
        eval_model = ema.module if ema is not None else model
        val_sampler = list(range(rank, len(val_ds), world))
        val_loader = make_loader(val_ds, scfg.batch_size * 2, cfg.num_workers, val_sampler, dev=dev, world=world)
        logits = gather_rows(predict_logits(eval_model, val_loader, dev, dtype, cfg.channels_last, len(val_ds)), world)
        proba = to_proba(logits, comp.task)
        finite = bool(np.isfinite(proba).all())  # a diverged model must never look good
        metric = score(comp.metric, comp.task, data.val_y, proba) if finite else float("nan")
        val_loss = score("logloss", comp.task, data.val_y, proba) if finite else float("nan")
        improved = np.isfinite(metric) and is_better(comp.metric, metric, best)
        if improved:
            best, best_epoch, bad_epochs = metric, epoch, 0
        else:
            bad_epochs += 1
        row = {"epoch": epoch + 1, "stage": s, "train_loss": loss_sum / max(loss_n, 1), "val_loss": val_loss,
               comp.metric: metric, "lr": lr, "img_per_s": seen * world / max(train_time, 1e-9),
               "time_s": time.time() - t0, "best": improved}
        log_rows.append(row)
        if main:
            print(f"{model_name} fold{fold} epoch {epoch + 1}/{total_epochs} | loss {row['train_loss']:.4f} | "
                  f"val_loss {val_loss:.4f} | {comp.metric} {metric:.4f} | lr {lr:.2e} | "
                  f"{row['img_per_s']:.0f} img/s | {row['time_s']:.1f}s" + (" *" if improved else ""), flush=True)
            state = {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch, "stage": s, "step": step, "best": best, "best_epoch": best_epoch,
                "bad_epochs": bad_epochs, "log": log_rows, "rng": rng_state(), "stamp": expected,
                "config": cfg.model_dump(mode="json"), "classes": data.classes, "data_config": dcfg,
            }
            if ema is not None:
                state["ema"] = ema.module.state_dict()
            if improved:
                save_checkpoint(out / "best.pt", state)
            save_checkpoint(out / "last.pt", state)
            write_csv(out / "log.csv", pd.DataFrame(log_rows))
            if board is not None:
                log_scalars(board, row, comp.metric)
        epoch += 1

    if board is not None:
        board.close()
    if main:
        finish(out, comp, cfg, model_name, fold, data, dcfg, expected, dev, dtype, best_epoch, len(log_rows),
               val_cache)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return out


# log.csv column -> TensorBoard tag, one point per epoch.
TENSORBOARD_TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "{metric}": "metric/{metric}", "lr": "lr",
                    "img_per_s": "speed/img_per_s"}


def log_scalars(board, row: dict, metric: str) -> None:
    for key, tag in TENSORBOARD_TAGS.items():
        board.add_scalar(tag.format(metric=metric), row[key.format(metric=metric)], row["epoch"])
    board.flush()


def open_tensorboard(out: Path, log_rows: list[dict], metric: str):
    """A SummaryWriter on <run>/tb. On resume it drops every earlier point and writes the checkpoint's
    log again, so the curves match log.csv even when a kill came between a checkpoint and its events."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("key 'tensorboard': the tensorboard package is not installed "
                          "(`make install` installs it; or pip install tensorboard)") from None
    board = SummaryWriter(log_dir=str(out / "tb"), purge_step=1 if log_rows else None)
    for row in log_rows:
        log_scalars(board, row, metric)
    return board


def load_fold_model(run: str | Path, which: str = "best", dev: torch.device | None = None):
    """(model in eval mode with EMA weights when trained with EMA, config, checkpoint) of a run folder."""
    ckpt = load_checkpoint(Path(run) / f"{which}.pt")
    cfg = ModelConfig.model_validate(ckpt["config"])
    model = build_model(cfg, num_classes=len(ckpt["classes"]), pretrained=False)
    model.load_state_dict(ckpt.get("ema", ckpt["model"]))
    model.to(dev or device()).eval()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, cfg, ckpt


def finish(out: Path, comp, cfg, model_name, fold, data: FoldData, dcfg, expected, dev, dtype, best_epoch,
           epochs_run: int, val_cache=None) -> None:
    """OOF predictions of the best checkpoint, then done.json (written last)."""
    if not (out / "best.pt").is_file():
        raise TrainingError(f"{out}: no epoch produced a finite {comp.metric}; nothing to keep")
    model, _, _ = load_fold_model(out, "best", dev)
    tf = eval_transform(dcfg, cfg.in_chans)
    ds = ImageDataset(data.val_paths, None, tf, cfg.in_chans, cfg.bad_images, val_cache)
    loader = make_loader(ds, cfg.batch_size * 2, cfg.num_workers, dev=dev)
    proba = to_proba(predict_logits(model, loader, dev, dtype, cfg.channels_last, len(ds)), comp.task)
    fold_score = score(comp.metric, comp.task, data.val_y, proba)
    write_table(out / "oof.csv", data.val_ids, proba, data.classes, comp.id_col,
                meta={"folds_md5": expected["folds_md5"], "fold": fold, comp.metric: fold_score})
    write_json(out / "done.json", {
        **expected, "model": model_name, "fold": fold, "metric": comp.metric, "score": fold_score,
        "best_epoch": best_epoch + 1, "epochs_run": epochs_run,
        "greater_is_better": GREATER_IS_BETTER[comp.metric],
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    })
    print(f"{out}: done, best epoch {best_epoch + 1}, {comp.metric} {fold_score:.4f}")
