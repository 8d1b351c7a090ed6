"""`train`: one model on one fold -> runs/<run>/fold<k>/.

The run folder holds config.yaml (the resolved config), log.csv, last.pt (the full state a resume needs),
best.pt (the best epoch's weights, EMA weights, config, classes and data config: what inference, packaging
and reports read), oof.parquet (this fold's validation predictions) and done.json, written last: the fold's
stage record, what it was trained from and what it wrote (pipeline.artifacts.runs). A finished fold whose
record still holds is skipped; a killed one resumes from last.pt and ends with the same weights as an
unbroken run (CPU, same seed).

`train_fold` reads top to bottom: the fold's data (pipeline.train.folddata) and model, then `run_epochs`:
per epoch `train_one_epoch`, `validate` and a checkpoint; then `finish`. The recipe's pieces (loss,
optimizer, schedule, mixing, guarded steps) come from pipeline.train.recipe, the random state and torchrun's
ranks from pipeline.train.runtime; validation and OOF predictions go through pipeline.nn.infer.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from tqdm import tqdm

from pipeline.nn.augment import augmix_views, train_transform
from pipeline.core.config import Competition
from pipeline.nn.infer import EvalSpec, amp_dtype, autocast, image_logits, load_fold_model, to_proba
from pipeline.core.io import file_md5, load_checkpoint, save_checkpoint, write_csv, write_json, write_text
from pipeline.core.errors import CheckpointError, ConfigError, PipelineError
from pipeline.nn.loader import EpochSampler, ImageDataset, batches_per_epoch, make_loader, maybe_cache, resolve_workers
from pipeline.core.metrics import get_metric
from pipeline.nn.models import (ModelConfig, attach_target_scale, data_config, eval_data_config,
                                model_config_path, resolve_stages)
from pipeline.train.recipe import (
    SAM,
    JsdLoss,
    StepGuard,
    check_recipe,
    class_weight_tensor,
    current_lr,
    load_scheduler_state,
    make_loss,
    make_mixer,
    make_optimizer,
    make_scheduler,
    pos_weight_tensor,
    scheduler_state,
)
from pipeline.artifacts.folds import fold_layout
from pipeline.artifacts.runs import (config_name, fold_inputs, fold_params, fold_status, job_progress, publish,
                                     read_done, resume_stamp, run_dir, set_aside, staging_dir, with_split,
                                     write_fold_record)
from pipeline.artifacts.tables import write_table
from pipeline.core.tracking import Tracker, competition_tracker
from pipeline.train.folddata import FoldData, fitted_model, fold_data
from pipeline.train.runtime import (barrier, dist_info, gather_rows, init_distributed, rng_state, seed_everything,
                                    set_rng_state)


class TrainingError(PipelineError):
    """A run that had to stop; the last checkpoint is intact and a rerun resumes from it. The message names
    the run and fold: `training <model> fold <k> stopped: <reason>`."""

    def __init__(self, model: str, fold: int, reason: str):
        super().__init__(model, fold, reason)  # args kept whole, so the error pickles across processes
        self.model, self.fold, self.reason = model, fold, reason

    def __str__(self) -> str:
        return f"training {self.model} fold {self.fold} stopped: {self.reason}"


# --- one fold's training, piece by piece ------------------------------------------------------------


@dataclass
class Progress:
    """Where a run stands between epochs; a checkpoint restores it."""

    epoch: int = 0  # the next epoch to train (0-based)
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    log: list[dict] = field(default_factory=list)
    bad_images: int = 0
    started: float = field(default_factory=time.time)  # this process's start on the fold (for the job's ETA)


@dataclass
class Stage:
    """One stage's recipe (its own epochs, transforms, optimizer and schedule)."""

    index: int
    cfg: ModelConfig
    img_size: list[int]  # [height, width]
    first_epoch: int
    steps_per_epoch: int
    dataset: ImageDataset
    sampler: EpochSampler
    optimizer: object
    scheduler: object
    mixer: object
    loss_fn: object


@dataclass
class Engine:
    """The model and what drives it: the fold's data, device, precision, EMA and guarded steps."""

    comp: Competition
    cfg: ModelConfig
    name: str
    fold: int
    data: FoldData
    model: torch.nn.Module
    net: torch.nn.Module  # the model as trained: compiled and/or wrapped by DDP
    dev: torch.device
    dtype: torch.dtype | None
    ema: object
    guard: StepGuard
    rank: int = 0
    world: int = 1
    train_cache: object = None
    val_cache: object = None
    train_meta: torch.Tensor | None = None  # meta_head: the training rows' coded metadata, on the device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model


def build_engine(comp, cfg, name, fold, data, rank, local_rank, world) -> Engine:
    dev = init_distributed(world, local_rank)
    seed_everything(cfg.seed)
    model = fitted_model(cfg, len(data.classes), data.meta)  # meta_head: standardised on the fold's training rows
    if comp.task == "regression":
        attach_target_scale(model, *data.target_scale())
    model = model.to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if cfg.compile and dev.type == "cuda" else model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema, use_warmup=True)
    dtype = amp_dtype(cfg.amp, dev)
    # One decision for the fold's images (train + val) against the cache budget, one decoding pass.
    # Read reduced to the short side the model's data config asks for (the same config as evaluation's spec).
    d = data_config(cfg, model)
    cache = maybe_cache(cfg.cache_images, data.train_paths + data.val_paths, cfg.in_chans, cfg.bad_images,
                        f"{name} fold{fold}", verbose=rank == 0, short_side=d.get("read_side"),
                        preprocess=d.get("preprocess"), cache_dir=cfg.cache_dir)
    train_cache, val_cache = cache.split(len(data.train_paths)) if cache is not None else (None, None)
    train_meta = torch.as_tensor(data.meta.train, device=dev) if data.meta is not None else None
    return Engine(comp, cfg, name, fold, data, model, net, dev, dtype, ema,
                  StepGuard(dev, fp16=dtype == torch.float16), rank, world, train_cache, val_cache, train_meta)


def start_stage(eng: Engine, stages: list[ModelConfig], index: int) -> Stage:
    """A stage's transforms, sampler, optimizer, schedule, mixer and loss."""
    scfg, cfg, data = stages[index], eng.cfg, eng.data
    d = data_config(scfg, eng.model, whole=cfg)  # read_side over all stages: the one the cache was filled at
    # augmix_jsd: each image gives its clean view and two AugMix draws (3, C, H, W)
    tf = augmix_views(d, cfg.in_chans) if scfg.augmix_jsd else train_transform(scfg.augment, d, cfg.in_chans)
    # A stage reading at another short side than the cache was filled at reads from disk.
    cache = eng.train_cache
    if cache is not None and cache.short_side != d.get("read_side"):
        cache = None
    dataset = ImageDataset(data.train_paths, data.train_targets, tf, cfg.in_chans, cfg.bad_images, cache,
                           short_side=d.get("read_side"), preprocess=d.get("preprocess"), cache_dir=cfg.cache_dir)
    counts = data.train_targets.sum(axis=0)
    sample_weights, task = None, eng.comp.task  # check_recipe has refused what does not fit the task
    if cfg.sampler == "balanced":
        sample_weights = 1.0 / counts[data.train_targets.argmax(axis=1)]
    sampler = EpochSampler(len(dataset), cfg.seed, sample_weights, eng.rank, eng.world)
    steps = -(-batches_per_epoch(len(sampler), scfg.batch_size) // scfg.grad_accum)  # ceil(batches / accum)
    optimizer = make_optimizer(scfg, eng.model, eng.dev)
    mode = "max" if eng.comp.scoring().greater_is_better else "min"
    loss_fn = make_loss(scfg, task, class_weight_tensor(scfg, counts, eng.dev),
                        torch.as_tensor(data.target_scale()[1], device=eng.dev) if task == "regression" else None,
                        pos_weight_tensor(scfg, data.train_targets, eng.dev))
    return Stage(index, scfg, d["img_size"], sum(s.epochs for s in stages[:index]), steps, dataset, sampler, optimizer,
                 make_scheduler(scfg, optimizer, steps, mode), make_mixer(scfg, len(data.classes)),
                 JsdLoss(loss_fn, scfg.augmix_jsd) if scfg.augmix_jsd else loss_fn)


def to_device(x: torch.Tensor, dev: torch.device, fmt: torch.memory_format) -> torch.Tensor:
    """A batch on the device; augmix_jsd's (n, 3, C, H, W) as its 3 views one after another, (3n, C, H, W)."""
    if x.ndim == 5:
        return x.to(dev, non_blocking=True).transpose(0, 1).flatten(0, 1).contiguous(memory_format=fmt)
    return x.to(dev, non_blocking=True, memory_format=fmt)


def batch_meta(eng: Engine, idx: torch.Tensor, n_inputs: int) -> tuple:
    """meta_head: the batch rows' coded metadata, once per view (augmix_jsd's 3 views come one after another,
    as to_device lays them out), as the model's second argument; () for a model without one."""
    if eng.train_meta is None:
        return ()
    rows = eng.train_meta[idx.to(eng.dev)]
    return (rows.repeat(n_inputs // len(rows), 1),)


def check_faults(eng: Engine, progress: Progress, epoch: int, step: int) -> None:
    """Stop on too many unreadable images or non-finite losses (the guard kept them from the weights)."""
    cfg = eng.cfg
    if progress.bad_images > cfg.max_bad_images:
        raise TrainingError(eng.name, eng.fold, f"{progress.bad_images} unreadable images skipped, more than "
                            f"max_bad_images={cfg.max_bad_images}")
    nan_steps = int(eng.guard.nonfinite)  # the one read-back of the count
    if nan_steps and (cfg.nan_policy == "stop" or nan_steps > cfg.max_nan_steps):
        raise TrainingError(
            eng.name, eng.fold,
            f"non-finite loss in epoch {epoch + 1} by step {step} ({nan_steps} step(s) skipped so far; "
            f"nan_policy={cfg.nan_policy}, max_nan_steps={cfg.max_nan_steps}); lower lr, enable grad_clip, "
            "or check the inputs")


def train_one_epoch(eng: Engine, stage: Stage, epoch: int, progress: Progress, total_epochs: int) -> dict:
    """One pass over the stage's sampler: forward, guarded backward and step, schedule, EMA.

    The loss and the count of skipped non-finite steps stay on the device and are read back every
    `log_every` steps and at the end of the epoch, so a GPU never waits on the host between steps; the
    StepGuard has already kept every non-finite step from the weights."""
    cfg, scfg, dev = eng.cfg, stage.cfg, eng.dev
    stage.sampler.set_epoch(epoch)
    loader = make_loader(stage.dataset, scfg.batch_size, cfg.num_workers, stage.sampler,
                         generator_seed=cfg.seed * 1000 + epoch, dev=dev, world=eng.world)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    step = (epoch - stage.first_epoch) * stage.steps_per_epoch
    stage.scheduler.step_update(step)
    loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
    loss_rows = torch.zeros((), device=dev, dtype=torch.long)
    jsd_sum = torch.zeros((), device=dev, dtype=torch.float64) if isinstance(stage.loss_fn, JsdLoss) else None
    seen, t0 = 0, time.time()
    bar = tqdm(loader, desc=f"{eng.name} fold{eng.fold} epoch {epoch + 1}/{total_epochs}", leave=False,
               disable=None if eng.main else True, dynamic_ncols=True)  # None: off outside a terminal
    eng.net.train()
    try:
        for bi, (x, y, idx, n_bad) in enumerate(bar):
            progress.bad_images += n_bad
            if n_bad:
                check_faults(eng, progress, epoch, step)
            if x is None:
                continue
            x = to_device(x, dev, fmt)
            y = y.to(dev, non_blocking=True).float()
            extra = batch_meta(eng, idx, len(x))
            if stage.mixer is not None:
                if len(x) % 2:  # timm mixes pairs: an odd batch leaves out its last image
                    x, y = x[:-1], y[:-1]
                x, y = stage.mixer(x, y)
            eng.guard.watch(eng.model)
            with autocast(dev, eng.dtype):
                loss = stage.loss_fn(eng.net(x, *extra), y)
            bad = eng.guard.count(loss)
            loss_sum += torch.where(bad, 0.0, loss.detach().double()) * len(y)
            loss_rows += (~bad).long() * len(y)
            if jsd_sum is not None:
                jsd_sum += torch.where(bad, 0.0, stage.loss_fn.last.double()) * len(y)
            last = bi + 1 == len(loader)
            if isinstance(stage.optimizer, SAM):
                loss.backward()
                stage.optimizer.perturb()
                with autocast(dev, eng.dtype):
                    eng.guard.backward(stage.loss_fn(eng.net(x, *extra), y))
                stage.optimizer.restore()
                stepped = True
            else:
                eng.guard.backward(loss, scfg.grad_accum)
                stepped = (bi + 1) % scfg.grad_accum == 0 or last
            eng.guard.settle()
            if stepped:
                eng.guard.step(stage.optimizer, eng.model.parameters(), scfg.grad_clip)
                step += 1
                if eng.ema is not None:
                    eng.ema.update(eng.model, step=epoch * stage.steps_per_epoch + step)
                stage.scheduler.step_update(step)
            seen += len(y)  # training images (augmix_jsd's 3 views of one count once)
            if (bi + 1) % cfg.log_every == 0 or last:
                check_faults(eng, progress, epoch, step)
                bar.set_postfix(loss=f"{float(loss_sum / loss_rows.clamp(min=1)):.4f}",
                                lr=f"{current_lr(stage.optimizer):.2e}")
    except torch.OutOfMemoryError:
        raise TrainingError(
            eng.name, eng.fold,
            f"out of memory at batch_size={scfg.batch_size}, img_size={stage.img_size} (height, width)"
            + (" with augmix_jsd's 3 views per image" if scfg.augmix_jsd else "") + "; the last "
            "checkpoint is intact and a rerun resumes from it. Lower batch_size (use grad_accum to keep the "
            "effective batch) or img_size") from None
    seconds = time.time() - t0
    stats = {"train_loss": float(loss_sum / loss_rows.clamp(min=1)), "lr": current_lr(stage.optimizer),
             "img_per_s": seen * eng.world / max(seconds, 1e-9), "started": t0}
    if jsd_sum is not None:  # augmix_jsd: the JSD term's epoch mean (unweighted; train_loss includes it x lambda)
        stats["train_jsd"] = float(jsd_sum / loss_rows.clamp(min=1))
    return stats


def evaluate(eng: Engine, model: torch.nn.Module, spec: EvalSpec) -> np.ndarray:
    """Probabilities of the fold's validation rows (each DDP rank predicts its share; all ranks get all)."""
    rows = list(range(eng.rank, len(eng.data.val_paths), eng.world))
    logits = image_logits([model], eng.data.val_paths, spec, dev=eng.dev, cache=eng.val_cache, rows=rows,
                          meta=eng.data.val_meta)[0, 0]
    return to_proba(gather_rows(logits, eng.world), eng.comp.task)


def prepare_staging(out: Path, stamp: dict, main: bool) -> tuple[Path, dict | None]:
    """(the staging folder this run trains in, the checkpoint to resume from or None).

    A fold trains in runs/<run>/.fold<k>.partial/ and replaces runs/<run>/fold<k>/ only when finished, so a
    killed rerun never costs the finished fold. An unfinished run with another stamp (params and input
    files), or whose last.pt cannot be read, is set aside under runs/<run>/stale/ and training starts over."""
    work = staging_dir(out)
    if main and out.is_dir() and not (out / "done.json").is_file() and not work.exists():
        os.replace(out, work)  # an unfinished fold of the earlier layout, trained in place: resume it here
    resume = None
    if (work / "last.pt").is_file():
        try:
            ckpt = load_checkpoint(work / "last.pt")
        except CheckpointError as e:
            ckpt = None
            if main:
                print(f"{e}; starting over")
        if ckpt is not None and ckpt.get("stamp") == stamp:
            resume = ckpt
        elif ckpt is not None and main:
            print(f"{work / 'last.pt'} was made with another config or other input files (folds.csv, a teacher "
                  "or pseudo-label table); starting over")
    if resume is None and main and work.exists():
        print(f"{work}: set aside in {set_aside(work)}")
    return work, resume


def write_run_config(eng: Engine, work: Path, dcfg: dict, overrides: list[str]) -> dict:
    """config.yaml (the resolved config) and, for a distilled student, distill.json; -> the resolved config."""
    cfg, data = eng.cfg, eng.data
    work.mkdir(parents=True, exist_ok=True)
    resolved = {**cfg.model_dump(mode="json"), "_model": eng.name, "_fold": eng.fold, "_data": dcfg,
                "_classes": data.classes, "_overrides": overrides,
                "_num_workers": resolve_workers(cfg.num_workers, eng.dev, eng.world)}
    write_text(work / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    if cfg.distill:  # which rows learned from the teacher, and which teacher: checkable against folds.csv
        write_json(work / "distill.json", {"table": cfg.distill, "md5": file_md5(cfg.distill), "fold": eng.fold,
                                           "alpha": cfg.distill_alpha, "temperature": cfg.temperature,
                                           "ids": data.distilled_ids})
    return resolved


def restore(eng: Engine, resume: dict) -> Progress:
    eng.model.load_state_dict(resume["model"])
    if eng.ema is not None and "ema" in resume:
        eng.ema.module.load_state_dict(resume["ema"])
    return Progress(epoch=resume["epoch"] + 1, best=resume["best"], best_epoch=resume["best_epoch"],
                    bad_epochs=resume["bad_epochs"], log=[dict(r) for r in resume["log"]])


def restore_stage(eng: Engine, stage: Stage, resume: dict) -> None:
    """The first stage after a resume: the optimizer, scaler and schedule of the stage the checkpoint was in
    (a stage that begins at the resume point starts afresh), then the random state."""
    if resume["stage"] == stage.index:
        stage.optimizer.load_state_dict(resume["optimizer"])
        eng.guard.load_state_dict(resume["scaler"])
        load_scheduler_state(stage.scheduler, resume["scheduler"])
    set_rng_state(resume["rng"])


# What best.pt keeps of the state: what inference, packaging and reports read. last.pt keeps it all.
BEST_KEYS = ("model", "ema", "config", "classes", "data_config", "epoch", "stage", "best", "best_epoch", "meta")


def checkpoint(eng: Engine, out: Path, stage: Stage, progress: Progress, stamp: dict, dcfg: dict,
               improved: bool) -> None:
    """last.pt, the full state a resume needs; best.pt when the epoch improved, only the BEST_KEYS of it."""
    state = {
        "model": eng.model.state_dict(), "optimizer": stage.optimizer.state_dict(),
        "scaler": eng.guard.state_dict(), "scheduler": scheduler_state(stage.scheduler),
        "epoch": progress.epoch, "stage": stage.index, "best": progress.best, "best_epoch": progress.best_epoch,
        "bad_epochs": progress.bad_epochs, "log": progress.log, "rng": rng_state(), "stamp": stamp,
        "config": eng.cfg.model_dump(mode="json"), "classes": eng.data.classes, "data_config": dcfg,
    }
    if eng.data.meta is not None:  # meta_head: the metadata encoding the model reads (pipeline.core.meta)
        state["meta"] = eng.data.meta.encoding
    if eng.ema is not None:
        state["ema"] = eng.ema.module.state_dict()
    if improved:
        save_checkpoint(out / "best.pt", {k: state[k] for k in BEST_KEYS if k in state})
    save_checkpoint(out / "last.pt", state)
    write_csv(out / "log.csv", pd.DataFrame(progress.log))


def validate(eng: Engine, stage: Stage, epoch: int, progress: Progress, spec: EvalSpec,
             stats: dict) -> tuple[dict, bool]:
    """Score the epoch on the fold's validation rows, step a plateau schedule and note the best epoch;
    -> (its log.csv row, whether it improved)."""
    comp, data = eng.comp, eng.data
    scoring = comp.scoring()
    loss_metric = get_metric("rmse" if comp.task == "regression" else "logloss", comp.task)  # the val_loss column
    proba = evaluate(eng, eng.eval_model(), spec)
    finite = bool(np.isfinite(proba).all())  # a diverged model must never look good
    metric = scoring.score(data.val_y, proba) if finite else float("nan")
    val_loss = loss_metric.score(data.val_y, proba) if finite else float("nan")
    stage.scheduler.step(epoch - stage.first_epoch + 1, metric)  # plateau; per-step schedules ignore it
    improved = bool(np.isfinite(metric) and scoring.is_better(metric, progress.best))
    if improved:
        progress.best, progress.best_epoch, progress.bad_epochs = metric, epoch, 0
    else:
        progress.bad_epochs += 1
    row = {"epoch": epoch + 1, "stage": stage.index, "train_loss": stats["train_loss"],
           **({"train_jsd": stats["train_jsd"]} if "train_jsd" in stats else {}), "val_loss": val_loss,
           comp.metric: metric, "lr": stats["lr"], "img_per_s": stats["img_per_s"],
           "time_s": time.time() - stats["started"], "best": improved}
    progress.log.append(row)
    return row, improved


def run_epochs(eng: Engine, stages: list[ModelConfig], progress: Progress, resume: dict | None, spec: EvalSpec,
               work: Path, stamp: dict, tracker: Tracker, on_epoch=None) -> None:
    """The epochs left: per epoch `train_one_epoch`, `validate` and (rank 0) a checkpoint and its logs, until
    the last epoch or early stopping."""
    cfg, metric = eng.cfg, eng.comp.metric
    total_epochs = sum(s.epochs for s in stages)
    stage_of = [i for i, s in enumerate(stages) for _ in range(s.epochs)]
    board = open_tensorboard(work, progress.log, metric) if cfg.tensorboard and eng.main else None
    stage = None
    while progress.epoch < total_epochs and not (cfg.early_stopping and progress.bad_epochs >= cfg.early_stopping):
        epoch = progress.epoch
        if stage is None or stage_of[epoch] != stage.index:  # a new stage: its own recipe
            stage = start_stage(eng, stages, stage_of[epoch])
            if resume is not None:
                restore_stage(eng, stage, resume)
                resume = None
        stats = train_one_epoch(eng, stage, epoch, progress, total_epochs)
        row, improved = validate(eng, stage, epoch, progress, spec, stats)
        if on_epoch is not None:
            on_epoch(epoch, row[metric])
        if eng.main:
            print(f"{eng.name} fold{eng.fold} epoch {epoch + 1}/{total_epochs} | loss {row['train_loss']:.4f} | "
                  + (f"jsd {row['train_jsd']:.4f} | " if "train_jsd" in row else "")
                  + f"val_loss {row['val_loss']:.4f} | {metric} {row[metric]:.4f} | lr {row['lr']:.2e} | "
                  f"{row['img_per_s']:.0f} img/s | {row['time_s']:.1f}s" + (" *" if improved else ""), flush=True)
            checkpoint(eng, work, stage, progress, stamp, spec.data_config, improved)
            if board is not None:
                log_scalars(board, row, metric)
            tracker.log_metrics(row, epoch + 1)
        progress.epoch += 1
    if board is not None:
        board.close()


def train_fold(comp: Competition, cfg: ModelConfig, model_name: str, fold: int,
               folds_path: str | Path = "folds/folds.csv", runs: str | Path = "runs", rerun: bool = False,
               source: str = "config", overrides: list[str] | tuple[str, ...] = (), on_epoch=None) -> Path:
    """Train (or resume, or skip) one fold; return the run folder. `overrides` (the command line's
    key=value words) are recorded in config.yaml and done.json. `on_epoch(epoch, metric)` is called after
    each epoch's validation (`make tune` reports to its pruner there, which may stop the run by raising)."""
    meta_source = str(model_config_path(comp.models_dir, config_name(model_name))) if cfg.meta_head else None
    data = fold_data(comp, folds_path, fold, cfg.pseudo,
                     (cfg.distill, cfg.distill_alpha, cfg.temperature) if cfg.distill else None,
                     cfg.train_fraction, cfg.seed, meta_source)
    stages = resolve_stages(cfg, source)
    check_recipe(stages, comp.task, data.classes, source)
    out, overrides = run_dir(model_name, fold, runs), list(overrides)
    params = fold_params(cfg, data.classes, comp)
    inputs = with_split(fold_inputs(cfg, folds_path, comp), folds_path, fold, fold_layout(folds_path))
    rank, local_rank, world = dist_info()
    if rank == 0 and read_done(staging_dir(out)) is not None:  # finished, but killed before it moved into place
        publish(staging_dir(out), out)
    status = fold_status(out, params, inputs, comp.models_dir, config_name(model_name), overrides)
    if status.state == "done" and not rerun:
        print(f"{out}: done (same config and inputs); skipping. `make train MODEL={model_name} FOLD={fold}` reruns it")
        return out
    if status.state in ("kept", "stale") and rank == 0:
        print(f"{out}: {status.reason}; training it again beside the finished fold, which is set aside when done")
    stamp = resume_stamp(params, inputs)
    work, resume = prepare_staging(out, stamp, rank == 0)
    eng = build_engine(comp, cfg, model_name, fold, data, rank, local_rank, world)
    spec = EvalSpec.of(cfg, eval_data_config(cfg, eng.model, source))  # the last stage's size: see best.pt
    tracker = Tracker()
    if eng.main:
        if cfg.train_fraction < 1:
            print(f"{model_name} fold{fold}: train_fraction {cfg.train_fraction:g}: training on {data.labelled_rows} "
                  f"of the fold's {data.fold_train_rows} training rows (stratified); validating on all "
                  f"{len(data.val_paths)} validation rows", flush=True)
        if data.extra_rows:
            print(f"{model_name} fold{fold}: training on {data.labelled_rows} train rows + {data.extra_rows} extra "
                  f"rows ({comp.extra_train_path}); validating on {len(data.val_paths)} train rows only"
                  + (f"; {data.extra_left_out} extra rows left out: their images copy this fold's validation images"
                     if data.extra_left_out else ""), flush=True)
        resolved = write_run_config(eng, work, spec.data_config, overrides)
        tracker = competition_tracker(comp, f"{model_name}/fold{fold}", resolved, {"model": model_name, "fold": fold})
    progress = restore(eng, resume) if resume is not None else Progress()
    if resume is not None and eng.main:
        print(f"{out}: resuming after epoch {progress.epoch} of {sum(s.epochs for s in stages)}")
    run_epochs(eng, stages, progress, resume, spec, work, stamp, tracker, on_epoch)
    if eng.main:
        finish(eng, work, out, spec, progress, (params, inputs, overrides))
        tracker.log_artifacts([work / name for name in ("done.json", "log.csv", "config.yaml", "oof.parquet")])
        tracker.end()
        old = publish(work, out)
        print(f"{out}: done, best epoch {progress.best_epoch + 1}"
              + (f"; the fold it replaces is set aside in {old}" if old else ""))
        note = None if rerun else job_progress(runs, out)
        if note:
            print(note, flush=True)
    barrier(world)
    return out


# --- logging and the end of a fold -------------------------------------------------------------------

# log.csv column -> TensorBoard tag, one point per epoch.
TENSORBOARD_TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "{metric}": "metric/{metric}", "lr": "lr",
                    "img_per_s": "speed/img_per_s"}


def log_scalars(board, row: dict, metric: str) -> None:
    for key, tag in TENSORBOARD_TAGS.items():
        board.add_scalar(tag.format(metric=metric), row[key.format(metric=metric)], row["epoch"])
    if "train_jsd" in row:  # augmix_jsd
        board.add_scalar("loss/train_jsd", row["train_jsd"], row["epoch"])
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


def finish(eng: Engine, work: Path, out: Path, spec: EvalSpec, progress: Progress, record: tuple) -> None:
    """OOF predictions of the best checkpoint, then done.json, the fold's record (written last). `record`:
    (params, inputs, overrides) of the fold; its outputs are named where `publish` moves `work` (`out`)."""
    comp, data = eng.comp, eng.data
    params, inputs, overrides = record
    if not (work / "best.pt").is_file():
        raise TrainingError(eng.name, eng.fold, f"{work}: no epoch produced a finite {comp.metric}; nothing to keep")
    model, _, _ = load_fold_model(work, "best", eng.dev)
    logits = image_logits([model], data.val_paths, spec, dev=eng.dev, cache=eng.val_cache, meta=data.val_meta)[0, 0]
    proba = to_proba(logits, comp.task)
    fold_score = comp.scoring().score(data.val_y, proba)
    write_table(work / "oof.parquet", data.val_ids, proba, data.classes, comp.id_col,
                meta={"folds_md5": file_md5(inputs["folds.csv"]), "fold": eng.fold, comp.metric: fold_score})
    write_fold_record(work, out, params, inputs, {
        "model": eng.name, "fold": eng.fold, "metric": comp.metric, "score": fold_score,
        "best_epoch": progress.best_epoch + 1, "epochs_run": len(progress.log),
        "greater_is_better": comp.scoring().greater_is_better, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "finished_at": time.time(), "seconds": round(time.time() - progress.started, 1), "overrides": overrides,
        "train_rows": data.labelled_rows, "fold_train_rows": data.fold_train_rows,
        "extra_rows": data.extra_rows, **({"extra_left_out": data.extra_left_out} if data.extra_left_out else {}),
    })
    print(f"{eng.name} fold{eng.fold}: {comp.metric} {fold_score:.4f} (best epoch {progress.best_epoch + 1})")
