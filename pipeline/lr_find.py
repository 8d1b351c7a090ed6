"""`lr-find`: a learning-rate range test -> runs/<model>/lr_find.png and lr_find.csv, and a suggested lr.

A fresh model (the config's own recipe: optimizer, parameter groups, loss, augmentation) trains on the
training rows while the lr grows exponentially from --start to --end, for --steps optimizer steps but
never more than --epochs passes over the data. The loss is smoothed (bias-corrected exponential moving
average); the test stops when the smoothed loss exceeds --diverge times its minimum or turns non-finite.
Suggestion: the lr of the steepest descent of the smoothed loss (before its minimum); the lr of the
minimum / 10 is printed beside it. Nothing is saved but the plot and the table; no run folder is touched.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Competition, ConfigError
from pipeline.data import DataError, class_names, encode_targets, read_train
from pipeline.io import write_csv, write_json


def suggest(lrs: np.ndarray, smoothed: np.ndarray) -> dict:
    """Steepest descent of the smoothed loss against log10(lr) up to its minimum; and min-loss lr / 10."""
    lrs, smoothed = np.asarray(lrs, dtype=float), np.asarray(smoothed, dtype=float)
    ok = np.isfinite(smoothed)
    lrs, smoothed = lrs[ok], smoothed[ok]
    if len(lrs) == 0:
        raise DataError("lr-find: no finite loss was recorded; lower --start")
    skip = len(smoothed) // 10  # the first smoothed values rest on a handful of batches
    i_min = skip + int(np.argmin(smoothed[skip:]))
    out = {"min_loss_lr": float(lrs[i_min]), "min_loss_lr_div10": float(lrs[i_min] / 10)}
    head = slice(0, i_min + 1)
    if i_min >= 2:
        slope = np.gradient(smoothed[head], np.log10(lrs[head]))
        out["steepest_lr"] = float(lrs[head][int(np.argmin(slope))])
        out["suggested_lr"], out["rule"] = out["steepest_lr"], "steepest descent of the smoothed loss"
    else:
        out["suggested_lr"], out["rule"] = out["min_loss_lr_div10"], "lr at the minimum loss / 10"
    return out


def training_rows(comp: Competition, cfg, model):
    """Every training row as an ImageDataset with the config's own training transform."""
    from pipeline.augment import train_transform
    from pipeline.loader import ImageDataset
    from pipeline.models import data_config
    from pipeline.train import one_hot

    train = read_train(comp)
    classes = class_names(comp, train)
    y = encode_targets(comp, train, classes)
    targets = y if comp.task in ("multilabel", "regression") else one_hot(y, len(classes))
    paths = [comp.image_path("train", i) for i in train[comp.id_col]]
    d = data_config(cfg, model)
    tf = train_transform(cfg.augment, d, cfg.in_chans)
    return ImageDataset(paths, targets.astype(np.float32), tf, cfg.in_chans, cfg.bad_images,
                        short_side=d["read_side"])


def sweep(model, opt, loss_fn, ds, cfg, dev, lrs: np.ndarray, beta: float, diverge: float,
          desc: str) -> tuple[list[dict], str]:
    """Train one step per lr in `lrs` (epochs of the dataset as needed); -> (rows, why it stopped)."""
    from tqdm import tqdm

    from pipeline.infer import amp_dtype, autocast
    from pipeline.loader import EpochSampler, make_loader
    from pipeline.recipe import set_head_lr

    dtype = amp_dtype(cfg.amp, dev)
    rows, avg, best, step, epoch = [], 0.0, math.inf, 0, 0
    model.train()
    sampler = EpochSampler(len(ds), cfg.seed)
    with tqdm(total=len(lrs), desc=desc, leave=False) as bar:
        while step < len(lrs):
            sampler.set_epoch(epoch)
            for x, t, _, _ in make_loader(ds, cfg.batch_size, cfg.num_workers, sampler,
                                          generator_seed=cfg.seed + epoch, dev=dev):
                if x is None:
                    continue
                lr = float(lrs[step])
                set_head_lr(opt, lr)  # keeps the config's head/backbone ratio
                x, t = x.to(dev), t.to(dev).float()
                with autocast(dev, dtype):
                    loss = loss_fn(model(x), t)
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
                  end: float = 10.0, steps: int = 100, epochs: float = 1.0, beta: float = 0.98,
                  diverge: float = 4.0, seed: int | None = None) -> dict:
    from pipeline.infer import device
    from pipeline.models import build_model
    from pipeline.recipe import base_optimizer, make_loss, make_optimizer
    from pipeline.train import seed_everything

    if not 0 < start < end:
        raise ConfigError(f"lr-find: need 0 < --start < --end, got {start} and {end}")
    seed_everything(cfg.seed if seed is None else seed)
    dev = device()
    classes = class_names(comp, read_train(comp))
    model = build_model(cfg, num_classes=len(classes)).to(dev)
    ds = training_rows(comp, cfg, model)
    per_epoch = math.ceil(len(ds) / cfg.batch_size)
    n_steps = max(2, min(steps, int(math.ceil(epochs * per_epoch))))
    if n_steps < steps:
        print(f"note: {n_steps} steps ({epochs:g} epoch(s) of {per_epoch} batches); "
              "lower batch_size or raise --epochs for a finer curve")
    opt = base_optimizer(make_optimizer(cfg, model, dev))  # the range test probes the base optimizer (no SAM)
    lrs = start * (end / start) ** (np.arange(n_steps) / max(n_steps - 1, 1))
    rows, stopped = sweep(model, opt, make_loss(cfg, comp.task, None), ds, cfg, dev, lrs, beta, diverge,
                          f"lr-find {model_name}")

    df = pd.DataFrame(rows, columns=["step", "lr", "loss", "smoothed"])
    found = suggest(df["lr"].to_numpy(), df["smoothed"].to_numpy())
    out = Path(runs) / model_name
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "lr_find.csv", df)
    plot(df, found, out / "lr_find.png", model_name)
    summary = {**found, "steps": len(df), "stopped": stopped, "start": start, "end": end,
               "batch_size": cfg.batch_size, "optimizer": cfg.optimizer}
    write_json(out / "lr_find.json", summary)
    print(f"lr-find {model_name}: {len(df)} steps, {stopped}")
    print(f"  min-loss lr {found['min_loss_lr']:.3g} (/10: {found['min_loss_lr_div10']:.3g})"
          + (f", steepest descent {found['steepest_lr']:.3g}" if "steepest_lr" in found else ""))
    print(f"suggested lr: {found['suggested_lr']:.3g} ({found['rule']}); plot {out / 'lr_find.png'}")
    return summary


def plot(df: pd.DataFrame, found: dict, path: Path, model_name: str) -> None:
    from pipeline.report import pyplot, save_fig

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(df["lr"], df["loss"], color="0.75", lw=0.8, label="loss")
    ax.plot(df["lr"], df["smoothed"], lw=1.8, label="smoothed loss")
    ax.axvline(found["suggested_lr"], color="r", ls="--", label=f"suggested {found['suggested_lr']:.2g}")
    ax.axvline(found["min_loss_lr_div10"], color="g", ls=":", label=f"min-loss lr / 10 {found['min_loss_lr_div10']:.2g}")
    ax.set_xscale("log")
    finite = df["smoothed"][np.isfinite(df["smoothed"])]
    if len(finite):
        lo, hi = finite.min(), finite.iloc[: max(1, len(finite) // 10)].max()
        ax.set_ylim(lo - 0.1 * abs(lo), max(hi, lo) * 1.5 + 1e-3)
    ax.set_xlabel("learning rate (head)")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test: {model_name}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    save_fig(fig, path)
