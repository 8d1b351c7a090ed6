"""`lr-find`: a learning-rate range test -> runs/<model>/lr_find.png and lr_find.csv, and a suggested lr.

A fresh model (the config's own recipe: optimizer, parameter groups, loss, augmentation) trains on the
training rows while the lr grows exponentially from --start to --end, for --steps optimizer steps,
repeating passes over the rows when one pass has fewer batches (as fastai's lr_find cycles its loader);
--epochs caps the passes. Fewer than 2 batches of data, or fewer than MIN_STEPS steps, are refused. The loss is smoothed (bias-corrected exponential moving
average); the test stops when the smoothed loss exceeds --diverge times its minimum or turns non-finite.
Suggestion: the lr of the steepest descent of the smoothed loss (before its minimum), with the range up to
the minimum's lr / 10; none, with the reason, when the loss never fell, fell only at the start (the sweep
began too high) or the lr lies outside 1e-6..1 (see `suggest`). Nothing is saved but the plot and the table; no run folder is touched.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Competition
from pipeline.core.data import class_names, encode_targets, read_train
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.io import write_csv, write_json

MIN_STEPS = 20  # fewer optimizer steps than this do not make a curve


USABLE_LR = (1e-6, 1.0)  # a suggestion outside this range is not one anybody can act on
MIN_DROP = 0.05  # the smoothed loss must fall by 5% of its starting level before a suggestion means anything


def suggest(lrs: np.ndarray, smoothed: np.ndarray) -> dict:
    """The suggestion of a range test, or none with the reason.

    Rules: the steepest descent of the smoothed loss against log10(lr), before its minimum, is the
    suggestion (the minimum's lr / 10 when the minimum comes too early for a slope); the range between
    the two is printed and drawn. No suggestion when the loss never fell (by MIN_DROP of its level), when
    its minimum lies at the start of the sweep (the sweep began too high), or when the lr found lies
    outside USABLE_LR."""
    lrs, smoothed = np.asarray(lrs, dtype=float), np.asarray(smoothed, dtype=float)
    ok = np.isfinite(smoothed)
    lrs, smoothed = lrs[ok], smoothed[ok]
    if len(lrs) == 0:
        raise DataError("lr-find: no finite loss was recorded; lower --start")
    skip = len(smoothed) // 10  # the first smoothed values rest on a handful of batches
    i_min = skip + int(np.argmin(smoothed[skip:]))
    out = {"min_loss_lr": float(lrs[i_min]), "min_loss_lr_div10": float(lrs[i_min] / 10), "suggested_lr": None}
    head = slice(skip, i_min + 1)
    if i_min - skip >= 2:
        slope = np.gradient(smoothed[head], np.log10(lrs[head]))
        out["steepest_lr"] = float(lrs[head][int(np.argmin(slope))])
        out["suggested_lr"], out["rule"] = out["steepest_lr"], "steepest descent of the smoothed loss"
    else:
        out["suggested_lr"], out["rule"] = out["min_loss_lr_div10"], "lr at the minimum loss / 10"
    out["range"] = sorted({out["suggested_lr"], out["min_loss_lr_div10"]})
    level = float(np.max(smoothed[: max(skip, 1) + 1]))
    reason = None
    if level - smoothed[i_min] < MIN_DROP * abs(level):
        reason = ("the loss did not fall; try a wider range with --start/--end, a smaller batch_size, or more "
                  "data")
    elif i_min <= skip + 1:
        reason = f"the loss is lowest at the start of the sweep ({lrs[i_min]:.2g}): it began too high; lower --start"
    elif not (USABLE_LR[0] <= out["suggested_lr"] <= USABLE_LR[1]):
        reason = (f"the lr found ({out['suggested_lr']:.2g}) lies outside {USABLE_LR[0]:g}..{USABLE_LR[1]:g}; "
                  "check the data and the loss, or the range")
    if reason:
        out.update(suggested_lr=None, rule=None, range=None, reason=reason)
    return out


def training_rows(comp: Competition, cfg, model):
    """Every training row as an ImageDataset with the config's own training transform."""
    from pipeline.nn.augment import train_transform
    from pipeline.nn.loader import ImageDataset
    from pipeline.nn.models import data_config
    from pipeline.train.folddata import one_hot

    train = read_train(comp)
    classes = class_names(comp, train)
    y = encode_targets(comp, train, classes)
    targets = y if comp.task in ("multilabel", "regression") else one_hot(y, len(classes))
    paths = [comp.image_path("train", i) for i in train[comp.id_col]]
    d = data_config(cfg, model)
    tf = train_transform(cfg.augment, d, cfg.in_chans)
    return ImageDataset(paths, targets.astype(np.float32), tf, cfg.in_chans, cfg.bad_images,
                        short_side=d["read_side"], preprocess=d.get("preprocess"))


def sweep(model, opt, loss_fn, ds, cfg, dev, lrs: np.ndarray, beta: float, diverge: float,
          desc: str, meta=None) -> tuple[list[dict], str]:
    """Train one step per lr in `lrs` (epochs of the dataset as needed); -> (rows, why it stopped). `meta`:
    the rows' coded metadata on dev, for a meta_head model."""
    from tqdm import tqdm

    from pipeline.nn.infer import amp_dtype, autocast
    from pipeline.nn.loader import EpochSampler, make_loader
    from pipeline.train.recipe import set_head_lr

    dtype = amp_dtype(cfg.amp, dev)
    rows, avg, best, step, epoch = [], 0.0, math.inf, 0, 0
    model.train()
    sampler = EpochSampler(len(ds), cfg.seed)
    with tqdm(total=len(lrs), desc=desc, leave=False, disable=None) as bar:  # None: off outside a terminal
        while step < len(lrs):
            sampler.set_epoch(epoch)
            for x, t, idx, _ in make_loader(ds, cfg.batch_size, cfg.num_workers, sampler,
                                          generator_seed=cfg.seed + epoch, dev=dev):
                if x is None:
                    continue
                lr = float(lrs[step])
                set_head_lr(opt, lr)  # keeps the config's head/backbone ratio
                x, t = x.to(dev), t.to(dev).float()
                with autocast(dev, dtype):
                    loss = loss_fn(model(x) if meta is None else model(x, meta[idx.to(dev)]), t)
                value = float(loss.item())
                if not math.isfinite(value):
                    rows.append({"step": step, "lr": lr, "loss": value, "smoothed": math.nan})
                    return rows, f"non-finite loss at lr {lr:.2e}"
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                avg = beta * avg + (1 - beta) * value
                smoothed = avg / (1 - beta ** (step + 1))
                rows.append({"step": step, "lr": lr, "loss": value, "smoothed": smoothed})
                best = min(best, smoothed)
                step += 1
                bar.update(1)
                if step > 5 and smoothed > diverge * best:
                    return rows, f"diverged at lr {lr:.2e} (smoothed loss > {diverge:g} x its minimum)"
                if step >= len(lrs):
                    break
            epoch += 1
    return rows, "reached the last lr"


def lr_range_test(comp: Competition, cfg, model_name: str, runs: str | Path = "runs", start: float = 1e-7,
                  end: float = 10.0, steps: int = 100, epochs: float | None = None, beta: float = 0.98,
                  diverge: float = 4.0, seed: int | None = None) -> dict:
    import torch

    from pipeline.nn.infer import device
    from pipeline.nn.models import model_config_path
    from pipeline.train.folddata import fitted_model, fold_meta
    from pipeline.train.recipe import base_optimizer, make_loss, make_optimizer
    from pipeline.train.runtime import seed_everything

    if not 0 < start < end:
        raise ConfigError(f"lr-find: need 0 < --start < --end, got {start} and {end}")
    seed_everything(cfg.seed if seed is None else seed)
    dev = device()
    train = read_train(comp)
    classes = class_names(comp, train)
    meta = None
    if cfg.meta_head:  # every train row's metadata, its numbers standardised on them all
        ids = train[comp.id_col].tolist()
        every = np.ones(len(ids), dtype=bool)
        meta = fold_meta(comp, str(model_config_path(comp.models_dir, model_name)), ids, every, ~every, [], [])
    model = fitted_model(cfg, len(classes), meta).to(dev)
    meta = torch.as_tensor(meta.train, device=dev) if meta is not None else None
    ds = training_rows(comp, cfg, model)
    per_epoch = math.ceil(len(ds) / cfg.batch_size)
    if len(ds) < 2 * cfg.batch_size:
        raise DataError(f"lr-find: {len(ds)} training rows make {per_epoch} batch(es) of batch_size="
                        f"{cfg.batch_size}; a range test needs at least 2 batches: lower batch_size "
                        f"(ARGS='batch_size={max(1, len(ds) // 4)}')")
    n_steps = steps if epochs is None else max(2, min(steps, int(math.ceil(epochs * per_epoch))))
    if n_steps < MIN_STEPS:
        raise DataError(f"lr-find: {n_steps} steps ({per_epoch} batches a pass) are too few for a range test (at "
                        f"least {MIN_STEPS}); raise --steps, or leave --epochs out to repeat passes")
    passes = math.ceil(n_steps / per_epoch)
    if passes > 1:
        print(f"lr-find: {len(ds)} rows make {per_epoch} batches; repeating them over {passes} passes for "
              f"{n_steps} steps")
    opt = base_optimizer(make_optimizer(cfg, model, dev))  # the range test probes the base optimizer (no SAM)
    lrs = start * (end / start) ** (np.arange(n_steps) / max(n_steps - 1, 1))
    rows, stopped = sweep(model, opt, make_loss(cfg, comp.task, None), ds, cfg, dev, lrs, beta, diverge,
                          f"lr-find {model_name}", meta)

    df = pd.DataFrame(rows, columns=["step", "lr", "loss", "smoothed"])
    found = suggest(df["lr"].to_numpy(), df["smoothed"].to_numpy())
    out = Path(runs) / model_name
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "lr_find.csv", df)
    plot(df, found, out / "lr_find.png", model_name)
    summary = {**found, "steps": len(df), "passes": math.ceil(len(df) / per_epoch), "stopped": stopped,
               "start": start, "end": end, "batch_size": cfg.batch_size, "optimizer": cfg.optimizer}
    write_json(out / "lr_find.json", summary)
    print(f"lr-find {model_name}: {len(df)} steps over {summary['passes']} pass(es), {stopped}")
    print(f"  min-loss lr {found['min_loss_lr']:.3g} (/10: {found['min_loss_lr_div10']:.3g})"
          + (f", steepest descent {found['steepest_lr']:.3g}" if "steepest_lr" in found else ""))
    if found["suggested_lr"] is None:
        print(f"no clear suggestion: {found['reason']}; plot {out / 'lr_find.png'}")
    else:
        lo, hi = found["range"][0], found["range"][-1]
        print(f"suggested lr: {found['suggested_lr']:.3g} ({found['rule']}); a reasonable range {lo:.2g} to "
              f"{hi:.2g}; plot {out / 'lr_find.png'}")
    return summary


def plot(df: pd.DataFrame, found: dict, path: Path, model_name: str) -> None:
    from pipeline.tools.report import pyplot, save_fig

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(df["lr"], df["loss"], color="0.75", lw=0.8, label="loss per step")
    ax.plot(df["lr"], df["smoothed"], lw=1.8, label="smoothed loss")
    if found["suggested_lr"] is not None:
        ax.axvspan(found["range"][0], found["range"][-1], color="g", alpha=0.12, label="reasonable range")
        ax.axvline(found["suggested_lr"], color="r", ls="--", label=f"suggested {found['suggested_lr']:.2g}")
    else:
        ax.text(0.02, 0.95, "no clear suggestion: " + found["reason"], transform=ax.transAxes, fontsize=8,
                va="top", wrap=True)
    ax.axvline(found["min_loss_lr"], color="0.4", ls=":", label=f"minimum loss at {found['min_loss_lr']:.2g}")
    ax.set_xscale("log")
    finite = df["smoothed"][np.isfinite(df["smoothed"])]
    if len(finite):
        lo, hi = finite.min(), finite.iloc[: max(1, len(finite) // 10)].max()
        ax.set_ylim(lo - 0.1 * abs(lo), max(hi, lo) * 1.5 + 1e-3)
    ax.set_xlabel("learning rate of the head (log scale)")
    ax.set_ylabel("training loss (smoothed: bias-corrected EMA)")
    ax.set_title(f"LR range test: {model_name}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    save_fig(fig, path)
