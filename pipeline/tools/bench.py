"""`bench`: one table, measured in one run on one machine (never part of `make test`).

1. Data path: training images/s through the real pipeline (PNG decode, augmentation, DataLoader)
   over model-only images/s (same model, batch and precision on tensors already in memory).
2. Inference: images/s per TTA view.
3. Quality on Fashion-MNIST: folds -> train -> predict -> ensemble on a stated subset and recipe, with
   the CV per model and blend, the submission's official test accuracy, and the best single fold's.
4. Blend and stacker fit times (nested CV), with their size: rows x models x classes.

Writes <out>/bench.json and docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from pipeline.nn.infer import amp_dtype, autocast, device
from pipeline.core.io import write_json, write_text

BENCH_MODELS = {
    # The stated recipe: small real CNNs from random init, 32 px grayscale, light augmentation.
    "bench_resnet18": {"backbone": "resnet18", "epochs": 4, "lr": 0.003, "label_smoothing": 0.1, "ema": 0.99},
    "bench_convnext": {"backbone": "test_convnext", "epochs": 6, "lr": 0.004, "label_smoothing": 0.1,
                       "mixup": 0.2, "ema": 0.99},
}
COMMON = {"pretrained": False, "img_size": 32, "in_chans": 1, "batch_size": 64, "optimizer": "adamw",
          "weight_decay": 0.05, "warmup_epochs": 1, "augment": "light",
          "tta": ["none", "hflip"]}


class _Trainer:
    """One training step of `model` on a batch, timed to the end of its device work."""

    def __init__(self, model, dev: torch.device):
        self.model, self.dev, self.dtype = model.to(dev).train(), dev, amp_dtype("auto", dev)
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def __call__(self, x, y) -> float:
        t0 = time.perf_counter()
        x, y = x.to(self.dev, non_blocking=True), y.to(self.dev, non_blocking=True)
        with autocast(self.dev, self.dtype):
            loss = torch.nn.functional.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def data_path(data_dir: Path, backbone: str, batch: int, steps: int, rounds: int = 5,
              epoch_images: int = 48_000) -> dict:
    """Pipeline over model-only training img/s, for images decoded every epoch and from the RAM cache.

    The loader runs as training runs it: `num_workers: auto` (0 on CPU, worker processes on a GPU).
    CPU speed drifts by tens of percent within a minute on shared machines, so the two are measured
    side by side. With no workers every pipeline step (fetch + train) is paired with a model-only step
    right after it. With workers, which also load while model-only steps run, blocks of `steps` steps
    alternate and each pipeline block is compared with the mean of the model-only blocks either side.
    The efficiency is model-only time over pipeline time for the same number of images.
    """
    from pipeline.nn.augment import train_transform
    from pipeline.nn.loader import EpochSampler, ImageCache, ImageDataset, make_loader, resolve_workers
    from pipeline.nn.models import ModelConfig, build_model, data_config

    train = pd.read_csv(data_dir / "train.csv", dtype=str)
    classes = sorted(train.label.unique())
    y = train.label.map({c: i for i, c in enumerate(classes)}).to_numpy()
    dev = device()
    workers = resolve_workers("auto", dev)
    torch.manual_seed(0)
    cfg = ModelConfig(**{**COMMON, "backbone": backbone})
    model = build_model(cfg, len(classes))
    step = _Trainer(model, dev)
    tf = train_transform(cfg.augment, data_config(cfg, model), cfg.in_chans)  # the training geometry and preset
    # Epochs as long as a full Fashion-MNIST fold's (48,000 images: the subset repeated), so anything
    # done once per epoch (worker start-up) weighs what it weighs in a real run.
    reps = max(1, -(-epoch_images // len(train)))
    paths = [data_dir / "train" / f"{i}.png" for i in train.image_id] * reps
    targets = np.tile(np.eye(len(classes), dtype=np.float32)[y], (reps, 1))
    cache = ImageCache(paths, 1)

    def batches(ds):
        sampler, epoch = EpochSampler(len(ds), 0), 0
        while True:
            sampler.set_epoch(epoch)
            for x, t, _, _ in make_loader(ds, batch, "auto", sampler, generator_seed=epoch, dev=dev):
                yield x, t.argmax(1)
            epoch += 1

    def pipeline_step(source) -> float:
        t0 = time.perf_counter()
        x, t = next(source)
        return (time.perf_counter() - t0) + step(x, t)

    x_mem = torch.randn(batch, 1, 32, 32)
    y_mem = torch.randint(0, len(classes), (batch,))
    sources = {"disk": batches(ImageDataset(paths, targets, tf, 1, "fail")),
               "ram_cache": batches(ImageDataset(paths, targets, tf, 1, "fail", cache))}
    for source in sources.values():  # warm-up: first batches, allocator, caches
        for _ in range(3):
            pipeline_step(source)
            step(x_mem, y_mem)
    times: dict[str, list[float]] = {"model_only": [], "disk": [], "ram_cache": []}
    ratios: dict[str, list[float]] = {"disk": [], "ram_cache": []}
    if workers == 0:
        for _ in range(rounds):
            block = {k: 0.0 for k in times}
            for _ in range(steps):
                for name, source in sources.items():
                    block[name] += pipeline_step(source)
                    block["model_only"] += step(x_mem, y_mem) / len(sources)
            for name, seconds in block.items():
                times[name].append(seconds)
            for name in sources:
                ratios[name].append(block["model_only"] / block[name])
    else:
        def model_block() -> float:
            return sum(step(x_mem, y_mem) for _ in range(steps))

        before = model_block()
        for _ in range(rounds):
            for name, source in sources.items():
                seconds = sum(pipeline_step(source) for _ in range(steps))
                after = model_block()
                times[name].append(seconds)
                times["model_only"].append(after)
                ratios[name].append((before + after) / 2 / seconds)
                before = after
    img_s = {k: float(np.median([batch * steps / t for t in v])) for k, v in times.items()}
    return {"backbone": backbone, "batch": batch, "img_size": 32, "device": dev.type, "num_workers": workers,
            "rounds": rounds, "steps": steps, "epoch_images": len(paths), "model_only_img_s": img_s["model_only"],
            "pipeline_img_s": img_s["ram_cache"], "efficiency": float(np.median(ratios["ram_cache"])),
            "disk_img_s": img_s["disk"], "disk_efficiency": float(np.median(ratios["disk"])),
            "cache_mib": cache.nbytes / 2**20, "ratios": ratios}


def inference(data_dir: Path, backbone: str, batch: int, n_images: int = 1024) -> dict[str, float]:
    """Images/s per TTA view through the one inference path (pipeline.nn.infer.image_logits) on the default
    device with the default autocast: up to n_images real images, decoded once into RAM beforehand, so
    the number is the eval transform, batching and the model."""
    from pipeline.nn.infer import EvalSpec, image_logits
    from pipeline.nn.loader import ImageCache
    from pipeline.nn.models import ModelConfig, build_model, data_config
    from pipeline.nn.tta import expand

    dev = device()
    cfg = ModelConfig(**{**COMMON, "backbone": backbone, "batch_size": batch // 2, "num_workers": "auto"})
    model = build_model(cfg, 10).to(dev).eval()
    train = pd.read_csv(data_dir / "train.csv", dtype=str)
    paths = [data_dir / "train" / f"{i}.png" for i in train.image_id[:n_images]]
    spec = EvalSpec.of(cfg, data_config(cfg, model))
    cache = ImageCache(paths, 1, short_side=spec.data_config.get("read_side"))
    out = {}
    for name in expand(["none", "hflip", "rot90", "scale:0.9"]):
        image_logits([model], paths[:batch], spec, [name], dev, cache.split(batch)[0])  # warm-up
        t0 = time.perf_counter()
        image_logits([model], paths, spec, [name], dev, cache)
        out[name] = len(paths) / (time.perf_counter() - t0)
    return out


def _cli(*args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def quality(work: Path, n_train: int, n_test: int, n_folds: int) -> dict:
    """The whole pipeline on a Fashion-MNIST subset in its own folder."""
    from pipeline.core.config import load_competition
    from pipeline.core.data import class_names, read_answers, read_sample, read_train
    from pipeline.core.demo import write_fashion_mnist
    from pipeline.nn.infer import EvalSpec, image_logits, load_fold_model, to_proba

    work.mkdir(parents=True, exist_ok=True)
    data = work / "data" / "fmnist"
    if not (data / "train.csv").is_file():
        write_fashion_mnist(data, n_train=n_train, n_test=n_test)
    (work / "models").mkdir(exist_ok=True)
    comp_cfg = {"data_dir": "data/fmnist", "target": "label", "task": "multiclass", "metric": "accuracy",
                "n_folds": n_folds, "seed": 42, "answers": "data/fmnist-answers.csv", "models_dir": "models"}
    (work / "competition.yaml").write_text(yaml.safe_dump(comp_cfg))
    for name, cfg in BENCH_MODELS.items():
        (work / "models" / f"{name}.yaml").write_text(yaml.safe_dump({**COMMON, **cfg}))
    t0 = time.time()
    _cli("folds", "-c", "competition.yaml", cwd=work)
    for name in BENCH_MODELS:
        for k in range(n_folds):
            _cli("train", "-c", "competition.yaml", "--model", name, "--fold", str(k), cwd=work)
    _cli("predict", "-c", "competition.yaml", cwd=work)
    _cli("ensemble", "-c", "competition.yaml", cwd=work)
    wall = time.time() - t0
    report = json.loads((work / "submissions" / "cv.json").read_text())

    # The best single fold's official test accuracy (no TTA): what one model alone would score.
    with contextlib.chdir(work):
        comp = load_competition("competition.yaml")
        test_ids = read_sample(comp)[comp.id_col].tolist()
        y_test = read_answers(comp, class_names(comp, read_train(comp)), test_ids)
        paths = [comp.image_path("test", i) for i in test_ids]
        dev, fold_acc = device(), {}
        for name in BENCH_MODELS:
            for k in range(n_folds):
                model, cfg, ckpt = load_fold_model(Path("runs") / name / f"fold{k}", dev=dev)
                proba = to_proba(image_logits([model], paths, EvalSpec.of(cfg, ckpt["data_config"]), dev=dev)[0, 0],
                                 comp.task)
                fold_acc[f"{name}/fold{k}"] = float((proba.argmax(1) == y_test).mean())
    best_fold = max(fold_acc, key=fold_acc.get)
    return {"subset": {"train": n_train, "test": n_test, "folds": n_folds}, "recipe": BENCH_MODELS,
            "common": COMMON, "wall_s": wall, "cv_table": report, "fold_test_accuracy": fold_acc,
            "best_single_fold": {"run": best_fold, "test_accuracy": fold_acc[best_fold]}}


def blend_times(work: Path) -> list[dict]:
    from pipeline.core.config import load_competition
    from pipeline.blend.blends import make_blend, stack, task_blends
    from pipeline.blend.ensemble import evaluate_blend
    from pipeline.artifacts.tables import load_level1

    with contextlib.chdir(work):
        comp = load_competition("competition.yaml")
        level1 = load_level1(comp)
    X, X_test = stack(level1.oof), stack(level1.test)
    n_models, n, c = level1.oof.shape
    rows = []
    for name in task_blends(comp.task):
        est = make_blend(name, comp.task, c, comp.scoring(), comp.seed)
        t0 = time.perf_counter()
        result = evaluate_blend(name, est, X, level1.y, level1.fold, X_test, comp.scoring())
        rows.append({"blend": name, "seconds": time.perf_counter() - t0, "rows": n, "models": n_models,
                     "classes": c, "cv": result.cv})
    return rows


def machine() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "gpu": gpu}


def markdown(res: dict) -> str:
    m, d = res["machine"], res["data_path"]
    lines = [
        "# Benchmarks", "",
        f"Latest `make bench` run: {res['date']} on {m['platform']}, {m['cpus']} CPUs, torch {m['torch']}, "
        f"GPU: {m['gpu'] or 'none'}. Command: `{res['command']}`.", "",
        "## 1. Data path (training images/s)", "",
        f"{d['backbone']} at 32 px on {d['device']}, batch {d['batch']}, light augmentation, {d['num_workers']} "
        f"DataLoader workers (`num_workers: auto`), epochs of {d['epoch_images']:,} images; medians of "
        f"{d['rounds']} rounds of {d['steps']} steps, pipeline and model-only measured side by side.", "",
        "| images come from | pipeline img/s | model-only img/s | efficiency |", "|---|---|---|---|",
        f"| RAM cache (`cache_images: auto`, the default when they fit; {d['cache_mib']:.0f} MiB) | "
        f"{d['pipeline_img_s']:.0f} | {d['model_only_img_s']:.0f} | {d['efficiency']:.3f} |",
        f"| PNG decode every epoch (`cache_images: false`) | {d['disk_img_s']:.0f} | {d['model_only_img_s']:.0f} | "
        f"{d['disk_efficiency']:.3f} |", "",
        "## 2. Inference (images/s per TTA view)", "",
        "Through the one inference path (`pipeline.nn.infer.image_logits`: eval transform, batches, the model) on "
        "images decoded into RAM beforehand, so decode time is left out.", "",
        "| view | img/s |", "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in res["inference"].items()], "",
    ]
    q = res.get("quality")
    if q:
        s = q["subset"]
        lines += [
            f"## 3. Quality on Fashion-MNIST ({s['train']} train / {s['test']} official test images, "
            f"{s['folds']} folds, {q['wall_s'] / 60:.1f} min for folds + train + predict + ensemble)", "",
            "| name | kind | CV accuracy | official test accuracy |", "|---|---|---|---|",
        ]
        table = q["cv_table"]
        for kind in ("models", "blends"):
            for name, row in table.get(kind, {}).items():
                mark = " (chosen)" if name == table.get("chosen") else ""
                test = row.get("test")
                lines.append(f"| {name}{mark} | {kind[:-1]} | {row['cv']:.4f} | "
                             f"{'-' if test is None else f'{test:.4f}'} |")
        b = q["best_single_fold"]
        lines += ["", f"Best single fold on the official test set: {b['run']} at {b['test_accuracy']:.4f} "
                  "(no TTA) — the gap to the blend is what folds, TTA and blending add.", ""]
    if res.get("blend_times"):
        lines += ["## 4. Blend and stacker fit times (nested CV)", "",
                  "| blend | seconds | rows x models x classes |", "|---|---|---|"]
        lines += [f"| {r['blend']} | {r['seconds']:.2f} | {r['rows']} x {r['models']} x {r['classes']} |"
                  for r in res["blend_times"]]
    return "\n".join(lines) + "\n"


KEPT_MARKER = "<!-- measured by hand, kept by make bench -->"


def run_bench(out: Path, n_train: int, n_test: int, n_folds: int, steps: int, skip_quality: bool,
              docs: Path | None, epoch_images: int = 48_000) -> dict:
    from pipeline.core.demo import FASHION_MNIST_DIR, write_digits

    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
                 "command": " ".join(["python -m pipeline bench", *sys.argv[2:]])}
    if FASHION_MNIST_DIR.is_dir() and not skip_quality:
        res["quality"] = quality(out / "fmnist", n_train, n_test, n_folds)
        res["blend_times"] = blend_times(out / "fmnist")
        data_dir = out / "fmnist" / "data" / "fmnist"
    else:
        data_dir = out / "digits"
        if not (data_dir / "train.csv").is_file():
            write_digits(data_dir)
    res["data_path"] = data_path(data_dir, "resnet18", 64, steps, epoch_images=epoch_images)
    res["inference"] = inference(data_dir, "resnet18", 128, n_images=64 * max(4, steps))
    write_json(out / "bench.json", res)
    text = markdown(res)
    if docs is not None:  # what was measured by hand below KEPT_MARKER stays
        old = docs.read_text() if docs.is_file() else ""
        kept = old[old.index(KEPT_MARKER):] if KEPT_MARKER in old else ""
        write_text(docs, text.rstrip("\n") + "\n\n" + kept if kept else text)
    print(text)
    return res
